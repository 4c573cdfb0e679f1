"""The agent's queue of allocation reports: the newest per allocation, pending ones held."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.report_queue import SETTLE, ReportQueue
from orch.v1 import node_pb2

PENDING, RUNNING, FAILED = (node_pb2.CLIENT_STATUS_PENDING, node_pb2.CLIENT_STATUS_RUNNING,
                            node_pb2.CLIENT_STATUS_FAILED)


def report(alloc_id: str, status: node_pb2.ClientStatus.ValueType, note: str = "") -> node_pb2.Allocation:
    return node_pb2.Allocation(id=alloc_id, client_status=status, description=note)


def test_a_pending_report_and_the_running_one_after_it_go_as_one() -> None:
    q = ReportQueue(hold=1.0)
    q.put(report("a", PENDING), now=0.0)
    assert not q.ready(0.5)
    assert q.take(0.5) == []  # held: the running report usually follows within the hold
    q.put(report("a", RUNNING), now=0.6)
    assert q.ready(0.6)
    assert [(r.id, r.client_status) for r in q.take(0.6)] == [("a", RUNNING)]
    assert len(q) == 0
    assert q.next_release() is None


def test_a_pending_report_goes_once_its_hold_is_over() -> None:
    q = ReportQueue(hold=1.0)
    q.put(report("a", PENDING), now=10.0)
    assert q.next_release() == 11.0
    assert not q.ready(10.9)
    assert q.ready(11.0)
    assert [r.id for r in q.take(11.0)] == ["a"]


def test_the_hold_runs_from_the_first_pending_report() -> None:
    """Progress while an allocation stays pending (an image pull) does not hold it for ever."""
    q = ReportQueue(hold=1.0)
    q.put(report("a", PENDING, "pulling"), now=0.0)
    q.put(report("a", PENDING, "pulled 50 %"), now=0.9)
    assert q.next_release() == 1.0
    (sent,) = q.take(1.0)
    assert sent.description == "pulled 50 %"  # the newest


def test_other_reports_go_at_once_and_leave_the_held_ones_held() -> None:
    q = ReportQueue(hold=1.0)
    q.put(report("a", PENDING), now=0.0)
    q.put(report("b", FAILED), now=0.1)
    assert q.ready(0.1)
    assert [r.id for r in q.take(0.1)] == ["b"]
    assert len(q) == 1
    assert not q.ready(0.2)


def test_a_running_report_waits_for_a_health_verdict_due_within_the_hold() -> None:
    q = ReportQueue(hold=1.0)
    q.put(report("a", PENDING), now=0.0)
    q.put(report("a", RUNNING), now=0.2, next_in=0.5)  # healthy at 0.7
    assert not q.ready(0.7)
    assert q.next_release() == 0.2 + 0.5 + SETTLE
    q.put(report("a", RUNNING, "healthy"), now=0.7)
    assert [r.description for r in q.take(0.7)] == ["healthy"]


def test_a_running_report_does_not_wait_for_a_verdict_due_later() -> None:
    q = ReportQueue(hold=1.0)
    q.put(report("a", RUNNING), now=0.0, next_in=10.0)
    assert q.ready(0.0)


def test_without_a_hold_nothing_waits() -> None:
    q = ReportQueue(hold=0.0)
    q.put(report("a", PENDING), now=0.0)
    assert q.ready(0.0)
    assert [r.id for r in q.take(0.0)] == ["a"]


def test_catching_up_keeps_a_newer_queued_report_and_holds_nothing() -> None:
    q = ReportQueue(hold=1.0)
    q.put(report("a", RUNNING, "newest"), now=0.0)
    q.catch_up([report("a", PENDING, "older"), report("b", PENDING)])
    out = {r.id: r for r in q.take(0.0)}
    assert out["a"].description == "newest"
    assert out["b"].client_status == PENDING  # a new stream: everything goes at once


@given(st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from([PENDING, RUNNING, FAILED]),
                          st.floats(0, 0.5)), max_size=30))
def test_what_goes_out_is_the_newest_report_of_each_allocation_once(
        puts: list[tuple[str, node_pb2.ClientStatus.ValueType, float]]) -> None:
    q = ReportQueue(hold=1.0)
    now, newest, sent = 0.0, {}, {}
    for n, (alloc_id, status, dt) in enumerate(puts):
        now += dt
        q.put(report(alloc_id, status, str(n)), now)
        newest[alloc_id] = str(n)
        for r in q.take(now):
            sent[r.id] = r.description
    for r in q.take(now + 1.0):  # every hold is over
        sent[r.id] = r.description
    assert sent == newest
    assert len(q) == 0
