"""Each feasibility filter keeps the allocation off the nodes it should, and says so."""

import dataclasses

import pytest

from controller.scheduler import ClusterSnapshot, SchedulerConfig
from orch.jobspec.model import Constraint, Port
from tests.unit.scheduler.factories import alloc, group, info, job, node, placed_on, run


def only(plan_nodes: list[str]) -> set[str]:
    return set(plan_nodes)


@pytest.mark.parametrize(("kw", "reason"), [
    ({"status": "down"}, "down"), ({"status": "init"}, "initializing"),
    ({"eligible": False}, "ineligible"), ({"draining": True}, "draining"),
])
def test_unavailable_nodes_take_nothing(kw: dict[str, object], reason: str) -> None:
    snap = ClusterSnapshot([node(1, **kw), node(2)])
    plan = run(job(group(count=3)), snap)
    assert only(placed_on(plan)) == {"n2"}
    alone = run(job(group(count=1)), ClusterSnapshot([node(1, **kw)]))
    assert alone.groups["web"].explain() == (
        f'group "web": 0 of 1 allocations placed; 1 unplaced: 1 node {reason}')


def test_missing_driver_filters() -> None:
    snap = ClusterSnapshot([node(1, drivers=frozenset({"process"})), node(2)])
    plan = run(job(group(count=2)), snap)
    assert only(placed_on(plan)) == {"n2"}
    plan = run(job(group(count=1)), ClusterSnapshot([node(1, drivers=frozenset({"process"}))]))
    assert "1 node filtered by missing driver docker" in plan.explain()[0]


def test_datacenters_with_globs_and_region() -> None:
    snap = ClusterSnapshot([node(1, datacenter="eu-west"), node(2, datacenter="us-east"),
                            node(3, datacenter="eu-north", region="other")])
    plan = run(job(group(count=4), datacenters=("eu-*",)), snap)
    assert only(placed_on(plan)) == {"n1", "n3"}
    plan = run(job(group(count=4), datacenters=("eu-*",), region="global"), snap)
    assert only(placed_on(plan)) == {"n1"}


def test_constraints_on_attributes_meta_and_class() -> None:
    snap = ClusterSnapshot([
        node(1, node_class="gpu", meta={"rack": "r1"}, attributes={"kernel.version": "5.15.0"}),
        node(2, node_class="gpu", meta={"rack": "r2"}, attributes={"kernel.version": "4.19"}),
        node(3, meta={"rack": "r1"}, attributes={"kernel.version": "6.1"}),
    ])
    cons = [Constraint(attribute="${node.class}", value="gpu"),
            Constraint(attribute="${attr.kernel.version}", operator=">=", value="5.4")]
    plan = run(job(group(count=3, constraints=cons)), snap)
    assert only(placed_on(plan)) == {"n1"}
    cons = [Constraint(attribute="${meta.rack}", operator="regexp", value="^r[12]$"),
            Constraint(attribute="${node.class}", operator="!=", value="gpu")]
    assert only(placed_on(run(job(group(count=2, constraints=cons)), snap))) == {"n3"}


def test_constraints_on_unique_targets_are_checked_per_node() -> None:
    snap = ClusterSnapshot([node(i) for i in range(6)])
    cons = [Constraint(attribute="${node.unique.name}", operator="set_contains_any",
                       value="n2,n4")]
    plan = run(job(group(count=4, constraints=cons)), snap)
    assert only(placed_on(plan)) == {"n2", "n4"}


def test_job_level_constraints_apply_to_every_group() -> None:
    snap = ClusterSnapshot([node(1, node_class="a"), node(2, node_class="b")])
    j = job(group("x", count=2), group("y", count=2),
            constraints=(Constraint(attribute="${node.class}", value="b"),))
    assert only(placed_on(run(j, snap))) == {"n2"}


def test_distinct_hosts_per_group_and_per_job() -> None:
    snap = ClusterSnapshot([node(i) for i in range(3)])
    dh = Constraint(operator="distinct_hosts")
    plan = run(job(group(count=4, constraints=[dh])), snap)
    assert len(plan.placements) == 3
    assert len(set(placed_on(plan))) == 3
    assert plan.groups["web"].explain() == (
        'group "web": 3 of 4 allocations placed; 1 unplaced: 3 nodes filtered by distinct_hosts')
    j = job(group("a", count=2), group("b", count=2), constraints=(dh,))
    plan = run(j, snap)
    assert len(plan.placements) == 3
    assert len(set(placed_on(plan))) == 3


def test_distinct_property_limits_allocations_per_value() -> None:
    snap = ClusterSnapshot([node(i, meta={"rack": f"r{i % 2}"}) for i in range(6)])
    dp = Constraint(attribute="${meta.rack}", operator="distinct_property", value="2")
    plan = run(job(group(count=5, constraints=[dp])), snap)
    assert len(plan.placements) == 4
    racks = [info(snap, n).meta["rack"] for n in placed_on(plan)]
    assert sorted(racks) == ["r0", "r0", "r1", "r1"]
    assert "filtered by distinct_property ${meta.rack} = 2" in plan.explain()[0]


def test_distinct_property_counts_what_already_runs() -> None:
    snap = ClusterSnapshot([node(i, meta={"rack": f"r{i % 2}"}) for i in range(4)])
    snap.upsert_alloc(alloc("old", "n0", index=0))
    dp = Constraint(attribute="${meta.rack}", operator="distinct_property")
    plan = run(job(group(count=3, constraints=[dp])), snap)
    racks = [info(snap, n).meta["rack"] for n in placed_on(plan)]
    assert racks == ["r1"]  # index 0 runs on r0 already; only one more rack exists


def test_cpu_and_memory_are_never_overcommitted() -> None:
    snap = ClusterSnapshot([node(1, cpu_millicores=1000, memory_mb=1000)])
    snap.upsert_alloc(alloc("x", "n1", job_name="other", cpu=600, mem=100))
    plan = run(job(group(count=3, cpu=200, mem=100)), snap)
    assert len(plan.placements) == 2
    assert plan.groups["web"].explain() == (
        'group "web": 2 of 3 allocations placed; 1 unplaced: 1 exhausted cpu')
    plan = run(job(group(count=2, cpu=10, mem=600)), snap)
    assert len(plan.placements) == 1
    assert plan.explain()[0].endswith("1 exhausted memory")


def test_static_ports_collide_with_used_and_reserved_ports() -> None:
    snap = ClusterSnapshot([node(1, reserved_ports=frozenset({80})), node(2), node(3)])
    snap.upsert_alloc(alloc("x", "n2", job_name="other", ports={"http": 80}))
    plan = run(job(group(count=2, ports=[Port(label="http", static=80)])), snap)
    assert placed_on(plan) == ["n3"]
    assert plan.placements[0].ports == {"http": 80}
    assert plan.explain()[0].endswith("1 unplaced: 3 exhausted port 80")


def test_dynamic_port_range_can_run_out() -> None:
    cfg = SchedulerConfig(dynamic_port_min=30000, dynamic_port_max=30002)
    snap = ClusterSnapshot([node(1, reserved_ports=frozenset({30001}))])
    plan = run(job(group(count=3, ports=[Port(label="http")])), snap, config=cfg)
    assert sorted(p.ports["http"] for p in plan.placements) == [30000, 30002]
    assert plan.explain()[0].endswith("1 exhausted dynamic ports")


def test_feasibility_answers_are_shared_by_a_class_and_reused_across_calls() -> None:
    snap = ClusterSnapshot([node(i, node_class="gpu" if i < 5 else "") for i in range(20)])
    assert len({n.cls.id for n in snap.order}) == 2
    cons = [Constraint(attribute="${node.class}", value="gpu")]
    run(job(group(count=1, constraints=cons)), snap)
    memo = snap.memo(("class-filter", ((), "", ("docker",), False, False, (),
                                       (("${node.class}", "=", "gpu"),))))
    assert sorted(memo.values(), key=str) == [None, "constraint ${node.class} = gpu"]


def test_privileged_and_host_network_go_only_where_allowed() -> None:
    allows = {"orch.privileged": "true", "orch.host_network": "true"}
    refuses = {"orch.privileged": "false", "orch.host_network": "false"}
    snap = ClusterSnapshot([node(1, attributes=refuses), node(2, attributes=allows), node(3)])
    priv = group(count=1)
    priv = dataclasses.replace(priv, tasks=tuple(dataclasses.replace(t, privileged=True)
                                                 for t in priv.tasks))
    plan = run(job(priv), snap)
    assert placed_on(plan) == ["n2"]  # a node that says nothing does not allow it either
    host = group(count=3, max_parallel=0)
    host = dataclasses.replace(host, network=dataclasses.replace(host.network, mode="host"))
    plan = run(job(host), snap)
    assert sorted(set(placed_on(plan))) == ["n2", "n3"]  # allowed unless refused
