"""Explanations in counts per reason, and the plan diff people read before running a job."""

import dataclasses
import json

from controller.scheduler import ClusterSnapshot, NodeMetrics, diff_groups, render_plan
from orch.jobspec.model import Constraint, Port, Service
from tests.unit.scheduler.factories import alloc, group, job, node, run, settle

GPU = Constraint(attribute="${node.class}", value="gpu")


def gpu_cluster() -> ClusterSnapshot:
    """12 plain nodes, 3 gpu nodes with little memory left, 1 gpu node with CPU for 3."""
    nodes = [node(i) for i in range(12)]
    nodes += [node(i, node_class="gpu") for i in range(12, 16)]
    snap = ClusterSnapshot(nodes)
    for i in range(12, 15):
        snap.upsert_alloc(alloc(f"big{i}", f"n{i}", job_name="other", cpu=100, mem=4000))
    snap.upsert_alloc(alloc("cpu", "n15", job_name="other", cpu=2500, mem=100))
    return snap


def test_the_issue_example() -> None:
    plan = run(job(group("train", count=4, cpu=500, mem=512, constraints=[GPU])), gpu_cluster())
    assert len(plan.placements) == 3
    assert plan.explain() == [
        'group "train": 3 of 4 allocations placed; 1 unplaced: 12 nodes filtered by constraint '
        '${node.class} = gpu, 3 exhausted memory, 1 exhausted cpu']
    g = plan.groups["train"]
    assert g.failure == NodeMetrics(
        evaluated=16, filtered={"constraint ${node.class} = gpu": 12},
        exhausted={"memory": 3, "cpu": 1})


def test_every_reason_kind_is_counted_once_per_node() -> None:
    snap = ClusterSnapshot([node(1, status="down"), node(2, eligible=False),
                            node(3, drivers=frozenset({"process"})), node(4, memory_mb=10),
                            node(5, datacenter="dc9")])
    plan = run(job(group(count=1), datacenters=("dc1",)), snap)
    assert plan.explain() == [
        'group "web": 0 of 1 allocations placed; 1 unplaced: 1 node filtered by datacenter '
        '(not in dc1), 1 node filtered by missing driver docker, 1 exhausted memory, '
        '1 node down, 1 node ineligible']


def test_empty_cluster() -> None:
    plan = run(job(group(count=2)), ClusterSnapshot())
    assert plan.explain() == ['group "web": 0 of 2 allocations placed; 2 unplaced: no nodes']


def test_json_form_carries_the_reasons() -> None:
    plan = run(job(group("train", count=4, constraints=[GPU])), gpu_cluster())
    data = json.loads(json.dumps(plan.to_dict()))
    (g,) = data["groups"]
    assert g["unplaced"] == 1
    assert g["failure"]["filtered"] == {"constraint ${node.class} = gpu": 12}
    assert len(data["placements"]) == 3
    assert data["placements"][0]["name"] == "app.train[0]"


def test_field_diff_names_paths_and_effects() -> None:
    old = group(count=2, ports=[Port(label="http")])
    new = dataclasses.replace(
        old, count=3, services=(Service(name="web", port="http", tags=("v2",)),),
        tasks=(dataclasses.replace(old.tasks[0], image="app:2", env={"A": "1"}),),
        network=dataclasses.replace(old.network, ports=(Port(label="http", to=8080),)))
    assert [c.render() for c in diff_groups(old, new)] == [
        "count: 2 => 3",
        'tasks[main].image: "app:1" => "app:2"  (forces replacement)',
        '+ tasks[main].env.A: "1"  (forces replacement)',
        "network.ports[http].to: 0 => 8080  (forces replacement)",
        "+ services[web]: Service 'web'",
    ]
    assert diff_groups(old, old) == []


def test_render_plan_for_orchctl() -> None:
    snap = ClusterSnapshot([node(i) for i in range(3)])
    j = job(group(count=3, cpu=100, mem=64))
    run(j, snap, apply=True, seed=3)
    settle(snap)
    g = j.groups[0]
    newer = dataclasses.replace(j, version=2, groups=(dataclasses.replace(
        g, count=2, tasks=(dataclasses.replace(g.tasks[0], image="app:2"),)),))
    plan = run(newer, snap, seed=4)
    text = render_plan(plan)
    replaced = plan.placements[0]
    stopped = next(s for s in plan.stops if s.reason == "count reduced")
    assert text == "\n".join([
        'Job "app" (service, version 2)',
        "",
        '+/- group "web" (1 to replace, 1 to stop)',
        "      count: 3 => 2",
        '      tasks[main].image: "app:1" => "app:2"  (forces replacement)',
        "",
        "Allocations:",
        f"  replace  app.web[0]                   {replaced.node_name} => {replaced.node_name}"
        "   replacement",
        f"  stop     app.web[2]                   on {stopped.node_name}   count reduced",
        "",
        "Scheduler dry-run:",
        "- All allocations placed.",
        "- 1 allocation waits for the rolling update (max_parallel).",
    ])


def test_render_shows_failures_and_truncates_long_lists() -> None:
    snap = ClusterSnapshot([node(i) for i in range(30)])
    plan = run(job(group(count=40, cpu=100, mem=64, constraints=[GPU])), snap)
    text = render_plan(plan)
    assert '+   group "web" (40 to place)' in text
    assert "- All allocations placed." not in text
    assert ('- group "web": 0 of 40 allocations placed; 40 unplaced: 30 nodes filtered by '
            'constraint ${node.class} = gpu') in text
    plan = run(job(group(count=25, cpu=100, mem=64)), snap)
    text = render_plan(plan, max_rows=10)
    assert text.count("  create   ") == 10
    assert "  ... and 15 more" in text
