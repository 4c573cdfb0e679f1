"""Garbage collection on a fake clock against a real SQLite store: what goes, what stays, and
that memory and the store agree afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.cluster import Cluster
from controller.gc import GarbageCollector, GcPolicy, batches, find_garbage
from controller.state import ClusterState
from controller.store import SQLiteStore
from controller.store.base import Changes
from controller.usage import UsageTable
from orch.errors import StoreError
from orch.v1 import controller_pb2, job_pb2, node_pb2

NS = 1_000_000_000
HOUR = 3600.0
RUN, STOP = node_pb2.DESIRED_STATUS_RUN, node_pb2.DESIRED_STATUS_STOP
RUNNING, COMPLETE, FAILED, LOST = (node_pb2.CLIENT_STATUS_RUNNING, node_pb2.CLIENT_STATUS_COMPLETE,
                                   node_pb2.CLIENT_STATUS_FAILED, node_pb2.CLIENT_STATUS_LOST)


@dataclass
class Clock:
    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    @property
    def ns(self) -> int:
        return int(self.now * NS)


@dataclass
class World:
    cluster: Cluster
    gc: GarbageCollector
    usage: UsageTable
    clock: Clock

    @property
    def state(self) -> ClusterState:
        return self.cluster.state

    async def put(self, **changes: object) -> None:
        await self.cluster.write(Changes(**changes))  # type: ignore[arg-type]

    async def agree(self) -> None:
        """The store holds exactly what memory holds."""
        snap = await self.cluster.store.load()
        assert set(snap.allocs) == set(self.state.allocs)
        assert set(snap.nodes) == set(self.state.nodes)
        assert set(snap.deployments) == set(self.state.deployments)
        assert {k: [v.version for v in vs] for k, vs in snap.jobs.items()} == \
            {k: [v.version for v in vs] for k, vs in self.state.jobs.items()}
        assert [e.id for e in snap.evaluations] == [e.id for e in self.state.evaluations]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    store = SQLiteStore(tmp_path / "state.db", synchronous="normal")
    await store.open()
    clock = Clock()
    cluster = Cluster(store, ClusterState())
    usage = UsageTable()
    gc = GarbageCollector(cluster, usage, GcPolicy(batch=50), clock=clock)
    try:
        yield World(cluster, gc, usage, clock)
    finally:
        await store.close()


def job(name: str, version: int, t: Clock, *, stop: bool = False, stable: bool = False,
        type_: job_pb2.JobType.ValueType = job_pb2.JOB_TYPE_SERVICE) -> job_pb2.Job:
    return job_pb2.Job(name=name, namespace="default", version=version, stop=stop, stable=stable,
                       type=type_, submit_time_ns=t.ns,
                       groups=[job_pb2.TaskGroup(name="g", count=1)])


def alloc(aid: str, job_name: str, t: Clock, *, desired: node_pb2.DesiredStatus.ValueType = STOP,
          client: node_pb2.ClientStatus.ValueType = COMPLETE,
          node: str = "n1", version: int = 1) -> node_pb2.Allocation:
    return node_pb2.Allocation(id=aid, name=f"{job_name}.g[0]", namespace="default",
                               job=job_name, job_version=version, group="g", node_id=node,
                               desired_status=desired, client_status=client,
                               create_time_ns=t.ns, modify_time_ns=t.ns, client_since_ns=t.ns)


def node(nid: str, t: Clock,
         status: node_pb2.NodeStatus.ValueType = node_pb2.NODE_STATUS_READY) -> node_pb2.Node:
    return node_pb2.Node(id=nid, name=nid, status=status, status_time_ns=t.ns)


async def test_only_the_latest_versions_and_the_stable_one_are_kept(world: World) -> None:
    t = world.clock
    await world.put(put_jobs=[job("web", v, t, stable=v == 3) for v in range(1, 21)])
    await world.gc.collect()
    assert [v.version for v in world.state.jobs[("default", "web")]] == [3, 15, 16, 17, 18, 19, 20]
    await world.put(put_jobs=[job("web", 21, t, stable=True)])
    await world.gc.collect()  # a newer stable version: the old one may go
    assert [v.version for v in world.state.jobs[("default", "web")]] == [16, 17, 18, 19, 20, 21]
    await world.agree()


async def test_allocations_that_stopped_for_good_go_after_the_threshold(world: World) -> None:
    t = world.clock
    await world.put(put_nodes=[node("n1", t)], put_jobs=[job("web", 1, t)],
                    put_allocs=[alloc("done", "web", t),
                                alloc("stopping", "web", t, client=RUNNING),
                                alloc("running", "web", t, desired=RUN, client=RUNNING),
                                alloc("failed-held", "web", t, desired=RUN, client=FAILED),
                                alloc("lost", "web", t, client=LOST)])
    world.usage.report("n1", controller_pb2.UsageReport(time_ns=t.ns, allocations=[
        controller_pb2.AllocUsage(alloc_id="done", cpu_seconds=1.0)]))
    t.now += HOUR - 1
    assert (await world.gc.collect()).collected["allocations"] == 0
    t.now += 2
    await world.gc.collect()
    # what the scheduler still reads stays: what runs, what was asked to stop and still runs,
    # a failure without a reschedule left of a live job
    assert set(world.state.allocs) == {"stopping", "running", "failed-held"}
    assert len(world.usage) == 0
    await world.agree()


async def test_a_dead_job_goes_with_everything_it_owns_after_four_hours(world: World) -> None:
    t = world.clock
    dep = controller_pb2.Deployment(id="d1", job="old", namespace="default", job_version=1,
                                    status="successful", create_time_ns=t.ns, modify_time_ns=t.ns)
    ev = controller_pb2.Evaluation(id="e1", job="old", namespace="default", create_time_ns=t.ns)
    await world.put(put_nodes=[node("n1", t)],
                    put_jobs=[job("old", 1, t), job("old", 2, t, stop=True),
                              job("batch", 1, t, type_=job_pb2.JOB_TYPE_BATCH),
                              job("live", 1, t)],
                    put_allocs=[alloc("o1", "old", t), alloc("b1", "batch", t, desired=RUN),
                                alloc("l1", "live", t, desired=RUN, client=RUNNING)],
                    put_deployments=[dep], put_evaluations=[ev])
    t.now += 4 * HOUR - 10
    await world.gc.collect()
    assert set(world.state.jobs) == {("default", "old"), ("default", "batch"), ("default", "live")}
    t.now += 20
    report = await world.gc.collect()
    assert report.collected["jobs"] == 2
    assert set(world.state.jobs) == {("default", "live")}  # the stopped job, the finished batch
    assert set(world.state.allocs) == {"l1"}
    assert not world.state.deployments
    assert not list(world.state.evaluations)
    assert "JobGarbageCollected" in [e.type for e in world.cluster.events.recent]
    await world.agree()


async def test_a_stopped_job_still_running_somewhere_is_not_collected(world: World) -> None:
    t = world.clock
    await world.put(put_nodes=[node("n1", t)], put_jobs=[job("web", 1, t, stop=True)],
                    put_allocs=[alloc("a1", "web", t, desired=STOP, client=RUNNING)])
    t.now += 10 * HOUR
    await world.gc.collect()
    assert ("default", "web") in world.state.jobs
    assert "a1" in world.state.allocs
    # its node goes down: no agent will say it stopped, so it counts as finished
    await world.put(put_nodes=[node("n1", t, node_pb2.NODE_STATUS_DOWN)])
    t.now += 4 * HOUR
    await world.gc.collect()
    assert ("default", "web") not in world.state.jobs
    assert not world.state.allocs


async def test_deployments_and_evaluations_keep_each_jobs_latest(world: World) -> None:
    t = world.clock
    deps, evals = [], []
    for i in range(5):
        t.now += 1
        deps.append(controller_pb2.Deployment(
            id=f"d{i}", job="web", namespace="default", job_version=i + 1,
            status="running" if i == 4 else "successful", create_time_ns=t.ns,
            modify_time_ns=t.ns))
        evals.append(controller_pb2.Evaluation(id=f"e{i}", job="web", namespace="default",
                                               create_time_ns=t.ns))
    deps.append(controller_pb2.Deployment(id="x", job="api", namespace="default",
                                          status="failed", create_time_ns=t.ns,
                                          modify_time_ns=t.ns))
    await world.put(put_jobs=[job("web", 5, t), job("api", 1, t)], put_deployments=deps,
                    put_evaluations=evals)
    t.now += HOUR + 10
    await world.gc.collect()
    assert set(world.state.deployments) == {"d4", "x"}  # web's running one; api's latest
    assert [e.id for e in world.state.evaluations] == ["e4"]
    await world.agree()


async def test_collection_commits_in_small_batches_and_lets_others_write_between(
        world: World) -> None:
    t = world.clock
    await world.put(put_nodes=[node("n1", t)], put_jobs=[job("web", 1, t)],
                    put_allocs=[alloc(f"a{i:04d}", "web", t) for i in range(420)])
    t.now += 2 * HOUR
    commits: list[int] = []
    world.cluster.listeners.append(lambda c: commits.append(len(c.delete_allocs)))
    writes_between = 0

    async def writer() -> None:
        nonlocal writes_between
        while world.state.allocs:
            await world.put(meta={"tick": str(writes_between)})
            writes_between += 1
            await asyncio.sleep(0)
    other = asyncio.create_task(writer())
    report = await world.gc.collect()
    await other
    assert report.collected["allocations"] == 420
    assert max(commits) <= 50
    assert report.commits == 9
    assert writes_between >= 5  # the lock was free between batches
    await world.agree()


def test_batches_hold_whole_units_within_the_size() -> None:
    from controller.gc import Unit
    units = [Unit("allocations", str(i)) for i in range(7)] + [Unit("jobs", "big", 30)] + \
        [Unit("allocations", "z")]
    got = [[u.key for u in b] for b in batches(units, 5)]
    assert got == [["0", "1", "2", "3", "4"], ["5", "6"], ["big"], ["z"]]


def test_nothing_is_garbage_in_a_fresh_cluster() -> None:
    state = ClusterState()
    t = Clock()
    state.apply(Changes(put_nodes=[node("n1", t)], put_jobs=[job("web", 1, t)],
                        put_allocs=[alloc("a", "web", t, desired=RUN, client=RUNNING)]), 1)
    assert find_garbage(state, t.ns + int(100 * HOUR * NS), GcPolicy()).units == []


async def test_a_batch_job_whose_failure_will_be_retried_is_not_dead(world: World) -> None:
    t = world.clock
    await world.put(put_nodes=[node("n1", t)],
                    put_jobs=[job("retry", 1, t, type_=job_pb2.JOB_TYPE_BATCH)],
                    put_allocs=[alloc("f1", "retry", t, desired=RUN, client=FAILED)])
    t.now += 10 * HOUR
    await world.gc.collect(force=True)
    assert ("default", "retry") in world.state.jobs  # batch: one more try is allowed
    spent = alloc("f1", "retry", t, desired=RUN, client=FAILED)
    spent.reschedule_attempts = 1
    await world.put(put_allocs=[spent])
    await world.gc.collect(force=True)
    assert ("default", "retry") not in world.state.jobs


async def test_the_store_is_defragmented_once_a_day_after_a_collection(world: World) -> None:
    """Months of churn scatter the store's pages and slow its commits: a collection rewrites
    it in order once ``defrag_interval`` (a day) has passed, and says so in its metrics."""
    t = world.clock
    await world.put(put_nodes=[node("n1", t)], put_jobs=[job("web", 1, t)],
                    put_allocs=[alloc(f"a{i:04d}", "web", t) for i in range(300)])
    t.now += 2 * HOUR
    await world.gc.collect()
    assert world.gc.defragmented == 0  # not yet a day since this controller started
    t.now += 23 * HOUR
    await world.gc.collect()
    assert world.gc.defragmented == 1
    assert (await world.cluster.store.pragmas())["freelist_count"] == 0  # type: ignore[attr-defined]
    await world.gc.collect()
    assert world.gc.defragmented == 1  # the next one a day later
    await world.agree()


async def test_a_defrag_interval_of_zero_never_defragments(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "state.db", synchronous="normal")
    await store.open()
    clock = Clock()
    try:
        gc = GarbageCollector(Cluster(store, ClusterState()), UsageTable(),
                              GcPolicy(defrag_interval=0.0), clock=clock)
        clock.now += 400 * 24 * HOUR
        await gc.collect()
        assert gc.defragmented == 0
    finally:
        await store.close()


class _FullDisk(SQLiteStore):
    """A store whose rewrite fails, as on a full disk (VACUUM needs room for a copy)."""

    async def defragment(self) -> bool:
        raise StoreError("database or disk is full")


async def test_a_failed_defragmentation_leaves_the_collection_done(tmp_path: Path) -> None:
    store = _FullDisk(tmp_path / "state.db", synchronous="normal")
    await store.open()
    clock = Clock()
    try:
        gc = GarbageCollector(Cluster(store, ClusterState()), UsageTable(), GcPolicy(),
                              clock=clock)
        clock.now += 25 * HOUR
        await gc.collect()
        assert (gc.runs, gc.defragmented) == (1, 0)
    finally:
        await store.close()
