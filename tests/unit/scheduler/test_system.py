"""System jobs: one allocation per group on every eligible node, kept that way."""

import dataclasses
from typing import Any

from controller.scheduler import ClusterSnapshot
from orch.jobspec.model import Constraint, Job, Port
from tests.unit.scheduler.factories import alloc, group, info, job, node, placed_on, run, settle


def system(**gkw: Any) -> Job:
    return job(group("agent", cpu=100, mem=64, **gkw), name="agent", type="system")


def test_one_allocation_on_every_eligible_node() -> None:
    snap = ClusterSnapshot([node(1), node(2), node(3, eligible=False), node(4, status="down"),
                            node(5, draining=True), node(6, drivers=frozenset({"process"})),
                            node(7, status="init")])
    plan = run(system(), snap)
    assert sorted(placed_on(plan)) == ["n1", "n2"]
    assert {p.index for p in plan.placements} == {0}
    assert plan.groups["agent"].explain() == 'group "agent": 2 to place'


def test_constraints_choose_the_nodes_and_stop_where_they_stop_matching() -> None:
    snap = ClusterSnapshot([node(1, node_class="edge"), node(2), node(3, node_class="edge")])
    j = system(constraints=[Constraint(attribute="${node.class}", value="edge")])
    run(j, snap, apply=True)
    settle(snap)
    assert sorted(a.node_id for a in snap.allocs.values()) == ["n1", "n3"]
    snap.upsert_node(dataclasses.replace(info(snap, "n3"), node_class="core"))
    plan = run(j, snap)
    assert [(s.node_id, s.reason) for s in plan.stops] == [
        ("n3", "node no longer matches the job's constraints")]
    assert not plan.placements


def test_new_nodes_get_one_and_settled_clusters_get_nothing() -> None:
    snap = ClusterSnapshot([node(1), node(2)])
    j = system()
    run(j, snap, apply=True)
    settle(snap)
    assert run(j, snap).is_noop
    snap.upsert_node(node(3))
    assert placed_on(run(j, snap)) == ["n3"]


def test_nodes_without_room_are_explained() -> None:
    snap = ClusterSnapshot([node(1), node(2, memory_mb=32),
                            node(3, reserved_ports=frozenset({9100}))])
    plan = run(system(ports=[Port(label="metrics", static=9100)]), snap)
    assert placed_on(plan) == ["n1"]
    assert plan.groups["agent"].explain() == (
        'group "agent": 1 of 3 allocations placed; 2 unplaced: 1 exhausted memory, '
        '1 exhausted port 9100')


def test_down_and_draining_nodes_lose_their_allocation() -> None:
    snap = ClusterSnapshot([node(1), node(2),
                            node(3, draining=True, drain_ignore_system_jobs=True)])
    for i in (1, 2, 3):
        snap.upsert_alloc(alloc(f"a{i}", f"n{i}", job_name="agent", grp="agent", cpu=100, mem=64))
    snap.upsert_node(dataclasses.replace(info(snap, "n1"), status="down"))
    snap.upsert_node(dataclasses.replace(info(snap, "n2"), draining=True))
    plan = run(system(), snap)
    assert sorted((s.node_id, s.reason, s.lost) for s in plan.stops) == [
        ("n1", "node down", True), ("n2", "node draining", False)]
    assert not plan.placements  # n3 drains but keeps its system allocation


def test_duplicates_on_a_node_are_stopped() -> None:
    snap = ClusterSnapshot([node(1)])
    snap.upsert_alloc(alloc("a", "n1", job_name="agent", grp="agent", job_version=1))
    snap.upsert_alloc(alloc("b", "n1", job_name="agent", grp="agent", job_version=1))
    plan = run(system(), snap)
    assert [s.reason for s in plan.stops] == ["duplicate index"]


def test_updates_roll_on_each_node_in_place() -> None:
    snap = ClusterSnapshot([node(i) for i in range(3)])
    j = system()
    run(j, snap, apply=True)
    settle(snap)
    g = j.groups[0]
    newer = dataclasses.replace(j, version=2, groups=(dataclasses.replace(
        g, tasks=(dataclasses.replace(g.tasks[0], image="agent:2"),)),))
    plan = run(newer, snap)
    assert len(plan.placements) == 1  # max_parallel 1
    assert plan.placements[0].node_id == plan.stops[0].node_id
    assert plan.groups["agent"].waiting == 2
