"""Real etcd processes for the tests (a pytest plugin, see tests/conftest.py).

Tests that need etcd get the ``etcd_server`` fixture (one member for the whole
session; each test works under a prefix of its own, ``etcd_prefix``) or start an
``EtcdCluster`` of their own (``etcd_cluster`` gives three members), which they may
kill, stop, pause and restart (bench/etcd_cluster.py: loopback addresses, free
ports, the flags the store needs, data on tmpfs, all killed and removed afterwards).

Without the ``etcd`` binary these tests skip, saying how to get it, except under
CI=true, where they fail: CI must run them. ``./run test`` installs Debian's
``etcd-server`` when it is missing.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator

import pytest

from bench.etcd_cluster import HOW, EtcdCluster
from tests.components import require

__all__ = ["EtcdCluster", "etcd_binary"]


def etcd_binary() -> str:
    """The etcd binary; fails under CI=true and skips elsewhere when there is none."""
    path = shutil.which("etcd")
    require("the etcd binary", path is not None, HOW)
    assert path is not None
    return path


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdCluster]:
    """One etcd member for the session; tests use prefixes of their own."""
    etcd_binary()
    with EtcdCluster(1, first_host=70) as cluster:
        yield cluster


@pytest.fixture
def etcd_cluster() -> Iterator[EtcdCluster]:
    """Three etcd members of the test's own, to kill, stop, pause and restart."""
    etcd_binary()
    with EtcdCluster(3, first_host=71) as cluster:
        yield cluster


@pytest.fixture
def etcd_prefix() -> str:
    return f"/orch-test/{uuid.uuid4().hex[:12]}"


@pytest.fixture(autouse=True)
def _etcd_marker(request: pytest.FixtureRequest) -> None:
    """Tests marked ``etcd`` get the binary, or are skipped (fail under CI=true)."""
    if request.node.get_closest_marker("etcd") is not None:
        etcd_binary()
