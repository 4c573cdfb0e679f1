"""The member snapshot: replayed on start, compacted as it grows, tolerant of damage."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from orch.gossip.core import EventKind, MemberEvent
from orch.gossip.snapshot import Snapshot


def ev(kind: EventKind, name: str, port: int = 7946) -> MemberEvent:
    return MemberEvent(kind, name, ("10.0.0.1", port), 0, 0.0)


def test_the_last_word_about_each_member_wins(tmp_path: Path) -> None:
    path = tmp_path / "members.snapshot"
    s = Snapshot(path, me="me")
    s.load()
    s.open()
    for e in (ev(EventKind.JOIN, "a"), ev(EventKind.JOIN, "b"), ev(EventKind.JOIN, "me"),
              ev(EventKind.DEAD, "a"), ev(EventKind.ALIVE, "c", 8000), ev(EventKind.LEFT, "b"),
              ev(EventKind.JOIN, "a", 7000)):
        s.record(e)
    s.close()
    assert Snapshot(path, me="me").load() == {"a": ("10.0.0.1", 7000), "c": ("10.0.0.1", 8000)}


def now(fn: Callable[[], None]) -> None:
    """Runs a compaction at once (the daemon runs it in a thread)."""
    fn()


def test_it_is_compacted_when_it_grows(tmp_path: Path) -> None:
    path = tmp_path / "members.snapshot"
    s = Snapshot(path, me="me", max_bytes=2000, background=now)
    s.load()
    s.open()
    for i in range(500):  # a member flapping for a long time
        s.record(ev(EventKind.JOIN, "flappy", 7000 + i % 2))
        s.record(ev(EventKind.DEAD, "flappy"))
    s.record(ev(EventKind.JOIN, "steady"))
    s.close()
    assert path.stat().st_size <= 2000 + 100
    assert Snapshot(path, me="me").load() == {"steady": ("10.0.0.1", 7946)}


def test_damaged_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "members.snapshot"
    path.write_text("alive a 10.0.0.1:7946\ngarbage\nalive b nohost\nalive c 10.0.0.3:99999\n"
                    "alive d 10.0.0.4:7946\ngone d\n\xff\xfe\nalive e 10.0.0.5:7946")
    assert Snapshot(path, me="me").load() == {"a": ("10.0.0.1", 7946), "e": ("10.0.0.5", 7946)}
    assert Snapshot(tmp_path / "missing", me="me").load() == {}


def test_a_large_cluster_is_appended_to_not_rewritten_per_event(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the compaction size (128 KiB: about 4,000 members), each event appends one line;
    the file is rewritten (and synced) only when it has doubled, in the background."""
    path = tmp_path / "members.snapshot"
    s = Snapshot(path, me="me")
    s.load()
    s.open()
    for i in range(5000):
        s.record(ev(EventKind.JOIN, f"member-{i:05d}", 7000 + i % 1000))
    rewrites: list[object] = []
    syncs: list[int] = []
    real_replace, real_fsync = os.replace, os.fsync

    def replace(a: str, b: str) -> None:
        rewrites.append(a)
        real_replace(a, b)

    def fsync(fd: int) -> None:
        syncs.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    for i in range(300):  # members flapping: one line each
        s.record(ev(EventKind.DEAD if i % 2 else EventKind.JOIN, f"member-{i:05d}", 9000))
    s.close()
    assert len(rewrites) <= 1
    assert len(syncs) <= 1
    assert len(Snapshot(path, me="me").load()) == 5000 - 150


def test_what_is_appended_during_a_compaction_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "members.snapshot"
    later: list[Callable[[], None]] = []
    s = Snapshot(path, me="me", max_bytes=500, background=later.append)
    s.load()
    s.open()
    for i in range(30):
        s.record(ev(EventKind.JOIN, f"m{i:02d}"))
    assert len(later) == 1  # a compaction started: it runs in the background
    s.record(ev(EventKind.LEFT, "m00"))
    s.record(ev(EventKind.JOIN, "late"))
    later.pop()()  # it finishes; the next event swaps the new file in
    s.record(ev(EventKind.JOIN, "later"))
    assert s.compactions == 1
    s.close()
    got = Snapshot(path, me="me").load()
    assert set(got) == {f"m{i:02d}" for i in range(1, 30)} | {"late", "later"}


def test_the_reader_bounds_what_it_keeps(tmp_path: Path) -> None:
    path = tmp_path / "members.snapshot"
    lines = [f"alive m{i} 10.0.0.1:7946\n" for i in range(50)]
    path.write_text("".join(lines) + "alive " + "x" * 10_000 + " 10.0.0.1:7946\n"
                    + "alive after 10.0.0.2:7946\n")
    got = Snapshot(path, me="me", max_members=10).load()
    assert set(got) == {f"m{i}" for i in range(10)}
