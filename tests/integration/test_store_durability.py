"""Killing the controller with SIGKILL loses no acknowledged commit and leaves a sound file.

A child process commits as fast as it can and prints each index once ``commit``
has returned; the parent kills it at a random moment (a random time after its
start, possibly while it creates the schema; or just after a random number of
acknowledgements), reopens the file and checks that every acknowledged commit is
there whole, that nothing is there in part, and that SQLite finds the file
sound. Then it starts the child again on the same file, six times in all.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from controller.store import SQLiteStore
from tests.integration.store_crash_child import alloc_ids, event_keys

ROOT = Path(__file__).resolve().parents[2]


def run_and_kill(path: Path, rng: random.Random, *, by_time: bool) -> list[int]:
    """Start the child, kill it at a random point; the indexes it acknowledged."""
    child = subprocess.Popen([sys.executable, "-m", "tests.integration.store_crash_child",
                              str(path)], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stderr is not None
    acked: list[int] = []
    try:
        if by_time:  # anywhere from start-up (opening, creating the schema) to hundreds of commits
            time.sleep(rng.uniform(0.0, 0.6))
        else:
            want = rng.randint(1, 60)
            while len(acked) < want:
                line = child.stdout.readline()
                assert line, f"the child died: {child.stderr.read()}"
                acked.append(int(line))
            time.sleep(rng.uniform(0.0, 0.003))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    acked += [int(line) for line in child.stdout.read().split()]
    child.stdout.close()
    child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    return acked


async def check(path: Path, acked: list[int], why: str) -> int:
    store = SQLiteStore(path)
    await store.open()
    try:
        snap = await store.load()
        events = await store.events_since(0, limit=100_000)
    finally:
        await store.close()
    n = snap.index
    assert n >= max(acked, default=0), f"{why}: acknowledged {max(acked)}, found {n}"
    # Commit n is there whole, and nothing of commit n + 1.
    assert [j.version for j in snap.jobs.get(("default", "crash"), [])] == list(range(1, n + 1)), why
    assert set(snap.allocs) == set(alloc_ids(n - 1) + alloc_ids(n)), why
    assert snap.meta.get("last") == (str(n) if n else None), why
    keys = [k for i in range(1, n + 1) for k in event_keys(i)]
    assert [e.key for e in events] == keys, why
    assert [e.index for e in events] == list(range(1, len(keys) + 1)), why
    assert snap.event_index == len(keys), why
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)], why
    return n


@pytest.mark.timeout(120)
def test_acknowledged_commits_survive_sigkill(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    path = tmp_path / "state.db"
    acked: list[int] = []
    for round_ in range(6):
        acked += run_and_kill(path, rng, by_time=round_ % 2 == 0)
        n = asyncio.run(check(path, acked, f"seed {seed}, round {round_}"))
        assert n == max(acked, default=0) or n == max(acked, default=0) + 1
    assert len(acked) > 0
