"""The SQLite backend while another connection holds the file's write lock, in real time: the
event loop keeps running while a commit waits (the wait is on the store's worker thread), a
commit that outwaits its busy timeout fails cleanly, and a commit whose caller is cancelled
while it waits still lands whole. The rest of the backend's tests need no waiting:
tests/unit/store/test_sqlite.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from controller.store import Changes, SQLiteStore
from orch.errors import StoreError
from tests.unit.store.records import event, node
from tests.unit.store.test_sqlite import side


async def test_the_loop_runs_while_a_commit_waits_for_the_file(tmp_path: Path) -> None:
    """Another process holds the write lock: the commit waits on the worker, not on the loop."""
    path = tmp_path / "state.db"
    s = SQLiteStore(path, busy_timeout=5.0)
    await s.open()
    try:
        with side(path) as conn:
            conn.execute("BEGIN IMMEDIATE")
            commit = asyncio.create_task(s.commit(Changes(put_nodes=[node("n1")])))
            ticks = 0
            for _ in range(5):  # a blocked loop would not get here before the busy timeout
                await asyncio.sleep(0.01)
                ticks += 1
            assert not commit.done()
            conn.execute("ROLLBACK")
            assert await asyncio.wait_for(commit, 5) == 1
        assert ticks == 5
    finally:
        await s.close()


async def test_a_commit_that_times_out_on_a_locked_file_fails_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    s = SQLiteStore(path, busy_timeout=0.05)
    await s.open()
    try:
        with side(path) as conn:
            conn.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreError, match="database is locked"):
                await s.commit(Changes(put_nodes=[node("n1")]))
            conn.execute("ROLLBACK")
        assert await s.commit(Changes(put_nodes=[node("n2")])) == 1
        assert set((await s.load()).nodes) == {"n2"}
    finally:
        await s.close()


async def test_a_cancelled_commit_still_lands_whole(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    s = SQLiteStore(path, busy_timeout=5.0)
    await s.open()
    try:
        with side(path) as conn:
            conn.execute("BEGIN IMMEDIATE")
            commit = asyncio.create_task(s.commit(Changes(put_nodes=[node("n1")],
                                                          events=[event("n1")])))
            await asyncio.sleep(0.02)
            commit.cancel()
            with pytest.raises(asyncio.CancelledError):
                await commit
            conn.execute("ROLLBACK")
        snap = await s.load()  # queued after the cancelled commit, so it sees its outcome
        assert (snap.index, set(snap.nodes), snap.event_index) == (1, {"n1"}, 1)
    finally:
        await s.close()
