"""A periodic job in a cluster of three ``orch-controller`` processes on etcd and one agent
(process driver), lease TTL 2 s: the leader is killed (SIGKILL) between two launches, and
every slot from the first launch to the last is launched exactly once, by whichever
controller led at the time (the slot that fell while there was no leader, late, once).

Without the etcd binary this skips, except under CI=true, where it fails.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench.ha_cluster import Daemon, HaCluster, log_time, wait
from orch.jobspec.periodic import Schedule, child_slot
from orch.v1 import controller_pb2, job_pb2
from tests.etcd_server import etcd_binary

TTL = 2
PERIOD = 4
"""Seconds between slots: longer than a failover (about TTL + 1 s), so that at most one
slot falls while there is no leader."""
NET = "127.0.94"
"""This module's loopback block."""

pytestmark = [pytest.mark.etcd, pytest.mark.slow, pytest.mark.timeout(120)]


def report_job() -> job_pb2.Job:
    return job_pb2.Job(
        name="report", type=job_pb2.JOB_TYPE_BATCH,
        periodic=job_pb2.Periodic(cron=f"*/{PERIOD} * * * * *", time_zone="Europe/Berlin"),
        groups=[job_pb2.TaskGroup(name="run", tasks=[job_pb2.Task(
            name="report", driver="process", command="/bin/true",
            resources=job_pb2.Resources(cpu_millicores=10, memory_mb=8))])])


def children(c: HaCluster, via_any: bool = True) -> list[controller_pb2.ChildJob]:
    """The parent's children as a controller that answers lists them."""
    for d in c.controllers:
        if not d.running:
            continue
        try:
            reply = c.stub(d).GetJob(controller_pb2.GetJobRequest(name="report"), timeout=5)
        except Exception:
            if via_any:
                continue
            raise
        return list(reply.children)
    return []


def leading_terms(c: HaCluster, killed_at: float,
                  killed: Daemon) -> list[tuple[float, float]]:
    """(from, to) of every term of every controller, from their logs (the killed one's last
    term ends at the kill; a term still going ends now)."""
    out = []
    for d in c.controllers:
        starts = sorted(log_time(r) for r in d.log_lines("elected leader"))
        ends = sorted(log_time(r) for r in d.log_lines("stepped down"))
        for start in starts:
            end = next((e for e in ends if e >= start), None)
            if end is None:
                end = killed_at if d is killed else time.time() + 3600
            out.append((start, end))
    return sorted(out)


def slots(kids: list[controller_pb2.ChildJob]) -> list[int]:
    return sorted(s for k in kids if (s := child_slot(k.name)) is not None)


def test_leader_killed_between_two_launches_every_slot_launched_once(tmp_path: Path) -> None:
    etcd_binary()
    with HaCluster(tmp_path / "ha", ttl=TTL, agents_n=1, net=NET) as c:
        leader = c.leader()
        c.stub(leader).RegisterJob(controller_pb2.RegisterJobRequest(job=report_job()),
                                   timeout=15)
        wait("two launches", lambda: len(children(c)) >= 2, 3 * PERIOD + 5)
        # kill the leader right after a launch: the next slot falls while there is none
        last = max(slots(children(c)))
        wait("the slot after", lambda: max(slots(children(c))) > last, PERIOD + 5)
        time.sleep(1.0)
        killed_at = time.time()
        c.kill(leader)
        new = c.leader(within=30)
        assert new is not leader
        wait("two launches by the new leader", lambda: len(
            [s for s in slots(children(c)) if s > killed_at]) >= 2, 3 * PERIOD + 10)

        got = slots(children(c))
        assert len(got) == len(set(got)), f"a slot was launched twice: {got}"
        assert any(s > killed_at for s in got)
        assert any(s < killed_at for s in got)
        # every slot while a controller led was launched, and of the slots that fell while
        # none did (the kill; or a lease lost on a loaded machine), the latest of each gap,
        # late: the rule of orch.jobspec.periodic.due_slot
        terms = leading_terms(c, killed_at, leader)
        schedule = Schedule(f"*/{PERIOD} * * * * *", "Europe/Berlin")
        every, s = [got[0]], got[0]
        while (s := schedule.next_after(s) or 0) <= got[-1]:
            every.append(s)
        led = [s for s in every if any(a <= s < b for a, b in terms)]
        gaps: list[list[int]] = [[]]
        for s in every:
            if s in led:
                gaps.append([])
            else:
                gaps[-1].append(s)
        expected = sorted({*led, *(g[-1] for g in gaps if g)})
        assert got == expected, f"launched {got}, expected {expected} (leading: {terms})"
        assert set(got) >= set(led)

        # each child placed once: one first allocation each (a task that failed on the node
        # may be rescheduled, as any batch job's: that one names the allocation it replaces)
        reply = c.stub(new).ListAllocations(controller_pb2.ListAllocationsRequest(
            include_stopped=True), timeout=10)
        first: dict[str, int] = {}
        for a in reply.allocations:
            if not a.previous_allocation:
                first[a.job] = first.get(a.job, 0) + 1
        assert all(n == 1 for n in first.values()), first
        assert {child_slot(k) for k in first} >= set(got[:-1])

        # the events tell the same: one PeriodicLaunched per slot, whoever led
        events = list(c.stub(new).Watch(controller_pb2.WatchRequest(
            types=["PeriodicLaunched"], since_index=1), timeout=10))
        launched = sorted(n for e in events if (n := child_slot(e.key)) is not None)
        assert launched[:len(got)] == got
