"""Scores: bin-pack and spread fit, job anti-affinity, affinities, spread targets."""

from collections import Counter

import pytest

from controller.scheduler import ClusterSnapshot, SchedulerConfig
from controller.scheduler.ranking import AffinityScorer, SpreadScorer, anti_affinity, fit_score
from orch.jobspec.model import Affinity, Spread, SpreadTarget
from tests.unit.scheduler.factories import alloc, group, info, job, node, placed_on, run

EXACT = SchedulerConfig(exact=True)


def test_fit_score_prefers_full_nodes_for_binpack_and_empty_ones_for_spread() -> None:
    empty = fit_score(1000, 1000, 100, 100)
    half = fit_score(1000, 1000, 500, 500)
    full = fit_score(1000, 1000, 1000, 1000)
    assert 0.0 <= empty < half < full == 1.0
    assert fit_score(1000, 1000, 100, 100, binpack=False) > fit_score(1000, 1000, 900, 900,
                                                                     binpack=False)
    assert fit_score(1000, 1000, 0, 0) == 0.0


def test_anti_affinity_is_strong_while_replicas_fit_on_distinct_nodes() -> None:
    assert anti_affinity(0, 5, 10) == 0.0
    assert anti_affinity(1, 5, 10) == -1.0
    assert anti_affinity(2, 100, 10) == pytest.approx(-0.2)


def test_binpack_fills_the_fuller_node() -> None:
    snap = ClusterSnapshot([node(1), node(2)])
    snap.upsert_alloc(alloc("x", "n2", job_name="other", cpu=2000, mem=2000))
    assert placed_on(run(job(group(count=1)), snap, config=EXACT)) == ["n2"]


def test_spread_algorithm_picks_the_emptier_node() -> None:
    snap = ClusterSnapshot([node(1), node(2)])
    snap.upsert_alloc(alloc("x", "n2", job_name="other", cpu=2000, mem=2000))
    cfg = SchedulerConfig(algorithm="spread", exact=True)
    assert placed_on(run(job(group(count=1)), snap, config=cfg)) == ["n1"]


def test_replicas_of_a_group_avoid_sharing_nodes_when_they_can() -> None:
    snap = ClusterSnapshot([node(i) for i in range(5)])
    plan = run(job(group(count=5, cpu=100, mem=100)), snap)
    assert len(set(placed_on(plan))) == 5
    # More replicas than nodes: they share evenly instead of stacking.
    plan = run(job(group(count=10, cpu=100, mem=100)), snap)
    assert sorted(Counter(placed_on(plan)).values()) == [2, 2, 2, 2, 2]


def test_affinity_prefers_and_negative_affinity_avoids() -> None:
    snap = ClusterSnapshot([node(i, node_class="fast" if i < 2 else "") for i in range(6)])
    pref = [Affinity(attribute="${node.class}", value="fast", weight=100)]
    plan = run(job(group(count=2, affinities=pref)), snap)
    assert set(placed_on(plan)) == {"n0", "n1"}
    avoid = [Affinity(attribute="${node.class}", value="fast", weight=-100)]
    plan = run(job(group(count=4, affinities=avoid)), snap)
    assert not set(placed_on(plan)) & {"n0", "n1"}


def test_affinity_scorer_normalises_by_total_weight() -> None:
    snap = ClusterSnapshot([node(1, node_class="a", meta={"rack": "r1"})])
    n1 = snap.node("n1")
    assert n1 is not None
    scorer = AffinityScorer([Affinity(attribute="${node.class}", value="a", weight=30),
                             Affinity(attribute="${meta.rack}", value="r2", weight=70),
                             Affinity(attribute="${node.unique.name}", value="n1", weight=-100)])
    assert scorer.score(n1) == pytest.approx((30 - 100) / 200)


def test_spread_targets_are_followed() -> None:
    snap = ClusterSnapshot([node(i, datacenter=f"dc{i % 3}") for i in range(30)])
    spread = Spread(attribute="${node.datacenter}", targets=(
        SpreadTarget(value="dc0", percent=50), SpreadTarget(value="dc1", percent=30)))
    plan = run(job(group(count=10, cpu=100, mem=64, spreads=[spread])), snap)
    dcs = Counter(info(snap, n).datacenter for n in placed_on(plan))
    assert dcs == {"dc0": 5, "dc1": 3, "dc2": 2}


def test_even_spread_over_the_values_the_job_can_use() -> None:
    snap = ClusterSnapshot([node(i, datacenter=f"dc{i % 4}") for i in range(40)])
    spread = Spread(attribute="${node.datacenter}")
    plan = run(job(group(count=9, cpu=100, mem=64, spreads=[spread]),
                   datacenters=("dc0", "dc1", "dc2")), snap)
    dcs = Counter(info(snap, n).datacenter for n in placed_on(plan))
    assert dcs == {"dc0": 3, "dc1": 3, "dc2": 3}


def test_spread_counts_allocations_already_running() -> None:
    snap = ClusterSnapshot([node(i, datacenter=f"dc{i % 2}") for i in range(10)])
    for i in range(4):
        snap.upsert_alloc(alloc(f"old{i}", "n0", index=i, cpu=100, mem=64))  # n0 is in dc0
    spread = Spread(attribute="${node.datacenter}")
    plan = run(job(group(count=8, cpu=100, mem=64, spreads=[spread])), snap)
    dcs = Counter(info(snap, n).datacenter for n in placed_on(plan))
    assert dcs == {"dc1": 4}


def test_spread_scorer_boost() -> None:
    snap = ClusterSnapshot([node(1, datacenter="a"), node(2, datacenter="b"),
                            node(3, datacenter="c")])
    n1, n2, n3 = (snap.node(f"n{i}") for i in (1, 2, 3))
    assert n1 is not None
    assert n2 is not None
    assert n3 is not None
    s = SpreadScorer([Spread(attribute="${node.datacenter}", targets=(
        SpreadTarget(value="a", percent=75),))], count=4, values_seen={})
    assert s.score(n1) == pytest.approx((3 - 1) / 3)
    s.record(n1)
    s.record(n1)
    s.record(n1)
    assert s.score(n1) == pytest.approx(-1 / 3)  # (3 - 4) / 3
    assert s.score(n2) == 0.0  # the rest ("*") wants 1 and has none: (1 - 1) / 1
    s.record(n2)
    assert s.score(n3) == -1.0  # the rest is used up by b


def test_rescheduled_allocations_avoid_the_node_they_failed_on() -> None:
    snap = ClusterSnapshot([node(1), node(2)])
    snap.upsert_alloc(alloc("dead", "n2", cpu=100, mem=64, client="failed", modify_time=0.0))
    snap.upsert_alloc(alloc("x", "n2", job_name="other", cpu=3000, mem=3000))
    plan = run(job(group(count=1, cpu=100, mem=64)), snap, config=EXACT, now=10_000.0)
    assert [(p.reason, p.node_id, p.previous_alloc) for p in plan.placements] == [
        ("reschedule", "n1", "dead")]
