"""Periodic launches, dispatches and children on the controller's write path (a SQLite store,
a clock the test moves): launched once per slot and recorded in the same commit, so a new
leader reading the store neither repeats a slot nor misses the latest; overlap skipped;
finished children bounded; a purged parent takes its children; bad dispatches change
nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller import children
from controller.cluster import Cluster
from controller.evaluator import Evaluator
from controller.jobs import Jobs
from controller.periodic import Launcher
from controller.state import COMPLETE, ClusterState
from controller.store.base import Changes
from controller.store.sqlite import SQLiteStore
from orch.errors import NotFoundError, RequestError
from orch.jobspec import parse_job
from orch.jobspec.periodic import child_slot
from orch.v1 import job_pb2, node_pb2

T0 = 1_714_528_800  # 2024-05-01 02:00:00 UTC: a slot of every 10 s, minute and hour

PERIODIC = """
name: report
type: batch
periodic: {{cron: "{cron}", prohibit_overlap: {overlap}}}
groups:
  - name: g
    tasks: [{{name: t, driver: process, command: /bin/true}}]
"""
PARAMETERIZED = """
name: conv
type: batch
parameterized: {meta_required: [input], meta_optional: [mode], payload: required}
groups:
  - name: g
    tasks: [{name: t, driver: process, command: /bin/true}]
"""


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Leader:
    """One term of a leader: the parts that write, over the shared store."""

    cluster: Cluster
    jobs: Jobs
    launcher: Launcher
    evaluator: Evaluator

    @property
    def state(self) -> ClusterState:
        return self.cluster.state

    def kids(self, name: str = "report") -> list[str]:
        return [c.name for c in children.children_of(self.state, ("default", name))]


@asynccontextmanager
async def term(path: Path, clock: Clock) -> AsyncIterator[Leader]:
    store = SQLiteStore(path / "controller.db")
    await store.open()
    cluster = Cluster(store, ClusterState.from_store(await store.load()))
    evaluator = Evaluator(cluster, clock=clock)
    evaluator.start()
    try:
        yield Leader(cluster, Jobs(cluster, evaluator, clock=clock),
                     Launcher(cluster, evaluator, clock=clock), evaluator)
    finally:
        await evaluator.stop()
        await store.close()


def periodic(cron: str = "*/10 * * * * *", overlap: bool = False) -> job_pb2.Job:
    return parse_job(PERIODIC.format(cron=cron, overlap=str(overlap).lower()))


async def finish(leader: Leader, child: str) -> None:
    """The child's one allocation, complete (as an agent would report it)."""
    await leader.cluster.write(Changes(put_allocs=[node_pb2.Allocation(
        id=f"a-{child}", name=f"{child}.g[0]", namespace="default", job=child, job_version=1,
        group="g", node_id="n1", desired_status=node_pb2.DESIRED_STATUS_RUN,
        client_status=COMPLETE)]))


async def test_a_slot_is_launched_once_when_due_and_recorded_with_its_child(tmp_path: Path) -> None:
    clock = Clock(T0 + 3)
    async with term(tmp_path, clock) as leader:
        await leader.jobs.register(periodic())
        await leader.launcher.tick(T0 + 5)
        assert leader.kids() == []  # the slot before the registration is not launched
        await leader.launcher.tick(T0 + 10)
        assert leader.kids() == [f"report/periodic-{T0 + 10}"]
        assert leader.state.meta["periodic/default/report"] == str(T0 + 10)
        await leader.launcher.tick(T0 + 12)
        assert len(leader.kids()) == 1  # nothing new is due
        child = leader.state.job(("default", f"report/periodic-{T0 + 10}"))
        assert child is not None
        assert child.parent == "report"
        assert not child.HasField("periodic")
        assert leader.launcher.next_launch(leader.state.job(("default", "report")) or
                                           job_pb2.Job(), T0 + 12) == T0 + 20


async def test_a_new_leader_launches_the_latest_missed_slot_once_and_none_twice(
        tmp_path: Path) -> None:
    clock = Clock(T0 + 1)
    async with term(tmp_path, clock) as old:
        await old.jobs.register(periodic())
        await old.launcher.tick(T0 + 10)
        await old.launcher.tick(T0 + 20)
    # no leader from T0 + 20 to T0 + 47: slots T0 + 30 and T0 + 40 pass unseen
    async with term(tmp_path, clock) as new:
        await new.launcher.tick(T0 + 20.5)  # what the old one launched is not launched again
        assert [child_slot(n) for n in new.kids()] == [T0 + 10, T0 + 20]
        await new.launcher.tick(T0 + 47)
        await new.launcher.tick(T0 + 48)
        assert [child_slot(n) for n in new.kids()] == [T0 + 10, T0 + 20, T0 + 40]
        await new.launcher.tick(T0 + 50)
        assert child_slot(new.kids()[-1]) == T0 + 50


async def test_prohibit_overlap_skips_a_slot_while_a_child_runs(tmp_path: Path) -> None:
    clock = Clock(T0 + 1)
    async with term(tmp_path, clock) as leader:
        await leader.jobs.register(periodic(overlap=True))
        await leader.launcher.tick(T0 + 10)
        await leader.launcher.tick(T0 + 20)  # the first has not finished: skipped
        assert len(leader.kids()) == 1
        assert leader.state.meta["periodic/default/report"] == str(T0 + 20)
        skipped = [e for e in leader.cluster.events.recent if e.type == "PeriodicSkipped"]
        assert len(skipped) == 1
        assert "prohibit_overlap" in skipped[0].message
        await finish(leader, leader.kids()[0])
        await leader.launcher.tick(T0 + 25)
        assert len(leader.kids()) == 1  # the skipped slot is not launched late
        await leader.launcher.tick(T0 + 30)
        assert [child_slot(n) for n in leader.kids()] == [T0 + 10, T0 + 30]


async def test_finished_children_past_the_kept_number_are_purged_with_their_allocations(
        tmp_path: Path) -> None:
    clock = Clock(T0 + 1)
    async with term(tmp_path, clock) as leader:
        await leader.jobs.register(periodic())
        for i in range(1, children.KEEP_DEAD_CHILDREN + 4):
            await leader.launcher.tick(T0 + 10 * i)
            await finish(leader, leader.kids()[-1])
        await leader.launcher.tick(T0 + 10 * (children.KEEP_DEAD_CHILDREN + 3) + 1)
        kids = leader.kids()
        assert len(kids) == children.KEEP_DEAD_CHILDREN
        assert child_slot(kids[0]) == T0 + 40  # the three oldest went
        assert "a-report/periodic-" + str(T0 + 10) not in leader.state.allocs


async def test_stopping_a_parent_stops_launching_and_purging_it_takes_its_children(
        tmp_path: Path) -> None:
    clock = Clock(T0 + 1)
    async with term(tmp_path, clock) as leader:
        await leader.jobs.register(periodic())
        await leader.launcher.tick(T0 + 10)
        await leader.jobs.stop(("default", "report"), purge=False)
        await leader.launcher.tick(T0 + 20)
        assert len(leader.kids()) == 1
        await leader.jobs.stop(("default", "report"), purge=True)
        assert leader.state.jobs == {}
        assert "periodic/default/report" not in leader.state.meta
        # run again: slots from its new registration on, none of those it missed meanwhile
        clock.now = T0 + 61
        await leader.jobs.register(periodic())
        await leader.launcher.tick(T0 + 65)
        assert leader.kids() == []


async def test_dispatch_makes_a_child_with_the_inputs(tmp_path: Path) -> None:
    clock = Clock(T0)
    async with term(tmp_path, clock) as leader:
        await leader.jobs.register(parse_job(PARAMETERIZED))
        child, _ = await leader.jobs.dispatch(("default", "conv"), {"input": "a.csv"}, b"data")
        assert child.name.startswith(f"conv/dispatch-{T0}-")
        assert child.meta["input"] == "a.csv"
        assert child.payload == b"data"
        assert child.parent == "conv"
        assert not child.HasField("parameterized")
        assert leader.kids("conv") == [child.name]


@pytest.mark.parametrize(("name", "meta", "payload", "says"), [
    ("conv", {}, b"x", "missing required meta 'input'"),
    ("conv", {"input": "a", "colour": "red"}, b"x", "neither required nor optional"),
    ("conv", {"input": "a"}, b"", "requires a payload"),
    ("report", {}, b"", "is not parameterized"),
])
async def test_a_bad_dispatch_says_why_and_changes_nothing(tmp_path: Path, name: str,
                                                           meta: dict[str, str], payload: bytes,
                                                           says: str) -> None:
    clock = Clock(T0)
    async with term(tmp_path, clock) as leader:
        await leader.jobs.register(parse_job(PARAMETERIZED))
        await leader.jobs.register(periodic())
        before = leader.state.index
        with pytest.raises(RequestError, match=says):
            await leader.jobs.dispatch(("default", name), meta, payload)
        with pytest.raises(NotFoundError):
            await leader.jobs.dispatch(("default", "nope"), meta, payload)
        assert leader.state.index == before


async def test_force_launches_now_without_moving_the_schedule(tmp_path: Path) -> None:
    clock = Clock(T0 + 1)
    async with term(tmp_path, clock) as leader:
        await leader.jobs.register(periodic())
        clock.now = T0 + 3
        child = await leader.launcher.force(("default", "report"))
        assert child.name == f"report/periodic-{T0 + 3}"
        assert leader.state.meta["periodic/default/report"] == f"{T0 + 1:.3f}"
        await leader.jobs.register(parse_job(PARAMETERIZED))
        with pytest.raises(RequestError, match="not periodic"):
            await leader.launcher.force(("default", "conv"))


async def test_a_parent_is_never_placed(tmp_path: Path) -> None:
    clock = Clock(T0 + 1)
    async with term(tmp_path, clock) as leader:
        await leader.cluster.write(Changes(put_nodes=[node_pb2.Node(
            id="n1", name="n1", status=node_pb2.NODE_STATUS_READY, eligible=True,
            drivers=["process"], capacity=job_pb2.Resources(cpu_millicores=4000,
                                                            memory_mb=4096))]))
        _, _, ev = await leader.jobs.register(periodic())
        assert not ev.plan.changes
        assert not leader.state.allocs
        await leader.launcher.tick(T0 + 10)
        child = leader.kids()[0]
        ev = await leader.evaluator.evaluate_now(("default", child), "test")
        assert [c.kind for c in ev.plan.changes] == ["create"]
