"""The member snapshot: replayed on start, compacted as it grows, tolerant of damage."""

from __future__ import annotations

from pathlib import Path

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


def test_it_is_compacted_when_it_grows(tmp_path: Path) -> None:
    path = tmp_path / "members.snapshot"
    s = Snapshot(path, me="me", max_bytes=2000)
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
