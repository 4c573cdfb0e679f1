"""Rolling updates as deployments, and when an allocation counts as healthy (pure).

An allocation is *healthy* once every task runs and passes its checks — or, without
checks, once it runs — for the group's ``min_healthy_time``; it stops being healthy at
once when that no longer holds. Agents judge this themselves and report their verdict
with the allocation's status (``deployment_health``, as Nomad's clients do), so that the
controller writes nothing of its own for it (``controller.reports``); for an allocation
whose agent reports no verdict (an older agent), the controller times it here from what
the agent reports (``checks_healthy``). A deployment follows one job version: it succeeds
when every group has ``count`` healthy allocations of that version and none of an older
one; it fails when an allocation of the version fails or is not healthy within
``healthy_deadline`` (as its agent counts it from receiving the allocation, or the
controller from placing it when the agent does not judge), or when no allocation turned
healthy for ``progress_deadline``. Canaries wait for promotion.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from controller.reports import judged_healthy
from controller.scheduler import AllocInfo
from controller.state import RUN, RUNNING, ClusterState
from orch.jobspec.model import Group, Job
from orch.v1 import controller_pb2, node_pb2

NS = 1_000_000_000
ACTIVE = ("running", "paused")


def has_checks(group: Group) -> bool:
    return any(t.checks for t in group.tasks) or any(s.check is not None for s in group.services)


def health_updates(state: ClusterState, now_ns: int, ids: Iterable[str]
                   ) -> tuple[list[node_pb2.Allocation], dict[str, int]]:
    """Of the allocations ``ids`` names: those whose ``healthy`` must change now, and those
    that will turn healthy later unless something changes (id -> when)."""
    out: list[node_pb2.Allocation] = []
    later: dict[str, int] = {}
    for alloc_id in ids:
        a = state.allocs.get(alloc_id)
        if a is None:
            continue
        if a.desired_status != RUN:
            want, ready_at = False, None
        elif a.deployment_health:  # its agent judges (controller.reports)
            want, ready_at = judged_healthy(a), None
        else:
            group = state.group_spec(a)
            if group is None:
                continue
            if has_checks(group):
                ok, since = a.client_status == RUNNING and a.checks_healthy, a.checks_healthy_since_ns
            else:
                ok, since = a.client_status == RUNNING, a.client_since_ns
            ready_at = since + int(group.update.min_healthy_time * NS) if ok else None
            want = ready_at is not None and now_ns >= ready_at
        if want != a.healthy:
            b = node_pb2.Allocation()
            b.CopyFrom(a)
            b.healthy = want
            b.modify_time_ns = now_ns
            out.append(b)
        elif not want and ready_at is not None:
            later[alloc_id] = ready_at
    return out, later


@dataclass(frozen=True, slots=True)
class Verdict:
    deployment: controller_pb2.Deployment
    """The deployment with its counters and status brought up to date."""
    changed: bool
    failed_alloc: str = ""
    next_check_ns: int | None = None
    """When a deadline of this deployment falls due (so that the caller looks again)."""


def assess(dep: controller_pb2.Deployment, job: Job, allocs: list[AllocInfo],
           now_ns: int) -> Verdict:
    """Bring a deployment's counters and status up to date from the job's allocations (as
    the scheduler's snapshot holds them)."""
    new = controller_pb2.Deployment()
    new.CopyFrom(dep)
    if dep.status not in ACTIVE:
        return Verdict(new, False)
    groups = {g.name: g for g in job.groups}
    failure = ""
    failed_alloc = ""
    done = True
    waiting_promotion = False
    deadlines: list[int] = []
    for dg in new.groups:
        spec = groups.get(dg.group)
        if spec is None:
            continue
        mine = [a for a in allocs if a.group == dg.group and a.job_version == dep.job_version
                and a.desired == "run"]
        healthy = [a for a in mine if a.healthy]
        unhealthy = []
        for a in mine:
            if a.client in ("failed", "lost"):
                unhealthy.append((a, f"allocation {a.name} {_client(a)}"))
            elif a.health == "unhealthy" and a.client in ("pending", "running"):
                unhealthy.append((a, f"allocation {a.name} was not healthy within "
                                     f"{spec.update.healthy_deadline:g}s (its node's verdict)"))
            elif not a.healthy and not a.health and a.client in ("pending", "running"):
                deadline = int(a.create_time * NS) + int(spec.update.healthy_deadline * NS)
                if now_ns >= deadline:
                    unhealthy.append((a, f"allocation {a.name} was not healthy within "
                                         f"{spec.update.healthy_deadline:g}s"))
                else:
                    deadlines.append(deadline)
        if len(healthy) > dg.healthy:
            dg.require_progress_by_ns = now_ns + int(spec.update.progress_deadline * NS)
        dg.placed = len(mine)
        dg.healthy = len(healthy)
        dg.unhealthy = len(unhealthy)
        if unhealthy and not failure:
            failed_alloc = unhealthy[0][0].id
            failure = f"failed: {unhealthy[0][1]}"
        elif dg.require_progress_by_ns and now_ns >= dg.require_progress_by_ns and \
                len(healthy) < dg.desired and not failure:
            failure = f"failed: no progress within {spec.update.progress_deadline:g}s"
        elif dg.require_progress_by_ns:
            deadlines.append(dg.require_progress_by_ns)
        canaries = [a for a in mine if a.canary]
        if dg.desired_canaries and not dg.promoted:
            if spec.update.auto_promote and len(canaries) >= dg.desired_canaries and all(
                    a.healthy for a in canaries):
                dg.promoted = True
            else:
                done = False
                if len(canaries) >= dg.desired_canaries and all(a.healthy for a in canaries):
                    waiting_promotion = True
        older = [a for a in allocs if a.group == dg.group and a.desired == "run"
                 and a.job_version != dep.job_version and a.client in ("pending", "running")]
        if len(healthy) < dg.desired or older or any(a.canary for a in healthy):
            done = False
    if failure:
        new.status, new.description = "failed", f"deployment {failure}"
    elif done:
        new.status, new.description = "successful", "deployment completed successfully"
    elif waiting_promotion:
        new.status = "paused"
        new.description = "canaries are healthy: promote them (orchctl job promote)"
    else:
        new.status, new.description = "running", "deployment is running"
    changed = new != dep
    if changed:
        new.modify_time_ns = now_ns
    return Verdict(new, changed, failed_alloc, min(deadlines) if deadlines else None)


def _client(a: AllocInfo) -> str:
    return "failed" if a.client == "failed" else "was lost"
