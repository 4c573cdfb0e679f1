"""Member events coalesced under churn: one change per member and burst."""

from __future__ import annotations

from orch.gossip.coalesce import Coalescer, UserEventBatcher, Window
from orch.gossip.config import GossipConfig
from orch.gossip.core import EventKind, MemberEvent
from orch.gossip.messages import UserEvent
from orch.gossip.sim import SimNode, Simulator

ADDR = ("127.0.0.1", 7946)


def ev(kind: EventKind, name: str, t: float, inc: int = 0) -> MemberEvent:
    return MemberEvent(kind, name, ADDR, inc, t)


def kinds(batch: list) -> list[tuple[str, str]]:  # type: ignore[type-arg]
    return [(d.event.kind.value, d.event.name) for d in batch]


def test_a_batch_waits_for_quiet_but_not_past_the_period() -> None:
    c = Coalescer(Window(period=2.0, quiescent=0.5))
    c.add(ev(EventKind.JOIN, "a", 0.0), 0.0)
    assert c.deadline() == 0.5
    c.add(ev(EventKind.JOIN, "b", 0.4), 0.4)
    assert c.deadline() == 0.9
    assert c.flush(0.8) == []
    for i in range(20):  # a steady trickle: held no longer than the period
        c.add(ev(EventKind.UPDATE, "a", 0.5 + i * 0.1), 0.5 + i * 0.1)
    assert c.deadline() == 2.0
    batch = c.flush(2.0)
    assert kinds(batch) == [("join", "a"), ("join", "b"), ("update", "a")]
    assert [d.seq for d in batch] == [1, 2, 3]
    assert c.deadline() is None


def test_a_refuted_suspicion_within_a_burst_is_no_news() -> None:
    c = Coalescer(Window(period=2.0, quiescent=0.5))
    c.add(ev(EventKind.JOIN, "a", 0.0), 0.0)
    c.flush(1.0)
    for i in range(10):  # flapping
        c.add(ev(EventKind.SUSPECT, "a", 2.0 + i * 0.1, i), 2.0 + i * 0.1)
        c.add(ev(EventKind.ALIVE, "a", 2.05 + i * 0.1, i + 1), 2.05 + i * 0.1)
    assert c.flush(10.0) == []
    assert c.received == 21
    assert c.delivered == 1


def test_the_latest_status_wins_and_is_delivered_once() -> None:
    c = Coalescer(Window(period=2.0, quiescent=0.5))
    c.add(ev(EventKind.JOIN, "a", 0.0), 0.0)
    c.flush(1.0)
    c.add(ev(EventKind.SUSPECT, "a", 2.0), 2.0)
    c.add(ev(EventKind.DEAD, "a", 2.2), 2.2)
    assert kinds(c.flush(3.0)) == [("dead", "a")]
    c.add(ev(EventKind.DEAD, "a", 4.0), 4.0)  # heard again from another member
    assert c.flush(5.0) == []
    c.add(ev(EventKind.JOIN, "a", 6.0, 3), 6.0)  # came back
    assert kinds(c.flush(7.0)) == [("join", "a")]


def test_flapping_under_loss_reaches_the_consumer_as_a_few_changes() -> None:
    """30 % loss for 30 s: suspicions raised and refuted by the dozen at one member reach a
    coalesced consumer as a handful of changes, and the consumer ends where gossip does."""
    sim = Simulator(GossipConfig.fast(), seed=9)
    names = [x.name for x in sim.start_cluster(20)]
    sim.run_for(5)
    c = Coalescer(Window(period=2.0, quiescent=0.5))
    seen: dict[str, str] = {}

    def on_event(node: SimNode, e: MemberEvent) -> None:
        if node.name == names[0]:
            for d in c.flush(sim.now):
                seen[d.event.name] = d.event.kind.value
            c.add(e, sim.now)

    sim.on_event = on_event
    sim.net.loss = 0.3
    sim.run_for(30)
    sim.net.loss = 0.0
    sim.run_for(30)
    for d in c.flush(sim.now, force=True):
        seen[d.event.name] = d.event.kind.value
    assert c.received >= 40, c.received
    assert c.delivered * 4 <= c.received, (c.delivered, c.received)
    assert all(seen.get(n, "join") in ("join", "alive") for n in names[1:]), seen


def test_user_events_keep_the_newest_of_each_coalescing_name_and_every_other() -> None:
    b = UserEventBatcher(Window(period=2.0, quiescent=0.5))
    for t in (3, 1, 2):
        b.add(UserEvent(t, "deploy", str(t).encode()), 0.0)
    b.add(UserEvent(2, "page", b"a", coalesce=False), 0.1)
    b.add(UserEvent(4, "page", b"b", coalesce=False), 0.2)
    assert b.flush(0.5) == []
    assert b.flush(0.7) == [UserEvent(2, "page", b"a", False), UserEvent(3, "deploy", b"3"),
                            UserEvent(4, "page", b"b", False)]
    assert b.deadline() is None
