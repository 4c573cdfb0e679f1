"""``schedule(job, snapshot, now, seed) -> Plan``: the pure entry point.

No I/O, no clock, no global randomness: ``now`` (seconds since the epoch) and
``seed`` are inputs, so the same inputs always give the same plan. The
controller builds the snapshot, calls this, and commits the plan.

Service and batch jobs: reconcile each group (see :mod:`reconcile`), apply the
stops, then place what is missing group by group (replacements first, on
their old node when it still fits). System jobs: one allocation per group on
every node that is ready, eligible and passes the constraints.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable

from controller.scheduler.config import SchedulerConfig
from controller.scheduler.context import PlanContext
from controller.scheduler.feasibility import ClassFilter, node_unavailable
from controller.scheduler.placer import Choice, GroupPlacer
from controller.scheduler.plan import GroupPlan, InPlaceUpdate, NodeMetrics, Placement, Plan, Stop
from controller.scheduler.quota import Budget, Quota
from controller.scheduler.reconcile import (
    STOP_DRAIN,
    STOP_DUPLICATE,
    STOP_GROUP_REMOVED,
    STOP_INFEASIBLE,
    STOP_JOB,
    STOP_LOST,
    STOP_REPLACED,
    STOP_REPLACED_WHILE_AWAY,
    attempts_in_window,
    is_destructive,
    is_resize,
    reconcile_group,
)
from controller.scheduler.snapshot import AllocInfo, ClusterSnapshot, NodeState
from orch.jobspec.model import Group, Job

DEFAULT_CONFIG = SchedulerConfig()


def schedule(job: Job, snapshot: ClusterSnapshot, now: float, seed: int,
             config: SchedulerConfig = DEFAULT_CONFIG, quota: Quota | None = None) -> Plan:
    """The plan that moves the cluster from ``snapshot`` towards ``job``.

    ``job.version`` is the version being scheduled; allocations of other
    versions are updated (in place or by replacement). A stopped job
    (``job.stop``) only gets stops. ``quota`` is the job's namespace's, if it has one:
    what would go past it is not placed.
    """
    ctx = PlanContext(snapshot, job, config, random.Random(seed), now)
    if quota is not None and not quota.unlimited:
        ctx.budget = Budget(job.namespace, quota, snapshot.usage(job.namespace))
    plan = Plan(namespace=job.namespace, job=job.name, job_version=job.version, job_type=job.type)
    by_group: dict[str, list[AllocInfo]] = {}
    for a in snapshot.allocs_of_job(job.namespace, job.name):
        by_group.setdefault(a.group, []).append(a)
    if job.type == "system":
        _system(ctx, plan, by_group)
    else:
        _generic(ctx, plan, by_group)
    due = [g.next_reschedule_at for g in plan.groups.values() if g.next_reschedule_at is not None]
    plan.next_eval_at = min(due) if due else None
    return plan


# --- service and batch ----------------------------------------------------------------------


def _generic(ctx: PlanContext, plan: Plan, by_group: dict[str, list[AllocInfo]]) -> None:
    job, snap = ctx.job, ctx.snapshot
    decisions = []
    for group in job.groups:
        allocs = by_group.get(group.name, [])
        filt = ClassFilter(job, group, snap.memo)
        feasible = {}
        for a in allocs:
            node = snap.node(a.node_id)
            if node is not None and a.node_id not in feasible:
                feasible[a.node_id] = (filt.check_class(node.cls) is None
                                       and filt.check_node(node) is None)
        d = reconcile_group(job, group, allocs, snap, ctx.now, feasible,
                            room=lambda a, g: _reserve_resize(ctx, a, g))
        gp = plan.groups[group.name] = GroupPlan(
            name=group.name, desired=0 if job.stop else group.count, spec=group,
            previous_spec=_previous_spec(allocs, job.version) or group,
            in_place=len(d.in_place), replace=len(d.replace), migrate=len(d.migrate),
            reschedule=len(d.reschedule) + len(d.lost) + len(d.replace_unknown),
            place=len(d.place),
            canary=len(d.canary), unchanged=len(d.keep), waiting=d.waiting,
            next_reschedule_at=d.next_reschedule_at,
            notes=d.notes)
        # Stops for good come first so that what they free is available to every group.
        for a, why in d.stop:
            _stop(ctx, plan, a, why)
        gp.stop = len(d.stop)
        for a in d.lost:
            if a.occupies:
                _stop(ctx, plan, a, STOP_LOST, lost=True)
        for a in d.lost_replaced:
            _stop(ctx, plan, a, STOP_REPLACED_WHILE_AWAY, lost=True)
        for a in d.in_place:
            plan.updates.append(InPlaceUpdate(
                alloc_id=a.id, name=a.name, node_id=a.node_id, node_name=_node_name(snap, a),
                from_version=a.job_version, to_version=job.version,
                resize=is_resize(a.spec, group)))
        decisions.append((group, d))
    for name, allocs in by_group.items():
        if name not in plan.groups:
            d = reconcile_group(job, None, allocs, snap, ctx.now)
            plan.groups[name] = GroupPlan(name=name, stop=len(d.stop),
                                          previous_spec=_previous_spec(allocs, job.version))
            for a, why in d.stop:
                _stop(ctx, plan, a, why)

    if job.stop:
        return
    for group, d in decisions:
        placer = GroupPlacer(ctx, group, group.count, by_group.get(group.name, []))
        run = _GroupPlacements(ctx, plan, group, placer)
        for a in d.replace:
            run.paired(a, STOP_REPLACED, "replacement", preferred=snap.node(a.node_id))
        for a in d.migrate:
            run.paired(a, STOP_DRAIN, "migrate", penalty=frozenset((a.node_id,)))
        for a in d.lost:
            run.attempt(a.index, "lost", a)
        for a in d.replace_unknown:  # the original stays: it may come back (disconnect)
            run.attempt(a.index, "disconnected", a)
        for a in d.reschedule:
            run.attempt(a.index, "reschedule", a, penalty=frozenset((a.node_id,)),
                        attempts=attempts_in_window(group.reschedule, a, ctx.now) + 1)
        for i in d.canary:
            run.attempt(i, "canary", canary=True)
        for i in d.place:
            run.attempt(i, "new")


class _GroupPlacements:
    """Places one group's allocations; after the first failure the rest are unplaced too
    (the same ask cannot fit once it did not), without searching again."""

    def __init__(self, ctx: PlanContext, plan: Plan, group: Group, placer: GroupPlacer) -> None:
        self.ctx, self.plan, self.group, self.placer = ctx, plan, group, placer
        self.gp = plan.groups[group.name]
        self.failed = False

    def attempt(self, index: int, reason: str, previous: AllocInfo | None = None,
                penalty: frozenset[str] = frozenset(), preferred: NodeState | None = None,
                attempts: int = 0, canary: bool = False) -> bool:
        over = None if self.failed else _over_quota(self.ctx, self.group)
        choice = None if self.failed or over else self.placer.place(penalty, preferred)
        if choice is None:
            if not self.failed:
                self.gp.failure = NodeMetrics(quota=over) if over else self.placer.explain()
            self.failed = True
            self.gp.unplaced += 1
            return False
        self.plan.placements.append(_placement(self.ctx, self.group, index, choice, reason,
                                               previous, attempts, canary))
        return True

    def paired(self, old: AllocInfo, why: str, reason: str,
               penalty: frozenset[str] = frozenset(), preferred: NodeState | None = None) -> None:
        """Stop ``old`` and place its successor; if no node takes it, ``old`` keeps running."""
        self.placer.release(old)
        if self.attempt(old.index, reason, old, penalty, preferred):
            self.plan.stops.append(Stop(alloc_id=old.id, name=old.name, node_id=old.node_id,
                                        node_name=_node_name(self.ctx.snapshot, old),
                                        reason=why))
        else:
            self.placer.release(old, -1)


def _over_quota(ctx: PlanContext, group: Group) -> str | None:
    """Why the namespace's quota has no room for one more of ``group`` (None: it has)."""
    if ctx.budget is None:
        return None
    return ctx.budget.refusal(group.resources.cpu_millicores, group.resources.memory_mb)


def _node_name(snap: ClusterSnapshot, a: AllocInfo) -> str:
    node = snap.node(a.node_id)
    return node.info.name if node is not None else ""


def _stop(ctx: PlanContext, plan: Plan, a: AllocInfo, why: str, *, lost: bool = False) -> None:
    plan.stops.append(Stop(alloc_id=a.id, name=a.name, node_id=a.node_id, reason=why, lost=lost,
                           node_name=_node_name(ctx.snapshot, a)))
    if a.occupies:
        ctx.free(a)


def _placement(ctx: PlanContext, group: Group, index: int, choice: Choice, reason: str,
               previous: AllocInfo | None, attempts: int = 0, canary: bool = False) -> Placement:
    job, res = ctx.job, group.resources
    return Placement(
        alloc_id=ctx.new_alloc_id(), namespace=job.namespace, job=job.name, group=group.name,
        index=index, node_id=choice.node.info.id, node_name=choice.node.info.name,
        cpu_millicores=res.cpu_millicores, memory_mb=res.memory_mb, ports=choice.ports,
        reason=reason, previous_alloc=previous.id if previous else "",
        reschedule_attempts=attempts, canary=canary, score=choice.score)


def _previous_spec(allocs: Iterable[AllocInfo], version: int) -> Group | None:
    """The spec most running allocations of older versions have (for the plan diff)."""
    older = [a for a in allocs if a.occupies and a.spec is not None and a.job_version != version]
    if not older:
        return None
    (v, _), = Counter(a.job_version for a in older).most_common(1)
    return next(a.spec for a in older if a.job_version == v)


# --- system ---------------------------------------------------------------------------------


def _system(ctx: PlanContext, plan: Plan, by_group: dict[str, list[AllocInfo]]) -> None:
    job = ctx.job
    for name, allocs in by_group.items():
        if job.stop or name not in {g.name for g in job.groups}:
            why = STOP_JOB if job.stop else STOP_GROUP_REMOVED
            gp = plan.groups[name] = GroupPlan(name=name)
            for a in sorted(allocs, key=lambda a: a.node_id):
                if a.occupies:
                    _stop(ctx, plan, a, why)
                    gp.stop += 1
    if job.stop:
        return
    for group in job.groups:
        _system_group(ctx, plan, group, by_group.get(group.name, []))


def _system_group(ctx: PlanContext, plan: Plan, group: Group, allocs: list[AllocInfo]) -> None:
    job, snap = ctx.job, ctx.snapshot
    gp = plan.groups[group.name] = GroupPlan(
        name=group.name, spec=group,
        previous_spec=_previous_spec(allocs, job.version) or group)
    placer = GroupPlacer(ctx, group, 1, allocs)
    filt = placer.filter
    live: dict[str, list[AllocInfo]] = {}
    done: set[str] = set()   # nodes with a failed or finished allocation of this version
    for a in allocs:
        if a.occupies:
            live.setdefault(a.node_id, []).append(a)
        elif a.desired == "run" and a.job_version == job.version:
            done.add(a.node_id)

    # Allocations on nodes that left the snapshot are lost.
    for node_id in sorted(set(live) - {n.info.id for n in snap.order if n.info.id in live}):
        for a in live.pop(node_id):
            _stop(ctx, plan, a, STOP_LOST, lost=True)
            gp.stop += 1

    metrics = NodeMetrics()
    destructive: list[tuple[AllocInfo, NodeState]] = []
    in_flight = 0
    for node in snap.order:
        here = sorted(live.get(node.info.id, []),
                      key=lambda a: (-a.job_version, not a.healthy, a.id))
        for extra in here[1:]:
            _stop(ctx, plan, extra, STOP_DUPLICATE)
            gp.stop += 1
        current = here[0] if here else None
        status = node_unavailable(node)
        if status == "down":
            if current is not None:
                _stop(ctx, plan, current, STOP_LOST, lost=True)
                gp.stop += 1
            continue
        if status == "draining" and not node.info.drain_ignore_system_jobs:
            if current is not None:
                _stop(ctx, plan, current, STOP_DRAIN)
                gp.stop += 1
            continue
        fits = filt.check_class(node.cls) is None and filt.check_node(node) is None
        if not fits:
            if current is not None:
                _stop(ctx, plan, current, STOP_INFEASIBLE)
                gp.stop += 1
            continue
        if current is not None:
            gp.desired += 1
            if current.job_version == job.version:
                gp.unchanged += 1
                in_flight += not current.healthy
            elif is_destructive(current.spec, group) or not _reserve_resize(ctx, current, group):
                destructive.append((current, node))
            else:
                gp.in_place += 1
                plan.updates.append(InPlaceUpdate(
                    alloc_id=current.id, name=current.name, node_id=node.info.id,
                    node_name=node.info.name, from_version=current.job_version,
                    to_version=job.version, resize=is_resize(current.spec, group)))
            continue
        if status is not None or node.info.id in done:
            continue  # ineligible or initializing: nothing new; failed here: not retried
        gp.desired += 1
        gp.place += 1
        over = _over_quota(ctx, group)
        if over:
            metrics.quota = over
            gp.unplaced += 1
            continue
        problem = placer.problem(node)
        if problem is not None:
            metrics.add(*problem)
            metrics.evaluated += 1
            gp.unplaced += 1
            continue
        choice = placer.commit(Choice(node, placer.score_on(node)))
        plan.placements.append(_placement(ctx, group, 0, choice, "new", None))

    parallel = max(0, group.update.max_parallel - in_flight)
    for a, node in destructive:
        if parallel <= 0:
            gp.waiting += 1
            continue
        parallel -= 1
        gp.replace += 1
        placer.release(a)
        over = _over_quota(ctx, group)
        problem = ("quota", over) if over else placer.problem(node)
        if problem is None:
            choice = placer.commit(Choice(node, placer.score_on(node)))
            plan.stops.append(Stop(alloc_id=a.id, name=a.name, node_id=a.node_id,
                                   node_name=node.info.name, reason=STOP_REPLACED))
            plan.placements.append(_placement(ctx, group, 0, choice, "replacement", a))
        else:
            placer.release(a, -1)
            if over:
                metrics.quota = over
            else:
                metrics.add(*problem)
                metrics.evaluated += 1
            gp.unplaced += 1
    if gp.unplaced:
        gp.failure = metrics


def _reserve_resize(ctx: PlanContext, a: AllocInfo, group: Group) -> bool:
    """Whether ``a`` can grow to ``group``'s resources on its node, counting what the plan
    already placed or grew there; when it can, the growth is reserved."""
    want = group.resources
    grow_cpu = want.cpu_millicores - a.cpu_millicores
    grow_mem = want.memory_mb - a.memory_mb
    node = ctx.snapshot.node(a.node_id)
    if node is None:
        return grow_cpu <= 0 and grow_mem <= 0
    d = ctx.delta(node)
    if (grow_cpu > 0 and node.cpu_used + d.cpu + grow_cpu > node.cpu_total) or \
            (grow_mem > 0 and node.mem_used + d.mem + grow_mem > node.mem_total):
        return False
    if ctx.budget is not None:
        if ctx.budget.refusal(max(grow_cpu, 0), max(grow_mem, 0), allocations=0):
            return False
        ctx.budget.take(grow_cpu, grow_mem, allocations=0)
    d.cpu += grow_cpu
    d.mem += grow_mem
    return True
