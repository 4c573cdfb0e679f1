"""Durable controller state behind one interface.

base     Store (the interface), Changes (one atomic write), StoreSnapshot (everything, loaded)
sqlite   the embedded SQLite backend (WAL, migrations, transactions): one controller
"""

from controller.store.base import Changes, Store, StoreSnapshot
from controller.store.sqlite import SQLiteStore

__all__ = ["Changes", "SQLiteStore", "Store", "StoreSnapshot"]
