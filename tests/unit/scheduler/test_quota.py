"""Namespace quotas: the snapshot keeps each namespace's usage; a plan never goes past the
quota, credits what it stops, and names the quota when it falls short."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.scheduler import ClusterSnapshot
from controller.scheduler.quota import Budget, Quota, Usage
from tests.unit.scheduler.factories import alloc, group, job, node, run, settle


def _snap(nodes: int = 3) -> ClusterSnapshot:
    return ClusterSnapshot(nodes=[node(i) for i in range(nodes)])


def test_usage_follows_the_namespaces_live_allocations() -> None:
    snap = _snap()
    snap.upsert_alloc(alloc("a", "n0", namespace="team", cpu=300, mem=100))
    snap.upsert_alloc(alloc("b", "n1", namespace="team", cpu=200, mem=50, client="pending"))
    snap.upsert_alloc(alloc("c", "n1", namespace="other", cpu=1000, mem=1000))
    assert snap.usage("team") == Usage(500, 150, 2)
    snap.upsert_alloc(alloc("a", "n0", namespace="team", cpu=300, mem=100, desired="stop"))
    assert snap.usage("team") == Usage(200, 50, 1)
    snap.upsert_alloc(alloc("b", "n1", namespace="team", cpu=200, mem=50, client="complete"))
    assert snap.usage("team") == Usage()
    snap.remove_alloc("c")
    assert snap.usage("other") == Usage()
    # an allocation on a node the snapshot does not know still holds its namespace's quota
    snap.upsert_alloc(alloc("d", "gone", namespace="team", cpu=100, mem=10))
    assert snap.usage("team") == Usage(100, 10, 1)


def test_a_group_is_placed_up_to_the_quota_and_the_failure_names_it() -> None:
    snap = _snap()
    j = job(group(count=4, mem=256), namespace="team")
    plan = run(j, snap, quota=Quota(memory_mb=768))
    assert len(plan.placements) == 3
    assert plan.unplaced == 1
    why = plan.groups["web"].explain()
    assert "quota of namespace 'team' exhausted" in why
    assert "memory 768 of 768 MB in use" in why
    assert plan.groups["web"].failure is not None
    assert plan.groups["web"].failure.evaluated == 0


def test_allocation_and_cpu_limits() -> None:
    snap = _snap()
    assert len(run(job(group(count=5), namespace="t"), snap,
                   quota=Quota(allocations=2)).placements) == 2
    assert len(run(job(group(count=5, cpu=1000), namespace="t"), snap,
                   quota=Quota(cpu_millicores=2500)).placements) == 2
    assert len(run(job(group(count=5), namespace="t"), snap, quota=Quota()).placements) == 5


def test_usage_of_other_jobs_counts_and_other_namespaces_do_not() -> None:
    snap = _snap()
    run(job(group(count=2, mem=500), name="db", namespace="team"), snap, apply=True)
    run(job(group(count=4, mem=500), name="big", namespace="elsewhere"), snap, apply=True)
    plan = run(job(group(count=3, mem=500), name="web", namespace="team"), snap,
               quota=Quota(memory_mb=2000))
    assert len(plan.placements) == 2
    assert plan.unplaced == 1


def test_a_destructive_update_at_the_quota_replaces_one_by_one() -> None:
    snap = _snap()
    q = Quota(memory_mb=768)
    run(job(group(count=3, mem=256), namespace="t"), snap, apply=True, quota=q)
    settle(snap)
    v2 = job(group(count=3, mem=256, image="app:2", max_parallel=3), namespace="t", version=2)
    plan = run(v2, snap, quota=q)
    assert len(plan.placements) == 3
    assert len(plan.stops) == 3
    assert not plan.unplaced


def test_growing_past_the_quota_keeps_the_old_allocation_running() -> None:
    snap = _snap()
    q = Quota(memory_mb=600)
    run(job(group(count=2, mem=256), namespace="t"), snap, apply=True, quota=q)
    settle(snap)
    plan = run(job(group(count=2, mem=400), namespace="t", version=2), snap, quota=q)
    assert not plan.updates  # growing in place would pass the quota
    assert plan.unplaced
    assert "quota of namespace 't'" in plan.groups["web"].explain()
    assert not plan.stops  # what could not be replaced keeps running


def test_a_system_job_stops_at_the_quota() -> None:
    snap = _snap(4)
    plan = run(job(group(mem=100), type="system", namespace="t"), snap,
               quota=Quota(allocations=3))
    assert len(plan.placements) == 3
    assert plan.unplaced == 1
    assert "quota" in plan.groups["web"].explain()


def test_budget_credits_stops_and_takes_them_back() -> None:
    b = Budget("t", Quota(memory_mb=100), Usage(0, 100, 1))
    assert b.refusal(0, 10)
    b.give(0, 50)
    assert b.refusal(0, 10) is None
    b.give(0, 50, -1)
    assert b.refusal(0, 10)


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(0, 6), min_size=1, max_size=4),
       mem=st.sampled_from([128, 256, 512]), limit=st.integers(0, 3000),
       allocations=st.integers(0, 10))
def test_a_namespace_never_goes_past_its_quota(counts: list[int], mem: int, limit: int,
                                                allocations: int) -> None:
    snap = _snap(4)
    q = Quota(memory_mb=limit, allocations=allocations)
    for i, c in enumerate(counts):
        j = job(group(count=c, mem=mem), name=f"j{i}", namespace="t")
        run(j, snap, apply=True, quota=q)
        settle(snap)
        # and again with a new version (destructive), as a rollout would
        run(dataclasses.replace(j, version=2, groups=(group(count=c, mem=mem, image="app:2",
                                                            max_parallel=2),)),
            snap, apply=True, quota=q)
        settle(snap)
        used = snap.usage("t")
        assert not limit or used.memory_mb <= limit
        assert not allocations or used.allocations <= allocations
