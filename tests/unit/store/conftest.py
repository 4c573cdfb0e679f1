"""The store backends the shared suite runs against, and helpers to open them.

A backend is a factory ``make(where, max_evaluations=..., max_events=...)`` giving
an unopened store whose state lives at ``where`` (a directory for SQLite; for etcd,
a key prefix named after it, in the session's etcd: tests/etcd_server.py). Two
stores made for the same ``where`` see the same state, so the suite can close a
store and open it again.

The unit tier runs the suite against SQLite only (``BACKENDS``);
tests/integration/test_etcd_contract.py runs the same tests against etcd.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from controller.store import EtcdStore, SQLiteStore, Store


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


def etcd_prefix_for(where: Path) -> str:
    return f"/orch-test/{where.name}-{hashlib.sha256(str(where).encode()).hexdigest()[:10]}"


def make_etcd(endpoints: list[str]) -> MakeStore:
    def make(where: Path, *, max_evaluations: int = 10_000, max_events: int = 100_000) -> Store:
        return EtcdStore(endpoints, prefix=etcd_prefix_for(where), max_evaluations=max_evaluations,
                         max_events=max_events, timeout=5.0)
    return make


BACKENDS = [Backend("sqlite", make_sqlite)]
"""The backends of the unit tier: those that need no server."""


@pytest.fixture(params=BACKENDS, ids=lambda b: b.name)
def backend(request: pytest.FixtureRequest) -> Backend:
    b: Backend = request.param
    return b


@pytest.fixture
async def store(backend: Backend, tmp_path: Path) -> AsyncIterator[Store]:
    async with backend.opened(tmp_path) as s:
        yield s
