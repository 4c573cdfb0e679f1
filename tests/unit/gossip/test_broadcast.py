"""The retransmit-limited queue: least sent first, newest first, obsolete updates dropped."""

from __future__ import annotations

from orch.gossip import broadcast as bq


def test_least_sent_then_newest_first() -> None:
    q = bq.BroadcastQueue()
    q.enqueue("a", bq.MEMBER, b"a1")
    q.enqueue("b", bq.MEMBER, b"b1")
    assert q.take(1000, 0, 10, 0.0) == [b"b1", b"a1"]
    q.enqueue("c", bq.MEMBER, b"c1")
    # c was never sent: it goes first, then the others (newest first)
    assert q.take(1000, 0, 10, 0.0) == [b"c1", b"b1", b"a1"]
    q.enqueue("d", bq.MEMBER, b"d" * 8)
    assert q.take(9, 0, 10, 0.0) == [b"d" * 8]


def test_updates_leave_after_the_limit() -> None:
    q = bq.BroadcastQueue()
    q.enqueue("a", bq.MEMBER, b"x")
    for _ in range(3):
        assert q.take(100, 0, 3, 0.0) == [b"x"]
    assert q.take(100, 0, 3, 0.0) == []
    assert len(q) == 0


def test_budget_is_respected_and_small_items_fill_gaps() -> None:
    q = bq.BroadcastQueue()
    q.enqueue("a", bq.MEMBER, b"s" * 10)
    q.enqueue("b", bq.MEMBER, b"L" * 60)
    q.enqueue("c", bq.MEMBER, b"m" * 30)
    taken = q.take(50, 2, 10, 0.0)
    assert taken == [b"m" * 30, b"s" * 10]
    assert sum(len(t) + 2 for t in taken) <= 50


def test_member_notice_replaces_older_member_and_suspect_notices() -> None:
    q = bq.BroadcastQueue()
    q.enqueue("a", bq.SUSPECT, b"suspect-by-b", sub="b")
    q.enqueue("a", bq.SUSPECT, b"suspect-by-c", sub="c")
    q.enqueue("a", bq.STATE, b"state-v3", sub=3)
    assert len(q) == 3
    q.enqueue("a", bq.SUSPECT, b"suspect-by-b-again", sub="b")
    assert len(q) == 3  # same accuser: replaced
    q.enqueue("a", bq.MEMBER, b"alive")
    assert sorted(q.take(1000, 0, 10, 0.0)) == [b"alive", b"state-v3"]


def test_a_full_state_replaces_the_older_deltas_of_that_member() -> None:
    q = bq.BroadcastQueue()
    q.enqueue("a", bq.STATE, b"a-v1", sub=1)
    q.enqueue("a", bq.STATE, b"a-v2", sub=2)
    q.enqueue("b", bq.STATE, b"b-v1", sub=1)
    q.enqueue("a", bq.MEMBER, b"alive")
    q.enqueue("a", bq.STATE, b"a-v3-full", sub=3, full=True)
    assert q.pending("a") == 2  # the alive notice and the full state
    q.enqueue("a", bq.STATE, b"a-v4", sub=4)  # a delta on top of it stays
    assert sorted(q.take(1000, 0, 10, 0.0)) == [b"a-v3-full", b"a-v4", b"alive", b"b-v1"]


def test_refresh_renders_at_send_time() -> None:
    q = bq.BroadcastQueue()
    q.enqueue("a", bq.SUSPECT, b"t=0", sub="b", refresh=lambda now: f"t={now:g}".encode())
    assert q.take(100, 0, 5, 2.5) == [b"t=2.5"]


def test_prune_drops_the_most_sent_oldest_first() -> None:
    q = bq.BroadcastQueue()
    for i in range(5):
        q.enqueue(f"m{i}", bq.MEMBER, f"x{i}".encode() * 5)
    assert q.take(25, 0, 10, 0.0) == [b"x4" * 5, b"x3" * 5]  # sent once each
    q.prune(3)
    assert len(q) == 3
    assert sorted(q.take(100, 0, 10, 0.0)) == [b"x0" * 5, b"x1" * 5, b"x2" * 5]


def test_node_state_is_not_starved_by_a_storm_of_member_notices() -> None:
    q = bq.BroadcastQueue()
    q.enqueue("svc", bq.STATE, b"S" * 40, sub=1)  # queued first: oldest
    for i in range(50):  # churn: newer member notices, each never sent
        q.enqueue(f"m{i}", bq.MEMBER, b"M" * 40)
    taken = q.take(100, 0, 10, 0.0)
    assert b"S" * 40 in taken  # it has its share of the payload
    assert sum(map(len, taken)) <= 100
    assert taken.count(b"M" * 40) == 1  # membership still takes the rest


def test_membership_uses_the_whole_payload_when_no_state_is_queued() -> None:
    q = bq.BroadcastQueue()
    for i in range(5):
        q.enqueue(f"m{i}", bq.MEMBER, b"M" * 20)
    assert len(q.take(100, 0, 10, 0.0)) == 5
