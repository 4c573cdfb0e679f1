"""Updates, stops, lost and failed allocations: what a plan does with what already runs."""

import dataclasses
from typing import Any

from controller.scheduler import ClusterSnapshot, SchedulerConfig
from controller.scheduler.reconcile import is_destructive, reschedule_delay
from orch.jobspec.model import Check, Constraint, Job, ReschedulePolicy, Resources, Service
from tests.unit.scheduler.factories import (
    alloc,
    group,
    info,
    job,
    node,
    placed_on,
    run,
    settle,
)


def deployed(count: int = 4, nodes: int = 4, **gkw: Any) -> tuple[ClusterSnapshot, Job]:
    snap = ClusterSnapshot([node(i) for i in range(nodes)])
    j = job(group(count=count, **gkw))
    run(j, snap, apply=True)
    settle(snap)
    return snap, j


def bump(j: Job, **gkw: Any) -> Job:
    g = dataclasses.replace(j.groups[0], **gkw)
    return dataclasses.replace(j, version=j.version + 1, groups=(g,))



def test_destructive_and_in_place_fields() -> None:
    g = group()
    assert not is_destructive(g, dataclasses.replace(g, count=9))
    assert not is_destructive(g, dataclasses.replace(g, services=(Service(name="s", port="p"),)))
    t = g.tasks[0]
    assert not is_destructive(g, dataclasses.replace(g, tasks=(dataclasses.replace(
        t, checks=(Check(type="tcp", port="p"),)),)))
    assert is_destructive(g, dataclasses.replace(g, tasks=(dataclasses.replace(
        t, image="app:2"),)))
    assert is_destructive(g, dataclasses.replace(g, tasks=(dataclasses.replace(
        t, env={"A": "1"}),)))
    assert is_destructive(None, g)


def test_nothing_to_do_when_everything_runs_the_current_version() -> None:
    snap, j = deployed()
    plan = run(j, snap)
    assert plan.is_noop
    assert plan.groups["web"].explain() == 'group "web": 4 unchanged'


def test_in_place_updates_happen_all_at_once() -> None:
    snap, j = deployed()
    j2 = bump(j, meta={"owner": "me"})
    plan = run(j2, snap)
    assert len(plan.updates) == 4
    assert not plan.placements
    assert not plan.stops
    assert {(u.from_version, u.to_version) for u in plan.updates} == {(1, 2)}


def test_destructive_updates_roll_max_parallel_at_a_time_on_the_same_node() -> None:
    snap, j = deployed(max_parallel=2)
    before = {a.index: a.node_id for a in snap.allocs.values()}
    j2 = bump(j, tasks=(dataclasses.replace(j.groups[0].tasks[0], image="app:2"),))
    plan = run(j2, snap, apply=True)
    assert [(p.index, p.reason) for p in plan.placements] == [(0, "replacement"),
                                                             (1, "replacement")]
    assert {p.index: p.node_id for p in plan.placements} == {0: before[0], 1: before[1]}
    assert sorted(s.name for s in plan.stops) == ["app.web[0]", "app.web[1]"]
    assert plan.groups["web"].waiting == 2
    # The new ones are not healthy yet: nothing more may be replaced.
    settle(snap, healthy=False)
    assert run(j2, snap).placements == []
    settle(snap)
    for a in list(snap.allocs.values()):
        if a.client == "running" and not a.healthy:
            snap.upsert_alloc(dataclasses.replace(a, healthy=True))
    plan = run(j2, snap)
    assert [p.index for p in plan.placements] == [2, 3]


def test_count_reduction_stops_the_highest_indexes_first() -> None:
    snap, j = deployed(count=5, nodes=5)
    plan = run(bump(j, count=2), snap)
    assert [s.name for s in plan.stops] == ["app.web[4]", "app.web[3]", "app.web[2]"]
    assert {s.reason for s in plan.stops} == {"count reduced"}


def test_removed_groups_and_stopped_jobs_stop_everything() -> None:
    snap, j = deployed(count=2)
    other = dataclasses.replace(j, version=2, groups=(group("api", count=1),))
    plan = run(other, snap)
    assert sorted((s.name, s.reason) for s in plan.stops) == [
        ("app.web[0]", "group removed from the job"), ("app.web[1]", "group removed from the job")]
    assert [p.name for p in plan.placements] == ["app.api[0]"]
    plan = run(dataclasses.replace(j, stop=True), snap)
    assert len(plan.stops) == 2
    assert not plan.placements
    assert {s.reason for s in plan.stops} == {"job stopped"}


def test_allocations_on_a_down_or_vanished_node_are_lost_and_replaced() -> None:
    snap, j = deployed(count=2, nodes=4, constraints=())
    victim = next(iter(snap.allocs.values()))
    snap.upsert_node(dataclasses.replace(info(snap, victim.node_id), status="down"))
    plan = run(j, snap)
    assert [(s.alloc_id, s.lost, s.reason) for s in plan.stops] == [
        (victim.id, True, "node down")]
    assert [(p.index, p.reason, p.previous_alloc) for p in plan.placements] == [
        (victim.index, "lost", victim.id)]
    assert placed_on(plan) != [victim.node_id]
    snap.remove_node(victim.node_id)
    plan = run(j, snap)
    assert [p.reason for p in plan.placements] == ["lost"]


def test_draining_nodes_are_migrated_off_max_parallel_at_a_time() -> None:
    snap, j = deployed(count=3, nodes=4)
    busy = {a.node_id for a in snap.allocs.values()}
    for nid in busy:
        snap.upsert_node(dataclasses.replace(info(snap, nid), draining=True))
    plan = run(j, snap)
    assert [p.reason for p in plan.placements] == ["migrate"]
    assert plan.stops[0].reason == "node draining"
    assert plan.groups["web"].waiting == 2
    assert not set(placed_on(plan)) & busy


def test_failed_allocations_are_rescheduled_after_their_delay() -> None:
    snap = ClusterSnapshot([node(1), node(2)])
    policy = ReschedulePolicy(delay=30.0, delay_function="exponential", max_delay=300.0)
    g = group(count=1, reschedule=policy)
    snap.upsert_alloc(alloc("f", "n1", client="failed", modify_time=1000.0, reschedule_attempts=2,
                            create_time=900.0))
    plan = run(job(g), snap, now=1010.0)
    assert not plan.placements
    assert plan.next_eval_at == 1000.0 + 120.0  # 30 s * 2^2
    plan = run(job(g), snap, now=1200.0)
    assert [(p.reason, p.previous_alloc, p.reschedule_attempts) for p in plan.placements] == [
        ("reschedule", "f", 3)]


def test_reschedule_attempts_run_out() -> None:
    snap = ClusterSnapshot([node(1)])
    policy = ReschedulePolicy(attempts=1, interval=3600.0, unlimited=False)
    snap.upsert_alloc(alloc("f", "n1", client="failed", modify_time=1000.0, reschedule_attempts=1,
                            create_time=990.0))
    plan = run(job(group(count=1, reschedule=policy)), snap, now=2000.0)
    assert not plan.placements
    assert plan.groups["web"].notes == ["app.web[0] failed; no reschedule attempts left "
                                        "(1 within 3600s)"]
    # Outside the interval the count starts again.
    plan = run(job(group(count=1, reschedule=policy)), snap, now=990.0 + 4000.0)
    assert [p.reason for p in plan.placements] == ["reschedule"]


def test_delays_grow_as_configured() -> None:
    exp = ReschedulePolicy(delay=10.0, delay_function="exponential", max_delay=100.0)
    assert [reschedule_delay(exp, n) for n in range(5)] == [10.0, 20.0, 40.0, 80.0, 100.0]
    fib = ReschedulePolicy(delay=10.0, delay_function="fibonacci", max_delay=1000.0)
    assert [reschedule_delay(fib, n) for n in range(6)] == [10.0, 10.0, 20.0, 30.0, 50.0, 80.0]
    const = ReschedulePolicy(delay=5.0, delay_function="constant")
    assert reschedule_delay(const, 7) == 5.0


def test_batch_work_that_completed_is_not_redone() -> None:
    snap = ClusterSnapshot([node(1)])
    snap.upsert_alloc(alloc("done", "n1", index=0, client="complete"))
    plan = run(job(group(count=2), type="batch"), snap)
    assert [p.index for p in plan.placements] == [1]
    plan = run(job(group(count=2)), snap)  # a service restarts what exited
    assert sorted(p.index for p in plan.placements) == [0, 1]


def test_duplicate_indexes_keep_the_newest_and_stop_the_rest() -> None:
    snap = ClusterSnapshot([node(1), node(2)])
    snap.upsert_alloc(alloc("old", "n1", index=0, job_version=1))
    snap.upsert_alloc(alloc("new", "n2", index=0, job_version=2))
    plan = run(job(group(count=1), version=2), snap)
    assert [(s.alloc_id, s.reason) for s in plan.stops] == [
        ("old", "superseded by a newer version at the same index")]
    snap.upsert_alloc(alloc("twin", "n1", index=0, job_version=2, create_time=-1.0))
    plan = run(job(group(count=1), version=2), snap)
    assert sorted((s.alloc_id, s.reason) for s in plan.stops) == [
        ("old", "superseded by a newer version at the same index"), ("twin", "duplicate index")]


def test_a_replacement_that_finds_no_node_leaves_the_old_one_running() -> None:
    snap = ClusterSnapshot([node(1, cpu_millicores=1000)])
    j = job(group(count=1, cpu=500))
    run(j, snap, apply=True)
    settle(snap)
    bigger = dataclasses.replace(j, version=2, groups=(group(count=1, cpu=2000),))
    plan = run(bigger, snap)
    assert not plan.stops
    assert plan.groups["web"].unplaced == 1
    assert "1 exhausted cpu" in plan.explain()[0]


def test_in_place_update_becomes_destructive_when_the_node_no_longer_fits() -> None:
    snap = ClusterSnapshot([node(1, node_class="a"), node(2, node_class="b")])
    run(job(group(count=1, constraints=[Constraint(attribute="${node.class}", value="a")])),
        snap, apply=True)
    settle(snap)
    moved = job(group(count=1, constraints=[Constraint(attribute="${node.class}", value="b")]),
                version=2)
    plan = run(moved, snap, config=SchedulerConfig(exact=True))
    assert not plan.updates
    assert placed_on(plan) == ["n2"]
    assert plan.stops[0].reason == "replaced by a new version"


def test_canaries_go_first_and_wait_for_promotion() -> None:
    snap, j = deployed(count=4, nodes=4)
    g = j.groups[0]
    update = dataclasses.replace(g.update, canary=1, max_parallel=2)
    j2 = bump(j, update=update, tasks=(dataclasses.replace(g.tasks[0], image="app:2"),))
    plan = run(j2, snap, apply=True)
    assert [(p.index, p.reason, p.canary) for p in plan.placements] == [(0, "canary", True)]
    assert not plan.stops
    assert plan.groups["web"].explain() == (
        'group "web": 1 canary; 4 waiting for the rolling update (max_parallel)')
    settle(snap)  # the canary is healthy, but nobody promoted it
    plan = run(j2, snap)
    assert plan.is_noop
    assert plan.groups["web"].notes == [
        "1 healthy canary waits for promotion (orchctl job promote)"]
    # Promotion (what `orchctl job promote` makes the controller do): the flag goes.
    canary = next(a for a in snap.allocs.values() if a.canary)
    snap.upsert_alloc(dataclasses.replace(canary, canary=False))
    plan = run(j2, snap)
    stopped = {s.name: s.reason for s in plan.stops if s.reason != "replaced by a new version"}
    assert stopped == {"app.web[0]": "superseded by a newer version at the same index"}
    assert sorted(p.index for p in plan.placements) == [1, 2]
    assert all(p.reason == "replacement" for p in plan.placements)


def test_auto_promote_when_every_canary_is_healthy() -> None:
    snap, j = deployed(count=3, nodes=3)
    g = j.groups[0]
    update = dataclasses.replace(g.update, canary=2, auto_promote=True, max_parallel=3)
    j2 = bump(j, update=update, tasks=(dataclasses.replace(g.tasks[0], image="app:2"),))
    plan = run(j2, snap, apply=True)
    assert sorted(p.index for p in plan.placements if p.canary) == [0, 1]
    settle(snap, healthy=False)
    assert run(j2, snap).is_noop  # not healthy yet
    settle(snap)
    for a in list(snap.allocs.values()):
        if a.canary:
            snap.upsert_alloc(dataclasses.replace(a, healthy=True))
    plan = run(j2, snap)
    assert sorted((s.name, s.reason) for s in plan.stops if s.reason != "replaced by a new version"
                  ) == [("app.web[0]", "replaced by a promoted canary"),
                        ("app.web[1]", "replaced by a promoted canary")]
    assert [p.index for p in plan.placements] == [2]


def test_a_failed_canary_stops_the_update() -> None:
    snap, j = deployed(count=2, nodes=2)
    g = j.groups[0]
    j2 = bump(j, update=dataclasses.replace(g.update, canary=1),
              tasks=(dataclasses.replace(g.tasks[0], image="app:2"),))
    run(j2, snap, apply=True)
    canary = next(a for a in snap.allocs.values() if a.canary)
    snap.upsert_alloc(dataclasses.replace(canary, client="failed"))
    plan = run(j2, snap)
    assert plan.is_noop
    assert plan.groups["web"].notes == [
        "canary app.web[0] failed; the update waits (fix the job or revert)"]


def _resized(j: Job, cpu: int, mem: int) -> Job:
    t = j.groups[0].tasks[0]
    return bump(j, tasks=(dataclasses.replace(
        t, resources=Resources(cpu_millicores=cpu, memory_mb=mem)),))


def test_cpu_and_memory_alone_are_resized_in_place_when_the_node_has_room() -> None:
    g = group()
    assert not is_destructive(g, dataclasses.replace(g, tasks=(dataclasses.replace(
        g.tasks[0], resources=Resources(cpu_millicores=900, memory_mb=300)),)))
    snap, j = deployed()
    plan = run(_resized(j, 700, 300), snap, apply=True)
    assert len(plan.updates) == 4
    assert all(u.resize for u in plan.updates)
    assert not plan.placements
    assert not plan.stops
    # the snapshot now counts the new sizes
    assert {(a.cpu_millicores, a.memory_mb) for a in snap.allocs.values()} == {(700, 300)}


def test_resizes_on_one_node_never_overcommit_it() -> None:
    snap, j = deployed(count=4, nodes=2)  # two replicas of 500 millicores per 4-core node
    plan = run(_resized(j, 2500, 256), snap)  # each node fits one grown replica, not two
    resized = [u for u in plan.updates if u.resize]
    moved = [p for p in plan.placements if p.reason == "replacement"]
    assert len(resized) == 2
    assert len({u.node_id for u in resized}) == 2  # one per node
    g = plan.groups["web"]
    assert g.replace == 1  # the other two move, max_parallel (1) at a time ...
    assert g.waiting == 1
    assert len(moved) + g.unplaced == 1  # ... where there is room (here: nowhere yet)
