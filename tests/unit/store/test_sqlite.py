"""What is particular to the SQLite backend: settings, migrations, the file lock, faults inside a
transaction. Commits that wait for another connection's write lock (in real time: the event
loop runs meanwhile, a busy timeout, a cancelled caller) are in
tests/integration/test_sqlite_waits.py."""

from __future__ import annotations

import hashlib
import itertools
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from controller.store import Changes, SQLiteStore
from controller.store.sqlite import APPLICATION_ID, MIGRATIONS, WAL_CHECKPOINT_PAGES, Migration
from orch.errors import ConfigError, StoreError
from orch.v1 import node_pb2
from tests.unit.store.records import alloc, event, job, node


@contextmanager
def side(path: Path) -> Iterator[sqlite3.Connection]:
    """A second connection to the file, as the sqlite3 tool or a backup would open it."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        yield conn


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(("synchronous", "level"), [("full", 2), ("normal", 1)])
async def test_the_connection_runs_in_wal_mode_with_the_asked_durability(
        tmp_path: Path, synchronous: str, level: int) -> None:
    s = SQLiteStore(tmp_path / "state.db", synchronous=synchronous,  # type: ignore[arg-type]
                    busy_timeout=2.5)
    await s.open()
    try:
        got = await s.pragmas()
    finally:
        await s.close()
    assert got["journal_mode"] == "wal"
    assert got["synchronous"] == level
    assert got["wal_autocheckpoint"] == WAL_CHECKPOINT_PAGES
    assert got["foreign_keys"] == 1
    assert got["busy_timeout"] == 2500
    assert got["user_version"] == len(MIGRATIONS)
    assert got["application_id"] == APPLICATION_ID


def test_bad_settings_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="synchronous must be one of full, normal, got 'off'"):
        SQLiteStore(tmp_path / "s.db", synchronous="off")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="at least 1"):
        SQLiteStore(tmp_path / "s.db", max_events=0)


async def test_events_since_wants_a_positive_limit(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "state.db")
    await s.open()
    try:
        with pytest.raises(ValueError, match="limit"):
            await s.events_since(0, limit=0)
    finally:
        await s.close()


# --- migrations --------------------------------------------------------------------------------


@pytest.mark.parametrize("start", ["missing", "zero bytes", "empty at version 0"])
async def test_a_new_or_version_0_file_gets_the_whole_schema(tmp_path: Path, start: str) -> None:
    path = tmp_path / "state.db"
    if start == "zero bytes":
        path.touch()
    elif start == "empty at version 0":
        with side(path) as conn:
            conn.execute("PRAGMA page_size = 4096")
            conn.execute("VACUUM")  # writes the header: a real, empty SQLite file
    s = SQLiteStore(path)
    await s.open()
    try:
        assert await s.commit(Changes(put_nodes=[node("n1")])) == 1
    finally:
        await s.close()
    with side(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def _fill_datacenter(conn: sqlite3.Connection) -> None:
    """A data migration: a new column filled from the stored records."""
    rows = conn.execute("SELECT id, data FROM nodes").fetchall()
    conn.executemany("UPDATE nodes SET datacenter = ? WHERE id = ?",
                     [(node_pb2.Node.FromString(data).datacenter, nid) for nid, data in rows])


class NextStore(SQLiteStore):
    """The store as a later orch would ship it: one more migration."""

    MIGRATIONS = (*MIGRATIONS, Migration("nodes by datacenter", (
        "ALTER TABLE nodes ADD COLUMN datacenter TEXT NOT NULL DEFAULT ''",
        _fill_datacenter,
        "CREATE INDEX nodes_by_datacenter ON nodes (datacenter)",
    )))


def _fail(conn: sqlite3.Connection) -> None:
    raise RuntimeError("disk on fire")


class BrokenNextStore(SQLiteStore):
    """A later orch whose migration fails half-way, after changing the schema."""

    MIGRATIONS = (*MIGRATIONS, Migration("nodes by datacenter", (
        "ALTER TABLE nodes ADD COLUMN datacenter TEXT NOT NULL DEFAULT ''",
        _fail,
    )))


async def _write_current(path: Path) -> None:
    s = SQLiteStore(path)
    await s.open()
    try:
        await s.commit(Changes(put_jobs=[job("web")], put_nodes=[node("n1"), node("n2")],
                               events=[event("web")]))
    finally:
        await s.close()


async def test_an_older_file_is_migrated_and_keeps_its_records(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    await _write_current(path)
    s = NextStore(path)
    await s.open()
    try:
        snap = await s.load()
        assert (snap.index, set(snap.nodes), set(snap.jobs)) == (1, {"n1", "n2"},
                                                                 {("default", "web")})
        assert await s.commit(Changes(put_allocs=[alloc("a1")])) == 2
    finally:
        await s.close()
    with side(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) + 1
        assert conn.execute("SELECT DISTINCT datacenter FROM nodes").fetchall() == [("dc1",)]


async def test_a_failed_migration_leaves_the_file_at_its_old_version(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    await _write_current(path)
    broken = BrokenNextStore(path)
    with pytest.raises(StoreError, match=rf"schema version {len(MIGRATIONS) + 1} \(nodes by "
                                         rf"datacenter\) failed: disk on fire; it is left at "
                                         rf"version {len(MIGRATIONS)}"):
        await broken.open()
    with side(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        columns = [row[1] for row in conn.execute("PRAGMA table_info(nodes)")]
        assert "datacenter" not in columns
    s = SQLiteStore(path)  # the lock was released, and this orch still reads the file
    await s.open()
    try:
        assert set((await s.load()).nodes) == {"n1", "n2"}
    finally:
        await s.close()


async def test_a_file_from_a_newer_orch_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    await _write_current(path)
    with side(path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    before = digest(path)
    for _ in range(2):  # refused each time: the failed open released its lock
        with pytest.raises(ConfigError) as err:
            await SQLiteStore(path).open()
        assert str(err.value).startswith(f"{path}: the store was written by a newer orch "
                                         f"(schema version {len(MIGRATIONS) + 1}; this orch "
                                         f"knows up to {len(MIGRATIONS)})")
    assert digest(path) == before


@pytest.mark.parametrize("content", ["another application", "not sqlite"])
async def test_a_file_that_is_not_an_orch_store_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "state.db"
    if content == "not sqlite":
        path.write_bytes(b"this is a text file, not a database\n" * 200)
    else:
        with side(path) as conn:
            conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY)")
    before = digest(path)
    with pytest.raises(ConfigError, match="not an orch store"):
        await SQLiteStore(path).open()
    assert digest(path) == before


async def test_a_missing_directory_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        await SQLiteStore(tmp_path / "nope" / "state.db").open()


# --- one controller per file ---------------------------------------------------------------------


async def test_a_second_store_on_the_same_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first = SQLiteStore(path)
    await first.open()
    try:
        with pytest.raises(ConfigError, match=r"in use by another controller \(pid \d+"):
            await SQLiteStore(path).open()
        with pytest.raises(StoreError, match="already open"):
            await first.open()
    finally:
        await first.close()
    second = SQLiteStore(path)
    await second.open()
    await second.close()


# --- faults inside a transaction -----------------------------------------------------------------


async def test_a_fault_late_in_the_transaction_rolls_everything_back(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    s = SQLiteStore(path)
    await s.open()
    try:
        await s.commit(Changes(put_jobs=[job("web", 1)], events=[event("first")]))
        before, log = await s.load(), await s.events_since(0)
        with side(path) as conn:  # a real SQLite error, raised after most rows were written
            conn.execute("CREATE TRIGGER fail BEFORE INSERT ON meta WHEN NEW.key = 'boom' "
                         "BEGIN SELECT RAISE(ABORT, 'forced failure'); END")
        events = [event("lost")]
        with pytest.raises(StoreError, match="the commit failed and wrote nothing: forced failure"):
            await s.commit(Changes(put_jobs=[job("web", 2)], purge_jobs=[("default", "web")],
                                   put_allocs=[alloc("a1")], put_nodes=[node("n1")],
                                   events=events, meta={"boom": "1"}))
        assert events[0].index == 0
        assert await s.load() == before
        assert await s.events_since(0) == log
        assert await s.commit(Changes(events=[event("next")], meta={"fine": "1"})) == 2
        assert [e.index for e in await s.events_since(0)] == [1, 2]
    finally:
        await s.close()


def _jumps(conn: sqlite3.Connection, table: str) -> int:
    """Pages of ``table``'s b-tree, in key order, not next to the one before on disk."""
    pages = [p for (p,) in conn.execute("SELECT pageno FROM dbstat WHERE name = ? ORDER BY path",
                                        (table,))]
    return sum(1 for a, b in itertools.pairwise(pages) if b != a + 1)


async def test_defragment_writes_the_file_again_in_order_and_loses_nothing(
        tmp_path: Path) -> None:
    """Churn scatters a table's pages over the file (new pages come from the free list that
    deletes feed); ``defragment`` puts them back in order, frees the free list, leaves the
    WAL empty, and the store holds and takes the same as before."""
    path = tmp_path / "state.db"
    s = SQLiteStore(path, synchronous="normal")
    await s.open()
    try:
        for r in range(6):  # allocations placed and stopped in rounds, as a month's churn
            await s.commit(Changes(put_allocs=[alloc(f"a{r}-{i:04d}", index=i)
                                               for i in range(400)]))
            await s.commit(Changes(delete_allocs=[f"a{r}-{i:04d}" for i in range(400)
                                                  if i % 4]))
        before = await s.load()
        with side(path) as conn:
            scattered = _jumps(conn, "allocations")
        assert int((await s.pragmas())["freelist_count"]) > 0
        assert await s.defragment()
        got = await s.pragmas()
        assert got["freelist_count"] == 0
        with side(path) as conn:
            assert _jumps(conn, "allocations") < scattered / 4
        assert path.with_name("state.db-wal").stat().st_size == 0
        assert set((await s.load()).allocs) == set(before.allocs)
        await s.commit(Changes(put_allocs=[alloc("after")]))
        assert "after" in (await s.load()).allocs
    finally:
        await s.close()
