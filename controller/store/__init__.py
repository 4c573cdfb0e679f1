"""Durable controller state behind one interface.

base     Store (the interface), Changes (one atomic write), StoreSnapshot (everything, loaded)
sqlite   the embedded SQLite backend (WAL, migrations, transactions): one controller
etcd     the etcd backend (one transaction per commit, fenced by the leader key): several
etcd_client  the typed etcd v3 client both the etcd store and the election use
"""

from controller.store.base import Changes, Store, StoreSnapshot
from controller.store.etcd import EtcdStore
from controller.store.sqlite import SQLiteStore

__all__ = ["Changes", "EtcdStore", "SQLiteStore", "Store", "StoreSnapshot"]
