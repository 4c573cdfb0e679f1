"""Durable controller state behind one interface.

base         Store (the interface), Changes (one atomic write), StoreSnapshot (everything, loaded)
sqlite       the embedded SQLite backend (WAL, migrations, transactions): one controller
etcd         the etcd backend (one transaction per commit, fenced by the leader key): several
etcd_client  the typed etcd v3 client the etcd store and the election share

``EtcdStore`` is imported on first use, so that a controller on SQLite does not load the
etcd client.
"""

from typing import TYPE_CHECKING, Any

from controller.store.base import Changes, Store, StoreSnapshot
from controller.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from controller.store.etcd import EtcdStore

__all__ = ["Changes", "EtcdStore", "SQLiteStore", "Store", "StoreSnapshot"]


def __getattr__(name: str) -> Any:
    if name == "EtcdStore":
        from controller.store.etcd import EtcdStore
        return EtcdStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
