"""The embedded SQLite backend: one file in the controller's data dir, one controller.

Durability. The database runs in WAL mode. With ``synchronous="full"`` (the
default) SQLite fsyncs the write-ahead log at every commit, so a commit that
has returned survives SIGKILL, an OS crash and a power loss (as far as the disk
honours fsync). With ``"normal"`` it fsyncs only at checkpoints: commits still
survive the controller being killed and the file is never corrupted, but the
last commits before an OS crash or power loss may be rolled back, after the
controller had already told agents and users about them.

Threads. One worker thread owns the connection and runs every call in the
order it was made, so commits are serialised and the event loop never waits on
the disk. Records are serialised on the caller's thread as ``commit`` begins
(the caller may change its objects while it awaits); the worker runs the SQL.

Schema. ``MIGRATIONS`` is the ordered list of schema steps; ``PRAGMA
user_version`` is the number of steps applied and ``PRAGMA application_id``
marks the file as orch's. Opening an older file applies the missing steps, one
transaction each; a file from a newer orch, or not from orch at all, is refused
without being written to. A lock file beside the database (``<path>.lock``)
keeps a second controller off the same file.

Tables: ``jobs`` (every version), ``allocations`` (indexed by job and by node),
``nodes``, ``deployments``, ``evaluations`` (those among the last ``max_evaluations``
first stored: ``seq`` counts them, in the state row), ``events`` (the most recent
``max_events``, by index), ``meta``, and ``state`` (one row: the commit index,
the last event index and the last evaluation seq). Records are stored whole as protobuf blobs; the
other columns are there to be indexed and to be read with the ``sqlite3`` tool.
There are no foreign keys between record tables: the controller may keep an
allocation whose job was purged or whose node was removed, and every backend
must accept the same commits (``PRAGMA foreign_keys`` is on, for later steps).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from google.protobuf.message import DecodeError

from controller.store.base import (
    MAX_EVALUATIONS,
    AllocTable,
    Changes,
    Store,
    StoreSize,
    StoreSnapshot,
)
from orch.errors import ConfigError, StoreError
from orch.v1 import controller_pb2, job_pb2, node_pb2

T = TypeVar("T")

APPLICATION_ID = 0x6F726368
"""``PRAGMA application_id`` of an orch controller store: "orch" in ASCII."""

WAL_CHECKPOINT_PAGES = 500
"""Pages the write-ahead log reaches before the commit that crosses it copies them into the
database (``PRAGMA wal_autocheckpoint``; SQLite's default is 1,000): that commit waits for
the copy. A store grown to its steady size writes more pages a commit than a new one (its
full event ring is trimmed at the head every commit: 15 pages a commit against 9), so with
1,000 its commits crossed the line more than once in a hundred, and its commit p99 was the
copy's (1.6 to 1.9 ms against 0.6 to 1.2 for a new store). With 500 each copy is half as
long, so the longest commits are shorter at any age; the mean commit rose by 2 % and
placements per second did not move."""

Synchronous = Literal["full", "normal"]
_SYNCHRONOUS: dict[str, int] = {"normal": 1, "full": 2}


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: run in one transaction that also sets the new ``user_version``.

    A step is SQL text or, for data migrations, a function given the connection.
    """

    description: str
    steps: tuple[str | Callable[[sqlite3.Connection], None], ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration("the first schema", (
        f"PRAGMA application_id = {APPLICATION_ID}",
        """CREATE TABLE state (
               id INTEGER PRIMARY KEY CHECK (id = 0),
               commit_index INTEGER NOT NULL,
               event_index INTEGER NOT NULL)""",
        "INSERT INTO state (id, commit_index, event_index) VALUES (0, 0, 0)",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE jobs (
               namespace TEXT NOT NULL,
               name TEXT NOT NULL,
               version INTEGER NOT NULL,
               data BLOB NOT NULL,
               PRIMARY KEY (namespace, name, version))""",
        """CREATE TABLE allocations (
               id TEXT PRIMARY KEY,
               namespace TEXT NOT NULL,
               job TEXT NOT NULL,
               job_version INTEGER NOT NULL,
               node_id TEXT NOT NULL,
               desired_status INTEGER NOT NULL,
               client_status INTEGER NOT NULL,
               data BLOB NOT NULL)""",
        "CREATE INDEX allocations_by_job ON allocations (namespace, job)",
        "CREATE INDEX allocations_by_node ON allocations (node_id)",
        """CREATE TABLE nodes (
               id TEXT PRIMARY KEY,
               name TEXT NOT NULL,
               status INTEGER NOT NULL,
               data BLOB NOT NULL)""",
        """CREATE TABLE deployments (
               id TEXT PRIMARY KEY,
               namespace TEXT NOT NULL,
               job TEXT NOT NULL,
               job_version INTEGER NOT NULL,
               status TEXT NOT NULL,
               data BLOB NOT NULL)""",
        "CREATE INDEX deployments_by_job ON deployments (namespace, job)",
        """CREATE TABLE evaluations (
               seq INTEGER PRIMARY KEY,
               id TEXT NOT NULL UNIQUE,
               namespace TEXT NOT NULL,
               job TEXT NOT NULL,
               status TEXT NOT NULL,
               data BLOB NOT NULL)""",
        """CREATE TABLE events (
               idx INTEGER PRIMARY KEY,
               commit_index INTEGER NOT NULL,
               topic TEXT NOT NULL,
               type TEXT NOT NULL,
               key TEXT NOT NULL,
               data BLOB NOT NULL)""",
    )),
    Migration("an evaluation counter: a deleted evaluation's place is not reused", (
        "ALTER TABLE state ADD COLUMN eval_seq INTEGER NOT NULL DEFAULT 0",
        "UPDATE state SET eval_seq = (SELECT coalesce(max(seq), 0) FROM evaluations)",
    )),
)


_TABLES = {"jobs": "jobs", "allocations": "allocations", "nodes": "nodes",
           "deployments": "deployments", "evaluations": "evaluations", "events": "events",
           "meta": "meta"}
"""Record kind -> its table (``StoreSize.rows``)."""


@dataclass(slots=True)
class _Rows:
    """One ``Changes`` turned into SQL parameters (on the caller's thread)."""

    purge_jobs: list[tuple[str, str]]
    delete_job_versions: list[tuple[str, str, int]]
    jobs: list[tuple[str, str, int, bytes]]
    delete_allocs: list[tuple[str]]
    allocs: list[tuple[str, str, str, int, str, int, int, bytes]]
    delete_nodes: list[tuple[str]]
    nodes: list[tuple[str, str, int, bytes]]
    delete_deployments: list[tuple[str]]
    deployments: list[tuple[str, str, str, int, str, bytes]]
    delete_evaluations: list[tuple[str]]
    evaluations: list[tuple[str, str, str, str, bytes]]
    events: list[controller_pb2.Event]
    """The store's own copies: the worker sets their index and serialises them."""
    meta: list[tuple[str, str]]
    delete_meta: list[tuple[str]]


def _checked(field: str, items: Sequence[Any], cls: type[T],
             key: Callable[[T], str] | None = None) -> list[T]:
    """``items`` if each is a ``cls`` with a non-empty ``key``; else TypeError or ValueError."""
    for i, item in enumerate(items):
        if not isinstance(item, cls):
            raise TypeError(f"Changes.{field}[{i}] is a {type(item).__name__}, not a {cls.__name__}")
        if key is not None and not key(item):
            raise ValueError(f"Changes.{field}[{i}] has an empty key (id or name)")
    return list(items)


def _keys(field: str, items: Sequence[Any]) -> list[tuple[str]]:
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"Changes.{field}[{i}] is a {type(item).__name__}, not a str")
    return [(k,) for k in items]


def _rows(c: Changes) -> _Rows:
    """Check and serialise ``c``; raises TypeError or ValueError before anything is written."""
    purge = []
    for i, key in enumerate(c.purge_jobs):
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) for k in key)):
            raise TypeError(f"Changes.purge_jobs[{i}] is not a (namespace, name) pair")
        purge.append((key[0], key[1]))
    versions = []
    for i, gone in enumerate(c.delete_job_versions):
        if not (isinstance(gone, tuple) and len(gone) == 3 and isinstance(gone[0], str)
                and isinstance(gone[1], str) and isinstance(gone[2], int)):
            raise TypeError(f"Changes.delete_job_versions[{i}] is not a (namespace, name, "
                            "version) triple")
        versions.append((gone[0], gone[1], gone[2]))
    events = []
    for ev in _checked("events", c.events, controller_pb2.Event):
        copy = controller_pb2.Event()
        copy.CopyFrom(ev)
        events.append(copy)
    meta = []
    for k, v in c.meta.items():
        if not (isinstance(k, str) and isinstance(v, str)):
            raise TypeError(f"Changes.meta[{k!r}] is not str -> str")
        meta.append((k, v))
    return _Rows(
        purge_jobs=purge, delete_job_versions=versions,
        delete_evaluations=_keys("delete_evaluations", c.delete_evaluations),
        delete_meta=_keys("delete_meta", c.delete_meta),
        jobs=[(j.namespace, j.name, j.version, j.SerializeToString())
              for j in _checked("put_jobs", c.put_jobs, job_pb2.Job, lambda j: j.name)],
        delete_allocs=_keys("delete_allocs", c.delete_allocs),
        allocs=[(a.id, a.namespace, a.job, a.job_version, a.node_id, a.desired_status,
                 a.client_status, a.SerializeToString())
                for a in _checked("put_allocs", c.put_allocs, node_pb2.Allocation, lambda a: a.id)],
        delete_nodes=_keys("delete_nodes", c.delete_nodes),
        nodes=[(n.id, n.name, n.status, n.SerializeToString())
               for n in _checked("put_nodes", c.put_nodes, node_pb2.Node, lambda n: n.id)],
        delete_deployments=_keys("delete_deployments", c.delete_deployments),
        deployments=[(d.id, d.namespace, d.job, d.job_version, d.status, d.SerializeToString())
                     for d in _checked("put_deployments", c.put_deployments,
                                       controller_pb2.Deployment, lambda d: d.id)],
        evaluations=[(e.id, e.namespace, e.job, e.status, e.SerializeToString())
                     for e in _checked("put_evaluations", c.put_evaluations,
                                       controller_pb2.Evaluation, lambda e: e.id)],
        events=events,
        meta=meta,
    )


class SQLiteStore(Store):
    """The controller's store in one SQLite file (WAL, migrations, one transaction per commit).

    ``synchronous`` is ``"full"`` (every acknowledged commit survives power loss) or
    ``"normal"`` (it survives the process being killed; the last commits before an OS
    crash or power loss may be lost). The event log keeps the last ``max_events``
    events and the evaluation history the last ``max_evaluations``, both pruned as
    commits go; ``busy_timeout`` is how long to wait for another process holding the
    file (a backup, the ``sqlite3`` tool) before a call fails. ::

        store = SQLiteStore(data_dir / "state.db")
        await store.open()                      # creates or migrates; ConfigError if refused
        snapshot = await store.load()
        index = await store.commit(Changes(put_jobs=[job], events=[registered]))
        await store.close()
    """

    MIGRATIONS: ClassVar[tuple[Migration, ...]] = MIGRATIONS

    def __init__(self, path: str | os.PathLike[str], *, synchronous: Synchronous = "full",
                 max_evaluations: int = MAX_EVALUATIONS, max_events: int = 100_000,
                 busy_timeout: float = 5.0) -> None:
        if synchronous not in _SYNCHRONOUS:
            raise ConfigError(f"synchronous must be one of {', '.join(sorted(_SYNCHRONOUS))}, "
                              f"got {synchronous!r}", where="store.synchronous")
        if max_evaluations < 1 or max_events < 1:
            raise ConfigError("max_evaluations and max_events must be at least 1", where="store")
        self.path = Path(path)
        self.synchronous: Synchronous = synchronous
        self.max_evaluations = max_evaluations
        self.max_events = max_events
        self.busy_timeout = busy_timeout
        self._executor: ThreadPoolExecutor | None = None
        # Owned by the worker thread:
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None

    @property
    def schema_version(self) -> int:
        """The schema version this code writes (the number of migration steps)."""
        return len(self.MIGRATIONS)

    # --- the interface ---------------------------------------------------------------------

    async def open(self) -> None:
        if self._executor is not None:
            raise StoreError(f"{self.path}: the store is already open")
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="orch-store")
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._open_sync)
        except BaseException:
            executor.submit(self._close_sync)  # undoes an open that a cancellation left running
            executor.shutdown(wait=False)
            raise
        self._executor = executor

    async def close(self) -> None:
        """Finish the calls already made, then close the file; later calls raise StoreError."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_sync)
        finally:
            executor.shutdown(wait=True)

    async def load(self) -> StoreSnapshot:
        return await self._call(self._load_sync)

    async def commit(self, changes: Changes) -> int:
        rows = _rows(changes)
        index, first_event = await self._call(self._commit_sync, rows)
        for i, ev in enumerate(changes.events):
            ev.index = first_event + i
        return index

    async def events_since(self, index: int, limit: int = 1000) -> list[controller_pb2.Event]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        return await self._call(self._events_since_sync, index, limit)

    async def size(self) -> StoreSize:
        return await self._call(self._size_sync)

    async def defragment(self) -> bool:
        await self._call(self._defragment_sync)
        return True

    async def backup(self, dest: Path) -> None:
        await self._call(self._backup_sync, str(dest))

    async def replace(self, snap: StoreSnapshot) -> int:
        rows = _rows(Changes(
            put_jobs=[v for versions in snap.jobs.values() for v in versions],
            put_allocs=list(snap.allocs.values()), put_nodes=list(snap.nodes.values()),
            put_deployments=list(snap.deployments.values()),
            put_evaluations=list(snap.evaluations), meta=dict(snap.meta)))
        return await self._call(self._replace_sync, rows, snap.index)

    # --- beyond the interface ----------------------------------------------------------------

    async def pragmas(self) -> dict[str, int | str]:
        """The settings in force on the connection, for the startup log and for tests."""
        return await self._call(self._pragmas_sync)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise StoreError(f"{self.path}: the store is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: {e}") from e

    # --- on the worker thread ------------------------------------------------------------------

    def _open_sync(self) -> None:
        where = str(self.path)
        if not self.path.parent.is_dir():
            raise ConfigError(f"the directory {self.path.parent} does not exist; create it or "
                              "choose another data dir", where=where)
        self._lock()
        try:
            created = not self.path.exists()
            try:
                conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
            except sqlite3.Error as e:
                raise ConfigError(f"cannot open the store: {e}", where=where) from e
            try:
                version = self._check_file(conn, where)
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise ConfigError(f"cannot switch the store to WAL mode (got {mode!r}); put the "
                                      "data dir on a local file system", where=where)
                conn.execute(f"PRAGMA synchronous = {_SYNCHRONOUS[self.synchronous]}")
                conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}").fetchall()
                conn.execute("PRAGMA foreign_keys = ON")
                self._migrate(conn, version, where)
                if created:
                    _fsync_dir(self.path.parent)
            except sqlite3.Error as e:
                conn.close()
                raise StoreError(f"{where}: cannot open the store: {e}") from e
            except BaseException:
                conn.close()
                raise
        except BaseException:
            self._unlock()
            raise
        self._conn = conn

    def _check_file(self, conn: sqlite3.Connection, where: str) -> int:
        """The file's schema version; refuses files that are not orch's or are from a newer orch."""
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"not an orch store ({e}); move it away or choose another data dir",
                              where=where) from e
        if app_id != APPLICATION_ID and (app_id != 0 or version != 0 or tables != 0):
            raise ConfigError(f"not an orch store (a SQLite file of another application: "
                              f"application_id {app_id:#x}, user_version {version}); move it away "
                              "or choose another data dir", where=where)
        if version > self.schema_version:
            raise ConfigError(f"the store was written by a newer orch (schema version {version}; "
                              f"this orch knows up to {self.schema_version}) and is left untouched; "
                              "run the newer orch-controller, or restore a backup made before the "
                              "upgrade", where=where)
        return int(version)

    def _migrate(self, conn: sqlite3.Connection, current: int, where: str) -> None:
        for version in range(current + 1, self.schema_version + 1):
            migration = self.MIGRATIONS[version - 1]
            try:
                conn.execute("BEGIN IMMEDIATE")
                for step in migration.steps:
                    if isinstance(step, str):
                        conn.execute(step)
                    else:
                        step(conn)
                conn.execute(f"PRAGMA user_version = {version}")
                conn.execute("COMMIT")
            except BaseException as e:
                _rollback(conn)
                if isinstance(e, Exception):
                    raise StoreError(
                        f"{where}: migrating the store to schema version {version} "
                        f"({migration.description}) failed: {e}; it is left at version "
                        f"{version - 1}") from e
                raise

    def _lock(self) -> None:
        lock_path = f"{self.path}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(f"the store is in use by another controller (pid {holder}, holding "
                              f"{lock_path}); stop it, or give this one another data dir",
                              where=str(self.path)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _close_sync(self) -> None:
        try:
            if self._conn is not None:
                self._conn.close()
        finally:
            self._conn = None
            self._unlock()

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"{self.path}: the store is not open")
        return self._conn

    def _commit_sync(self, rows: _Rows) -> tuple[int, int]:
        """Write ``rows`` in one transaction; (the new commit index, the first event's index)."""
        conn = self._db()
        try:
            conn.execute("BEGIN IMMEDIATE")
            index, event_index, eval_seq = conn.execute(
                "SELECT commit_index, event_index, eval_seq FROM state WHERE id = 0").fetchone()
            index += 1
            first_event = event_index + 1
            conn.executemany("DELETE FROM jobs WHERE namespace = ? AND name = ?", rows.purge_jobs)
            conn.executemany("DELETE FROM jobs WHERE namespace = ? AND name = ? AND version = ?",
                             rows.delete_job_versions)
            conn.executemany("DELETE FROM evaluations WHERE id = ?", rows.delete_evaluations)
            conn.executemany("DELETE FROM meta WHERE key = ?", rows.delete_meta)
            conn.executemany("DELETE FROM allocations WHERE id = ?", rows.delete_allocs)
            conn.executemany("DELETE FROM nodes WHERE id = ?", rows.delete_nodes)
            conn.executemany("DELETE FROM deployments WHERE id = ?", rows.delete_deployments)
            conn.executemany(
                "INSERT INTO jobs (namespace, name, version, data) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (namespace, name, version) DO UPDATE SET data = excluded.data",
                rows.jobs)
            conn.executemany(
                "INSERT INTO allocations (id, namespace, job, job_version, node_id, desired_status, "
                "client_status, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "namespace = excluded.namespace, job = excluded.job, "
                "job_version = excluded.job_version, node_id = excluded.node_id, "
                "desired_status = excluded.desired_status, client_status = excluded.client_status, "
                "data = excluded.data", rows.allocs)
            conn.executemany(
                "INSERT INTO nodes (id, name, status, data) VALUES (?, ?, ?, ?) ON CONFLICT (id) "
                "DO UPDATE SET name = excluded.name, status = excluded.status, data = excluded.data",
                rows.nodes)
            conn.executemany(
                "INSERT INTO deployments (id, namespace, job, job_version, status, data) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "namespace = excluded.namespace, job = excluded.job, "
                "job_version = excluded.job_version, status = excluded.status, data = excluded.data",
                rows.deployments)
            # A new evaluation gets the next seq of the counter; a replaced one keeps its seq.
            for eid, ns, job, status, data in rows.evaluations:
                if not conn.execute("UPDATE evaluations SET namespace = ?, job = ?, status = ?, "
                                    "data = ? WHERE id = ?", (ns, job, status, data, eid)).rowcount:
                    eval_seq += 1
                    conn.execute("INSERT INTO evaluations (seq, id, namespace, job, status, data) "
                                 "VALUES (?, ?, ?, ?, ?, ?)", (eval_seq, eid, ns, job, status, data))
            event_rows = []
            for i, ev in enumerate(rows.events):
                ev.index = first_event + i
                event_rows.append((ev.index, index, ev.topic, ev.type, ev.key,
                                   ev.SerializeToString()))
            conn.executemany(
                "INSERT INTO events (idx, commit_index, topic, type, key, data) "
                "VALUES (?, ?, ?, ?, ?, ?)", event_rows)
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value", rows.meta)
            event_index += len(event_rows)
            conn.execute("DELETE FROM events WHERE idx <= ?", (event_index - self.max_events,))
            conn.execute("DELETE FROM evaluations WHERE seq <= ?",
                         (eval_seq - self.max_evaluations,))
            conn.execute("UPDATE state SET commit_index = ?, event_index = ?, eval_seq = ? "
                         "WHERE id = 0", (index, event_index, eval_seq))
            conn.execute("COMMIT")
        except BaseException as e:
            _rollback(conn)
            if isinstance(e, sqlite3.Error):
                raise StoreError(f"{self.path}: the commit failed and wrote nothing: {e}") from e
            raise
        return index, first_event

    def _load_sync(self) -> StoreSnapshot:
        conn = self._db()
        conn.execute("BEGIN")  # one read transaction: a consistent view
        try:
            return _read_tables(conn)
        finally:
            _rollback(conn)

    def _backup_sync(self, dest: str) -> None:
        """SQLite's online backup of the whole database into a new file at ``dest``: a
        consistent copy, taken while commits wait (they run on this same thread)."""
        out = sqlite3.connect(dest, isolation_level=None)
        try:
            self._db().backup(out)
            out.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        finally:
            out.close()

    def _defragment_sync(self) -> None:
        """``VACUUM``: the file written again in order. A store that has churned for weeks has
        its pages all over the file (new pages come from a free list that every table's
        garbage feeds), so each commit's pages, and the checkpoint that copies them, are
        scattered: its commit p99 was 1.7 times a fresh store's after a month. The WAL grows
        to the file's size meanwhile; it is truncated after."""
        conn = self._db()
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _replace_sync(self, rows: _Rows, snap_index: int) -> int:
        """Every record table emptied and filled with ``rows`` in one transaction; the event
        log stays; the new commit index is returned."""
        conn = self._db()
        try:
            conn.execute("BEGIN IMMEDIATE")
            index, eval_seq = conn.execute(
                "SELECT commit_index, eval_seq FROM state WHERE id = 0").fetchone()
            index = max(index, snap_index) + 1
            for table in ("jobs", "allocations", "nodes", "deployments", "evaluations", "meta"):
                conn.execute(f"DELETE FROM {table}")
            conn.executemany("INSERT INTO jobs (namespace, name, version, data) VALUES "
                             "(?, ?, ?, ?)", rows.jobs)
            conn.executemany("INSERT INTO allocations (id, namespace, job, job_version, node_id, "
                             "desired_status, client_status, data) VALUES "
                             "(?, ?, ?, ?, ?, ?, ?, ?)", rows.allocs)
            conn.executemany("INSERT INTO nodes (id, name, status, data) VALUES (?, ?, ?, ?)",
                             rows.nodes)
            conn.executemany("INSERT INTO deployments (id, namespace, job, job_version, status, "
                             "data) VALUES (?, ?, ?, ?, ?, ?)", rows.deployments)
            for eid, ns, job, status, data in rows.evaluations:
                eval_seq += 1
                conn.execute("INSERT INTO evaluations (seq, id, namespace, job, status, data) "
                             "VALUES (?, ?, ?, ?, ?, ?)", (eval_seq, eid, ns, job, status, data))
            conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", rows.meta)
            conn.execute("UPDATE state SET commit_index = ?, eval_seq = ? WHERE id = 0",
                         (index, eval_seq))
            conn.execute("COMMIT")
        except BaseException as e:
            _rollback(conn)
            if isinstance(e, sqlite3.Error):
                raise StoreError(f"{self.path}: the restore failed and changed nothing: {e}") \
                    from e
            raise
        return int(index)

    def _events_since_sync(self, index: int, limit: int) -> list[controller_pb2.Event]:
        rows = self._db().execute("SELECT data FROM events WHERE idx > ? ORDER BY idx LIMIT ?",
                                  (index, limit))
        return [controller_pb2.Event.FromString(data) for (data,) in rows]

    def _size_sync(self) -> StoreSize:
        conn = self._db()
        pages, free, page = (conn.execute(f"PRAGMA {n}").fetchone()[0]
                             for n in ("page_count", "freelist_count", "page_size"))
        rows = {kind: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for kind, table in _TABLES.items()}
        return StoreSize(bytes=(pages - free) * page, rows=rows)

    def _pragmas_sync(self) -> dict[str, int | str]:
        conn = self._db()
        names = ("journal_mode", "synchronous", "wal_autocheckpoint", "foreign_keys",
                 "busy_timeout", "user_version", "application_id", "page_size", "page_count",
                 "freelist_count")
        return {n: conn.execute(f"PRAGMA {n}").fetchone()[0] for n in names}


def _read_tables(conn: sqlite3.Connection) -> StoreSnapshot:
    """Every record of an orch SQLite database (the caller holds a read transaction)."""
    snap = StoreSnapshot()
    snap.index, snap.event_index = conn.execute(
        "SELECT commit_index, event_index FROM state WHERE id = 0").fetchone()
    for ns, name, data in conn.execute(
            "SELECT namespace, name, data FROM jobs ORDER BY namespace, name, version"):
        snap.jobs.setdefault((ns, name), []).append(job_pb2.Job.FromString(data))
    allocs = AllocTable()  # kept as the store holds them
    for key, data in conn.execute("SELECT id, data FROM allocations"):
        allocs.put_raw(key, data)
    snap.allocs = allocs
    for key, data in conn.execute("SELECT id, data FROM nodes"):
        snap.nodes[key] = node_pb2.Node.FromString(data)
    for key, data in conn.execute("SELECT id, data FROM deployments"):
        snap.deployments[key] = controller_pb2.Deployment.FromString(data)
    snap.evaluations = [controller_pb2.Evaluation.FromString(data) for (data,) in
                        conn.execute("SELECT data FROM evaluations ORDER BY seq")]
    snap.meta = dict(conn.execute("SELECT key, value FROM meta"))
    return snap


def read_backup(path: Path) -> StoreSnapshot:
    """The records of a SQLite backup (``SQLiteStore.backup``), checked first: an orch store,
    of a schema this orch knows, that passes SQLite's own integrity check. StoreError says
    what is wrong; the file is only read."""
    where = str(path)
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as e:
        raise StoreError(f"{where}: cannot open the backup: {e}") from e
    try:
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{where}: not a SQLite database ({e})") from e
        if app_id != APPLICATION_ID:
            raise StoreError(f"{where}: not an orch store (application_id {app_id:#x})")
        if not 1 <= version <= len(MIGRATIONS):
            raise StoreError(f"{where}: a store of schema version {version}; this orch reads "
                             f"1 to {len(MIGRATIONS)} (restore it with the orch that saved it)")
        check = [r[0] for r in conn.execute("PRAGMA integrity_check(20)")]
        if check != ["ok"]:
            raise StoreError(f"{where}: the backup fails SQLite's integrity check: "
                             + "; ".join(check))
        conn.execute("BEGIN")
        try:
            return _read_tables(conn)
        except (sqlite3.Error, DecodeError) as e:
            raise StoreError(f"{where}: the backup's records cannot be read: {e}") from e
        finally:
            _rollback(conn)
    finally:
        conn.close()


def _rollback(conn: sqlite3.Connection) -> None:
    """End the open transaction, if SQLite has not already rolled it back."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _fsync_dir(path: Path) -> None:
    """Make a new file's directory entry durable (SQLite syncs the directory only for its logs)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
