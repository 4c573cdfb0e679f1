"""What an agent's reports change in the controller's records: the pure merge, and the batch
that keeps the newest report per allocation (one write for a pending and a running report)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controller.cluster import Cluster
from controller.evaluator import Evaluator
from controller.nodes import NodeMonitor
from controller.reports import merge_report
from controller.state import ClusterState
from controller.store import SQLiteStore
from controller.store.base import Changes
from orch.v1 import job_pb2, node_pb2

PENDING, RUNNING, COMPLETE = (node_pb2.CLIENT_STATUS_PENDING, node_pb2.CLIENT_STATUS_RUNNING,
                              node_pb2.CLIENT_STATUS_COMPLETE)
RUN, STOP = node_pb2.DESIRED_STATUS_RUN, node_pb2.DESIRED_STATUS_STOP
H_PENDING, HEALTHY, UNHEALTHY = (node_pb2.ALLOC_HEALTH_PENDING, node_pb2.ALLOC_HEALTH_HEALTHY,
                                 node_pb2.ALLOC_HEALTH_UNHEALTHY)
NOW = 5_000_000_000


def placed(alloc_id: str = "a1", node_id: str = "n1") -> node_pb2.Allocation:
    return node_pb2.Allocation(
        id=alloc_id, name="web.app[0]", job="web", group="app", node_id=node_id,
        desired_status=RUN, client_status=PENDING, job_version=1,
        spec=job_pb2.TaskGroup(name="app", count=1, tasks=[job_pb2.Task(
            name="server", driver="process", command="/bin/sleep")]))


UNJUDGED = node_pb2.ALLOC_HEALTH_UNSPECIFIED


def running(alloc_id: str = "a1",
            health: node_pb2.AllocHealth.ValueType = UNJUDGED) -> node_pb2.Allocation:
    u = node_pb2.Allocation(id=alloc_id, client_status=RUNNING, checks_healthy=True,
                            deployment_health=health)
    u.tasks["server"].CopyFrom(node_pb2.TaskState(state="running", healthy=True))
    return u


def kinds(events: list) -> list[str]:  # type: ignore[type-arg]
    return [e.type for e in events]


# --- the pure merge ------------------------------------------------------------------------


def test_a_running_report_from_an_agent_that_does_not_judge_leaves_health_to_the_controller(
        ) -> None:
    m = merge_report(placed(), running(), NOW)
    assert m is not None
    assert (m.alloc.client_status, m.alloc.client_since_ns) == (RUNNING, NOW)
    assert m.alloc.checks_healthy
    assert not m.alloc.healthy
    assert not m.health_changed
    assert kinds(m.events) == ["AllocationRunning"]


def test_a_report_whose_tasks_changed_is_merged_and_one_whose_tasks_did_not_is_not() -> None:
    a = merge_report(placed(), running(), NOW)
    assert a is not None
    assert merge_report(a.alloc, running(), NOW + 1) is None  # the same tasks: nothing
    again = running()
    again.tasks["server"].state = "dead"  # a task's state changed
    m = merge_report(a.alloc, again, NOW + 2)
    assert m is not None
    assert m.alloc.tasks["server"].state == "dead"
    more = running()
    more.tasks["sidecar"].state = "running"  # a task more
    m = merge_report(m.alloc, more, NOW + 3)
    assert m is not None
    assert set(m.alloc.tasks) == {"server", "sidecar"}
    other = node_pb2.Allocation()
    other.CopyFrom(more)
    del other.tasks["server"]
    other.tasks["other"].CopyFrom(more.tasks["server"])  # as many tasks, one named otherwise
    m = merge_report(m.alloc, other, NOW + 4)
    assert m is not None
    assert set(m.alloc.tasks) == {"other", "sidecar"}
    assert "server" not in other.tasks  # comparing added no entry


def test_the_agents_verdict_is_the_allocations_health() -> None:
    a = placed()
    m = merge_report(a, running(health=H_PENDING), NOW)
    assert m is not None
    assert not m.alloc.healthy
    assert not m.health_changed
    m = merge_report(m.alloc, running(health=HEALTHY), NOW + 1)
    assert m is not None
    assert m.alloc.healthy
    assert m.health_changed
    assert m.alloc.deployment_health == HEALTHY
    assert kinds(m.events) == ["AllocationHealthy"]
    m = merge_report(m.alloc, running(health=H_PENDING), NOW + 2)  # a check failed
    assert m is not None
    assert not m.alloc.healthy
    assert kinds(m.events) == ["AllocationUnhealthy"]


def test_running_and_healthy_in_one_report_are_one_change() -> None:
    m = merge_report(placed(), running(health=HEALTHY), NOW)
    assert m is not None
    assert m.alloc.healthy
    assert kinds(m.events) == ["AllocationRunning", "AllocationHealthy"]


def test_a_healthy_verdict_does_not_make_a_stopped_allocation_healthy() -> None:
    a = placed()
    a.desired_status = STOP
    m = merge_report(a, running(health=HEALTHY), NOW)
    assert m is not None
    assert not m.alloc.healthy


def test_the_same_report_again_changes_nothing() -> None:
    m = merge_report(placed(), running(health=HEALTHY), NOW)
    assert m is not None
    assert merge_report(m.alloc, running(health=HEALTHY), NOW + 1) is None


def test_a_late_report_about_an_allocation_given_up_on_is_ignored() -> None:
    a = placed()
    a.desired_status, a.client_status = STOP, COMPLETE
    assert merge_report(a, running(health=HEALTHY), NOW) is None


# --- the batch -----------------------------------------------------------------------------


@pytest.fixture
async def monitor(tmp_path: Path) -> AsyncIterator[NodeMonitor]:
    store = SQLiteStore(tmp_path / "state.db", synchronous="normal")
    await store.open()
    cluster = Cluster(store, ClusterState())
    try:
        yield NodeMonitor(cluster, Evaluator(cluster))
    finally:
        await store.close()


async def test_a_pending_and_a_running_report_in_one_batch_are_one_write(
        monitor: NodeMonitor) -> None:
    cluster = monitor.cluster
    await cluster.write(Changes(put_allocs=[placed()]))
    before = cluster.alloc_writes
    seen = []
    cluster.listeners.append(lambda ch: seen.extend(kinds(ch.events)))
    pending = node_pb2.Allocation(id="a1", client_status=PENDING, deployment_health=H_PENDING)
    pending.tasks["server"].CopyFrom(node_pb2.TaskState(state="pending"))
    # both arrive before the batch is committed: the newest wins
    await asyncio.gather(monitor.report("n1", [pending]),
                         monitor.report("n1", [running(health=HEALTHY)]))
    assert cluster.alloc_writes - before == 1
    assert monitor.report_batches == 1
    a = cluster.state.allocs["a1"]
    assert (a.client_status, a.healthy) == (RUNNING, True)
    assert seen == ["AllocationRunning", "AllocationHealthy"]


async def test_a_report_from_another_node_is_ignored(monitor: NodeMonitor) -> None:
    cluster = monitor.cluster
    await cluster.write(Changes(put_allocs=[placed(node_id="n1")]))
    before = cluster.alloc_writes
    await monitor.report("n2", [running(health=HEALTHY)])
    assert cluster.alloc_writes == before
    assert cluster.state.allocs["a1"].client_status == PENDING
