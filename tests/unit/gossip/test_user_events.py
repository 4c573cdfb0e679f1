"""User events: a Lamport clock, each event delivered once everywhere, nothing replayed."""

from __future__ import annotations

import pytest

from orch.gossip import codec
from orch.gossip.config import GossipConfig
from orch.gossip.messages import UserEvent
from orch.gossip.sim import NetConfig, SimNode, Simulator
from orch.gossip.user_events import BUFFER, MAX_PAYLOAD, UserEvents


def test_the_clock_orders_what_a_member_saw_before_what_it_fires() -> None:
    a, b = UserEvents(), UserEvents()
    first = a.fire("deploy", b"v1")
    assert b.receive(first)
    second = b.fire("deploy", b"v2")
    assert second.ltime > first.ltime  # b had seen v1 when it fired v2
    assert not b.receive(first)  # a copy
    assert b.duplicates == 1


def test_same_time_different_events_are_both_delivered() -> None:
    a, b, c = UserEvents(), UserEvents(), UserEvents()
    x, y = a.fire("x", b""), b.fire("y", b"")
    assert x.ltime == y.ltime == 0
    assert c.receive(x)
    assert c.receive(y)


def test_events_before_the_join_or_too_old_are_dropped() -> None:
    u = UserEvents()
    u.ignore_before(10)
    assert not u.receive(UserEvent(9, "old", b""))
    assert u.receive(UserEvent(10, "new", b""))
    u.witness(10 + 2 * BUFFER)
    assert not u.receive(UserEvent(11, "late", b""))
    assert u.stale == 2


def test_unfit_events_are_refused() -> None:
    u = UserEvents()
    with pytest.raises(ValueError, match="payload"):
        u.fire("big", b"x" * (MAX_PAYLOAD + 1))
    with pytest.raises(ValueError, match="name"):
        u.fire("", b"")
    with pytest.raises(ValueError, match="name"):
        u.fire("a\nb", b"")


def test_the_wire_format_round_trips() -> None:
    ev = UserEvent(2**40, "reload", b"\x00\xff", False)
    assert codec.decode_message(codec.decode_payload(codec.pack([codec.encode(ev)]))[0]) == ev


def test_every_member_gets_an_event_once_even_at_10_percent_loss() -> None:
    sim = Simulator(GossipConfig.fast(), net=NetConfig(loss=0.10), seed=2)
    names = [x.name for x in sim.start_cluster(30)]
    sim.run_for(5)
    got: dict[str, list[tuple[int, str]]] = {n: [] for n in names}

    def on_user_event(node: SimNode, e: UserEvent) -> None:
        got[node.name].append((e.ltime, e.name))

    sim.on_user_event = on_user_event
    for i in range(5):
        sim.fire_event(names[i], f"e{i}", b"p")
        sim.run_for(0.5)
    sim.run_for(10)
    for n in names:
        assert sorted(name for _, name in got[n]) == ["e0", "e1", "e2", "e3", "e4"], (n, got[n])


def test_a_member_that_joins_later_does_not_replay_old_events() -> None:
    sim = Simulator(GossipConfig.fast(), seed=3)
    names = [x.name for x in sim.start_cluster(5)]
    sim.run_for(3)
    got: list[tuple[str, str]] = []
    sim.on_user_event = lambda node, e: got.append((node.name, e.name))
    sim.fire_event(names[0], "before")
    sim.run_for(1)
    sim.add_node("late", join=[names[1]])
    sim.run_for(3)
    sim.fire_event(names[2], "after")
    sim.run_for(5)
    assert ("late", "before") not in got
    assert ("late", "after") in got
