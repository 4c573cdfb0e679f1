"""From a scheduler Plan to the records that carry it out: allocations, a deployment, events.

Pure: the caller passes the state and the time; nothing here writes anywhere.
"""

from __future__ import annotations

import uuid

from controller.scheduler import Plan
from controller.state import LOST, PENDING, RUN, STOP, ClusterState, job_key
from controller.store.base import Changes
from orch.jobspec.model import Job, group_to_proto
from orch.v1 import controller_pb2, job_pb2, node_pb2
from orch.vocab import JOB_TYPE


def event(topic: str, type_: str, key: str, message: str, now_ns: int, **payload: object) -> \
        controller_pb2.Event:
    ev = controller_pb2.Event(time_ns=now_ns, topic=topic, type=type_, key=key, message=message)
    for field, value in payload.items():
        getattr(ev, field).CopyFrom(value)
    return ev


def plan_summary(plan: Plan) -> controller_pb2.PlanSummary:
    """What ``orchctl job run``/``plan`` shows: every change and every group that fell short."""
    out = controller_pb2.PlanSummary(changes_anything=not plan.is_noop)
    for p in plan.placements:
        out.changes.add(kind="create" if not p.previous_alloc else "replace", group=p.group,
                        alloc_id=p.alloc_id, alloc_name=p.name, node=p.node_name, reason=p.reason)
    for u in plan.updates:
        out.changes.add(kind="update", group=u.name.rsplit(".", 1)[-1].split("[")[0],
                        alloc_id=u.alloc_id, alloc_name=u.name, node=u.node_name,
                        reason=f"in place{' (resize)' if u.resize else ''}, version "
                               f"{u.from_version} => {u.to_version}")
    for s in plan.stops:
        out.changes.add(kind="stop", alloc_id=s.alloc_id, alloc_name=s.name, node=s.node_name,
                        reason=s.reason, group=s.name.rsplit(".", 1)[-1].split("[")[0])
    for g in plan.groups.values():
        if g.unplaced:
            f = out.failures.add(group=g.name, wanted=g.attempted, placed=g.attempted - g.unplaced,
                                 explanation=g.explain())
            if g.failure is not None:
                f.nodes_evaluated = g.failure.evaluated
                for bucket in (g.failure.filtered, g.failure.unavailable):
                    for reason, n in bucket.items():
                        f.reasons[reason] = n
                for reason, n in g.failure.exhausted.items():
                    f.reasons[f"exhausted {reason}"] = n
    return out


def plan_to_changes(state: ClusterState, job_pb: job_pb2.Job, job: Job, plan: Plan,
                    now_ns: int, deployment_id: str = "") -> Changes:
    """The allocation records and events that carry out ``plan`` for version ``job.version``."""
    ch = Changes()
    groups = {g.name: g for g in job.groups}
    specs: dict[str, job_pb2.TaskGroup] = {}
    key = job_key(job_pb)

    def spec(name: str) -> job_pb2.TaskGroup:
        if name not in specs:
            specs[name] = group_to_proto(groups[name])
        return specs[name]

    for s in plan.stops:
        old = state.allocs.get(s.alloc_id)
        if old is None:
            continue
        a = node_pb2.Allocation()
        a.CopyFrom(old)
        a.desired_status = STOP
        a.description = s.reason
        a.modify_time_ns = now_ns
        if s.lost:
            a.client_status = LOST
            a.client_since_ns = now_ns
        ch.put_allocs.append(a)
        ch.events.append(event("allocation", "AllocationStopped", a.id,
                               f"{a.name}: {s.reason}", now_ns, allocation=a))
    for u in plan.updates:
        old = state.allocs.get(u.alloc_id)
        if old is None:
            continue
        a = node_pb2.Allocation()
        a.CopyFrom(old)
        a.job_version = u.to_version
        a.spec.CopyFrom(spec(a.group))
        a.job_meta.clear()
        a.job_meta.update(job_pb.meta)
        res = groups[a.group].resources
        resized = (a.resources.cpu_millicores, a.resources.memory_mb) != (
            res.cpu_millicores, res.memory_mb)
        a.resources.CopyFrom(job_pb2.Resources(cpu_millicores=res.cpu_millicores,
                                               memory_mb=res.memory_mb))
        a.modify_time_ns = now_ns
        if deployment_id:
            a.deployment_id = deployment_id
        ch.put_allocs.append(a)
        what = "resized in place" if resized else "updated in place"
        ch.events.append(event("allocation", "AllocationUpdated", a.id,
                               f"{a.name}: {what} to version {u.to_version}", now_ns,
                               allocation=a))
    replaced = {a.id for a in ch.put_allocs}
    for p in plan.placements:
        old = state.allocs.get(p.previous_alloc) if p.previous_alloc else None
        if old is not None and old.id not in replaced and old.desired_status == RUN \
                and p.reason != "disconnected":  # an unknown original may come back
            # a failed or lost allocation that is rescheduled: it is not wanted any more
            gone = node_pb2.Allocation()
            gone.CopyFrom(old)
            gone.desired_status = STOP
            gone.description = f"rescheduled as {p.alloc_id[:8]} ({p.reason})"
            gone.modify_time_ns = now_ns
            ch.put_allocs.append(gone)
        a = node_pb2.Allocation(
            id=p.alloc_id, name=p.name, namespace=key[0], job=p.job, job_version=job.version,
            group=p.group, index=p.index, node_id=p.node_id, desired_status=RUN,
            client_status=PENDING, ports=dict(p.ports), previous_allocation=p.previous_alloc,
            reschedule_attempts=p.reschedule_attempts, canary=p.canary,
            create_time_ns=now_ns, modify_time_ns=now_ns, client_since_ns=now_ns,
            deployment_id=deployment_id if job.type == "service" else "",
            job_type=JOB_TYPE.value(job.type),
            description=f"placed on {p.node_name}: {p.reason}",
            resources=job_pb2.Resources(cpu_millicores=p.cpu_millicores, memory_mb=p.memory_mb))
        a.spec.CopyFrom(spec(p.group))
        a.job_meta.update(job_pb.meta)
        a.payload = job_pb.payload
        ch.put_allocs.append(a)
        kind = "AllocationRescheduled" if p.reason in ("reschedule", "lost", "migrate",
                                                       "disconnected") else "AllocationPlaced"
        ch.events.append(event("allocation", kind, a.id,
                               f"{a.name} placed on {p.node_name} ({p.reason})", now_ns,
                               allocation=a))
    return ch


def new_deployment(job: Job, plan: Plan, now_ns: int) -> controller_pb2.Deployment | None:
    """A deployment for a service job's new version, when the plan starts rolling it out."""
    if job.type != "service":
        return None
    rolling = any(p.reason in ("new", "replacement", "canary") for p in plan.placements) or any(
        g.waiting or g.canary for g in plan.groups.values()) or plan.updates
    if not rolling:
        return None
    dep = controller_pb2.Deployment(
        id=str(uuid.uuid4()), job=job.name, namespace=job.namespace, job_version=job.version,
        status="running", description="deployment is running", create_time_ns=now_ns,
        modify_time_ns=now_ns)
    for g in job.groups:
        gp = plan.groups.get(g.name)
        # canaries only guard updates: a first rollout has nothing to compare them with
        canaries = g.update.canary if gp is not None and (gp.canary or gp.waiting) else 0
        dep.groups.add(group=g.name, desired=g.count, desired_canaries=canaries,
                       auto_revert=g.update.auto_revert,
                       require_progress_by_ns=now_ns + int(g.update.progress_deadline * 1e9))
    return dep


def stopped_model(job: Job) -> Job:
    """The same job, marked stopped (so that the scheduler stops everything it runs)."""
    import dataclasses

    return dataclasses.replace(job, stop=True)


__all__ = ["event", "new_deployment", "plan_summary", "plan_to_changes", "stopped_model"]
