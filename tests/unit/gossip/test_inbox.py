from __future__ import annotations

import pytest

from orch.gossip.inbox import Inbox


def drain(box: Inbox[str]) -> list[tuple[str, bytes]]:
    out = []
    while (got := box.get()) is not None:
        out.append(got)
    return out


def test_sources_are_served_in_turn() -> None:
    box: Inbox[str] = Inbox(per_source=8, total=64)
    for i in range(5):
        box.put("flood", b"f%d" % i)
    box.put("honest", b"ping")
    got = drain(box)
    assert got[:2] == [("flood", b"f0"), ("honest", b"ping")]  # not behind the whole flood
    assert [d for s, d in got if s == "flood"] == [b"f%d" % i for i in range(5)]
    assert len(box) == 0


def test_a_flooding_source_loses_its_own_oldest_datagrams() -> None:
    box: Inbox[str] = Inbox(per_source=4, total=64)
    box.put("honest", b"ping")
    for i in range(100):
        box.put("flood", b"f%d" % i)
    assert len(box) == 5
    assert box.dropped == 96
    assert sorted(drain(box)) == [("flood", b"f96"), ("flood", b"f97"), ("flood", b"f98"),
                                  ("flood", b"f99"), ("honest", b"ping")]


def test_when_full_the_source_with_most_waiting_gives_way() -> None:
    box: Inbox[tuple[str, int]] = Inbox(per_source=4, total=6)
    for port in range(3):  # many sources of one flooder: the total holds them
        for _ in range(3):
            box.put(("evil", port), b"x")
    assert len(box) == 6
    box.put(("honest", 1), b"ping")
    assert len(box) == 6
    got = []
    while (g := box.get()) is not None:
        got.append(g)
    assert (("honest", 1), b"ping") in got


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="per_source"):
        Inbox(per_source=0, total=4)
