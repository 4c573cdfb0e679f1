"""The disconnect block in the scheduler (pure): allocations of a node that is down are unknown
for lost_after (kept; replaced at once with replace), then lost; one that comes back beside
its replacement is reconciled by the stated rule."""

from __future__ import annotations

import dataclasses

import pytest

from controller.scheduler import ClusterSnapshot
from controller.scheduler.reconcile import keep_on_reconnect
from orch.jobspec.model import Disconnect, Job
from tests.unit.scheduler.factories import alloc, group, info, job, node, run, settle

DOWN_AT = 1000.0


def cluster(disconnect: Disconnect | None, count: int = 2) -> tuple[ClusterSnapshot, Job]:
    snap = ClusterSnapshot([node(i) for i in range(3)])
    j = job(group(count=count, disconnect=disconnect))
    run(j, snap, apply=True, now=900.0)
    settle(snap)
    return snap, j


def down(snap: ClusterSnapshot, node_id: str, at: float = DOWN_AT) -> None:
    snap.upsert_node(dataclasses.replace(info(snap, node_id), status="down", status_since=at))


def up(snap: ClusterSnapshot, node_id: str) -> None:
    snap.upsert_node(dataclasses.replace(info(snap, node_id), status="ready"))


def on(snap: ClusterSnapshot, node_id: str) -> list[str]:
    return sorted(a.id for a in snap.allocs.values() if a.node_id == node_id and a.occupies)


def test_without_a_disconnect_block_a_down_node_loses_its_allocations_at_once() -> None:
    snap, j = cluster(None)
    victim = next(a for a in snap.allocs.values())
    down(snap, victim.node_id)
    plan = run(j, snap, now=DOWN_AT + 1)
    assert [s.alloc_id for s in plan.stops] == [victim.id]
    assert plan.stops[0].lost
    assert [p.reason for p in plan.placements] == ["lost"]


def test_unknown_until_lost_after_then_lost_and_replaced() -> None:
    snap, j = cluster(Disconnect(lost_after=300.0))
    victim = next(a for a in snap.allocs.values())
    down(snap, victim.node_id)
    plan = run(j, snap, now=DOWN_AT + 10)
    assert plan.is_noop  # unknown: kept, its index held
    assert plan.next_eval_at == DOWN_AT + 300.0  # looked at again when it is lost
    plan = run(j, snap, now=DOWN_AT + 300.0)
    assert [s.alloc_id for s in plan.stops] == [victim.id]
    assert [(p.reason, p.previous_alloc) for p in plan.placements] == [("lost", victim.id)]


def test_replace_places_a_replacement_at_once_and_keeps_the_original() -> None:
    snap, j = cluster(Disconnect(lost_after=300.0, replace=True))
    victim = next(a for a in snap.allocs.values())
    down(snap, victim.node_id)
    plan = run(j, snap, now=DOWN_AT + 1, apply=True)
    assert not plan.stops
    assert [(p.reason, p.previous_alloc) for p in plan.placements] == [
        ("disconnected", victim.id)]
    assert plan.placements[0].node_id != victim.node_id
    settle(snap)
    assert run(j, snap, now=DOWN_AT + 2).is_noop  # replaced once, not again
    plan = run(j, snap, now=DOWN_AT + 301)  # lost now: stopped, nothing more placed
    assert [(s.alloc_id, s.lost) for s in plan.stops] == [(victim.id, True)]
    assert not plan.placements


@pytest.mark.parametrize(("rule", "kept"), [
    ("keep_original", "original"), ("keep_replacement", "replacement"),
    ("best_score", "replacement"), ("longest_running", "original")])
def test_a_node_back_beside_the_replacement_keeps_one_by_the_rule(rule: str, kept: str) -> None:
    snap, j = cluster(Disconnect(lost_after=300.0, replace=True, reconcile=rule))
    victim = next(a for a in snap.allocs.values())
    down(snap, victim.node_id)
    plan = run(j, snap, now=DOWN_AT + 1, apply=True)
    settle(snap)
    replacement = plan.placements[0].alloc_id
    up(snap, victim.node_id)  # the partition heals: both run
    plan = run(j, snap, now=DOWN_AT + 60)
    loser = replacement if kept == "original" else victim.id
    assert [s.alloc_id for s in plan.stops] == [loser]
    assert f"kept the {kept}" in plan.stops[0].reason
    assert rule in plan.stops[0].reason
    assert not plan.placements


def test_best_score_keeps_the_only_healthy_one() -> None:
    orig = alloc("o", "n1", healthy=True, client_since=10.0)
    repl = alloc("r", "n2", healthy=False, client_since=20.0, previous_allocation="o")
    assert keep_on_reconnect("best_score", orig, repl) is orig
    assert keep_on_reconnect("best_score", orig, dataclasses.replace(repl, healthy=True)) \
        is not orig
    assert keep_on_reconnect("longest_running", orig, repl) is orig
