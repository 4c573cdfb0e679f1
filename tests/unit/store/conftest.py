"""The store backends the shared suite runs against, and helpers to open them.

A backend is a factory ``make(where, max_evaluations=..., max_events=...)`` giving
an unopened store whose state lives at ``where`` (a directory for SQLite; an etcd
backend would use it as a key prefix). Two stores made for the same ``where`` see
the same state, so the suite can close a store and open it again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from controller.store import SQLiteStore, Store


class MakeStore(Protocol):
    def __call__(self, where: Path, *, max_evaluations: int = 10_000,
                 max_events: int = 100_000) -> Store: ...


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    make: MakeStore

    @asynccontextmanager
    async def opened(self, where: Path, *, max_evaluations: int = 10_000,
                     max_events: int = 100_000) -> AsyncIterator[Store]:
        store = self.make(where, max_evaluations=max_evaluations, max_events=max_events)
        await store.open()
        try:
            yield store
        finally:
            await store.close()


def make_sqlite(where: Path, *, max_evaluations: int = 10_000, max_events: int = 100_000
                ) -> Store:
    return SQLiteStore(where / "state.db", max_evaluations=max_evaluations,
                       max_events=max_events)


BACKENDS = [Backend("sqlite", make_sqlite)]


@pytest.fixture(params=BACKENDS, ids=lambda b: b.name)
def backend(request: pytest.FixtureRequest) -> Backend:
    b: Backend = request.param
    return b


@pytest.fixture
async def store(backend: Backend, tmp_path: Path) -> AsyncIterator[Store]:
    async with backend.opened(tmp_path) as s:
        yield s
