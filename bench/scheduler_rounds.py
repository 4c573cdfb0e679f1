"""The pure scheduler round after round, without a controller: each plan is recorded in the
snapshot as a commit would record it, so the next round sees it.

The scheduler's benchmark and its property tests use it. The controller's own path is
longer: ``controller.planner.plan_to_changes`` makes the plan into allocation records,
the store makes them durable, and ``ClusterState.apply`` updates the snapshot from them.
"""

from __future__ import annotations

import dataclasses

from controller.scheduler import AllocInfo, ClusterSnapshot, Plan
from orch.jobspec.model import Job


def apply_plan(snapshot: ClusterSnapshot, plan: Plan, job: Job, now: float) -> None:
    """Record ``plan``'s stops, in-place updates and placements (as pending) in ``snapshot``."""
    specs = {g.name: g for g in job.groups}
    for s in plan.stops:
        old = snapshot.alloc(s.alloc_id)
        if old is not None:
            snapshot.upsert_alloc(dataclasses.replace(
                old, desired="stop", client="lost" if s.lost else old.client, modify_time=now))
    for u in plan.updates:
        old = snapshot.alloc(u.alloc_id)
        if old is not None:
            spec = specs.get(old.group, old.spec)
            res = spec.resources if spec is not None else None
            snapshot.upsert_alloc(dataclasses.replace(
                old, job_version=u.to_version, spec=spec, modify_time=now,
                cpu_millicores=res.cpu_millicores if res else old.cpu_millicores,
                memory_mb=res.memory_mb if res else old.memory_mb))
    for p in plan.placements:
        snapshot.upsert_alloc(AllocInfo(
            id=p.alloc_id, namespace=p.namespace, job=p.job, group=p.group, index=p.index,
            node_id=p.node_id, cpu_millicores=p.cpu_millicores, memory_mb=p.memory_mb,
            ports=dict(p.ports), desired="run", client="pending", job_version=plan.job_version,
            spec=specs.get(p.group), canary=p.canary, reschedule_attempts=p.reschedule_attempts,
            previous_allocation=p.previous_alloc, create_time=now, modify_time=now))
