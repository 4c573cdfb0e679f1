"""The store contract (tests/unit/store/test_contract.py, written once for every backend)
against the etcd backend, on the session's etcd member (tests/etcd_server.py), under a key
prefix of each test's own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controller.store import Store
from tests.etcd_server import EtcdCluster
from tests.unit.store import test_contract
from tests.unit.store.conftest import Backend, make_etcd

pytestmark = pytest.mark.etcd

# The contract's tests, collected here a second time: with the fixtures below, on etcd.
globals().update({name: test for name, test in vars(test_contract).items()
                  if name.startswith("test_")})


@pytest.fixture(params=["etcd"])
def backend(request: pytest.FixtureRequest, etcd_server: EtcdCluster) -> Backend:
    return Backend(request.param, make_etcd(etcd_server.endpoints))


@pytest.fixture
async def store(backend: Backend, tmp_path: Path) -> AsyncIterator[Store]:
    async with backend.opened(tmp_path) as s:
        yield s
