"""What a group's existing allocations need, before any node is chosen.

For one group of a service or batch job this sorts the allocations into:
keep as they are, update in place, replace (destructive update), reschedule
(failed), replace because lost (node down or gone), migrate (node draining),
stop (count reduced, duplicates, group removed, job stopped), and which
indexes need a new allocation. Destructive updates and migrations respect the
group's ``update.max_parallel`` (minus the new-version allocations not yet
healthy); the rest wait for a later plan.

Canaries (``update.canary``, service jobs): a destructive update first places
that many allocations of the new version *beside* the old ones, marked
``canary``, and replaces nothing else until they are promoted: the controller
clears their ``canary`` flag (``orchctl job promote``), or, with
``auto_promote``, they all turn healthy. A promoted canary takes over its
index (the old allocation there stops); the rest then rolls as usual. A
canary that fails is not replaced: the update waits for a fix or a revert.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from controller.scheduler.snapshot import AllocInfo, ClusterSnapshot
from orch.jobspec.model import Group, Job, ReschedulePolicy, Resources, Task

STOP_COUNT = "count reduced"
STOP_DUPLICATE = "duplicate index"
STOP_GROUP_REMOVED = "group removed from the job"
STOP_JOB = "job stopped"
STOP_REPLACED = "replaced by a new version"
STOP_LOST = "node down"
STOP_DRAIN = "node draining"
STOP_INFEASIBLE = "node no longer matches the job's constraints"
STOP_CANARY = "replaced by a promoted canary"
STOP_SUPERSEDED = "superseded by a newer version at the same index"
STOP_STALE_CANARY = "canary of a superseded version"
STOP_RECONNECTED = "reconnected beside its replacement"
STOP_REPLACED_WHILE_AWAY = "node down past the group's disconnect.lost_after; replaced already"


@dataclass(slots=True)
class GroupDecision:
    """The reconciler's verdict for one group."""

    keep: list[AllocInfo] = field(default_factory=list)
    in_place: list[AllocInfo] = field(default_factory=list)
    replace: list[AllocInfo] = field(default_factory=list)
    reschedule: list[AllocInfo] = field(default_factory=list)
    lost: list[AllocInfo] = field(default_factory=list)
    lost_replaced: list[AllocInfo] = field(default_factory=list)
    """Lost (their node down past ``disconnect.lost_after``) and replaced already: stopped
    as lost, nothing placed."""
    unknown: list[AllocInfo] = field(default_factory=list)
    """On a node that is down for less than the group's ``disconnect.lost_after``: kept
    (they may come back), their index held."""
    replace_unknown: list[AllocInfo] = field(default_factory=list)
    """Unknown ones that get a replacement now (``disconnect.replace``); they are not stopped."""
    migrate: list[AllocInfo] = field(default_factory=list)
    stop: list[tuple[AllocInfo, str]] = field(default_factory=list)
    place: list[int] = field(default_factory=list)
    """Indexes that get a brand-new allocation."""
    canary: list[int] = field(default_factory=list)
    """Indexes that get a canary of the new version beside their current allocation."""
    waiting: int = 0
    next_reschedule_at: float | None = None
    notes: list[str] = field(default_factory=list)


def is_destructive(old: Group | None, new: Group) -> bool:
    """Whether moving an allocation from ``old`` to ``new`` needs a new allocation.

    Anything that changes what runs (the tasks, their image, command, env, ...) or
    how it is wired (the network and ports, the volumes) is destructive; count, services, health
    checks, policies, constraints and meta are updated in place, and so are CPU and
    memory alone (a *resize*: see ``is_resize``) when the node has room. An unknown
    old spec is treated as destructive.
    """
    if old is None:
        return True
    if old.network != new.network or old.volumes != new.volumes \
            or len(old.tasks) != len(new.tasks):
        return True
    return any(_bare(a) != _bare(b) for a, b in zip(old.tasks, new.tasks, strict=True))


def is_resize(old: Group | None, new: Group) -> bool:
    """Whether only the tasks' CPU or memory differ (the engine can change them live)."""
    return old is not None and not is_destructive(old, new) and any(
        a.resources != b.resources for a, b in zip(old.tasks, new.tasks, strict=True))


def _bare(t: Task) -> Task:
    """A task without what changes in place: its checks and its resources."""
    return dataclasses.replace(t, checks=(), resources=Resources())


RoomCheck = Callable[[AllocInfo, Group], bool]
"""Whether an allocation can grow to the group's resources where it runs (and, if so,
reserves the growth for the rest of the plan)."""


def room_to_resize(a: AllocInfo, group: Group, snapshot: ClusterSnapshot) -> bool:
    """Whether the allocation's node can take the group's new CPU and memory where it runs
    (by the snapshot alone; the scheduler also counts the rest of its plan)."""
    want = group.resources
    grow_cpu = want.cpu_millicores - a.cpu_millicores
    grow_mem = want.memory_mb - a.memory_mb
    if grow_cpu <= 0 and grow_mem <= 0:
        return True
    node = snapshot.node(a.node_id)
    return node is not None and node.cpu_used + max(0, grow_cpu) <= node.cpu_total \
        and node.mem_used + max(0, grow_mem) <= node.mem_total


def reschedule_delay(policy: ReschedulePolicy, attempt: int) -> float:
    """Seconds to wait before reschedule number ``attempt + 1`` (0-based ``attempt``)."""
    base = policy.delay
    if policy.delay_function == "constant":
        delay = base
    elif policy.delay_function == "fibonacci":
        a, b = 1, 1
        for _ in range(attempt):
            a, b = b, a + b
        delay = base * a
    else:  # exponential
        delay = base * (2 ** min(attempt, 62))
    return min(delay, policy.max_delay) if policy.max_delay else delay


def attempts_in_window(policy: ReschedulePolicy, alloc: AllocInfo, now: float) -> int:
    """Reschedules that count against ``policy.attempts`` for a failed allocation.

    Only reschedules inside ``policy.interval`` count; an allocation that ran for
    longer than the interval starts the count again.
    """
    if policy.interval and now - alloc.create_time > policy.interval:
        return 0
    return alloc.reschedule_attempts


def keep_on_reconnect(rule: str, original: AllocInfo, replacement: AllocInfo) -> AllocInfo:
    """Which of an allocation that came back and its replacement stays (the other stops).

    ``keep_original`` and ``keep_replacement`` say it; ``longest_running`` keeps the one
    running since the earlier time; ``best_score`` keeps the replacement (placed last, with
    every node's score in view) unless only the original is healthy."""
    if rule == "keep_original":
        return original
    if rule == "keep_replacement":
        return replacement
    if rule == "longest_running":
        return min((original, replacement), key=lambda a: (a.client_since or a.create_time, a.id))
    if original.healthy and not replacement.healthy:
        return original
    return replacement


def _disconnected(group: Group, running: list[AllocInfo], snapshot: ClusterSnapshot, now: float,
                  replaced_ids: set[str], held: set[int], out: GroupDecision) -> list[AllocInfo]:
    """Apply the group's ``disconnect`` block: allocations on a node down for less than
    ``lost_after`` are unknown (kept; replaced at once with ``replace``), past it lost; one
    that came back beside its replacement is reconciled by ``reconcile``. The rest of
    ``running`` is returned."""
    policy = group.disconnect
    if policy is None:
        return running
    by_id = {a.id: a for a in running}
    rest: list[AllocInfo] = []
    losers: set[str] = set()
    for a in running:  # a replacement and its original, both running again
        orig = by_id.get(a.previous_allocation)
        if orig is None or orig.index != a.index or orig.id in losers or a.id in losers:
            continue
        node = snapshot.node(orig.node_id)
        if node is None or node.info.status == "down":
            continue
        keep = keep_on_reconnect(policy.reconcile, orig, a)
        lose = a if keep is orig else orig
        losers.add(lose.id)
        which = "the original" if keep is orig else "the replacement"
        out.stop.append((lose, f"{STOP_RECONNECTED}: kept {which}, {keep.id[:8]} on "
                               f"{_node_name(snapshot, keep)} (disconnect.reconcile "
                               f"{policy.reconcile})"))
    for a in running:
        if a.id in losers:
            continue
        node = snapshot.node(a.node_id)
        if node is None or node.info.status != "down" or policy.lost_after <= 0:
            rest.append(a)
            continue
        lost_at = node.info.status_since + policy.lost_after
        if now >= lost_at:
            if a.id in replaced_ids:
                out.lost_replaced.append(a)
            else:
                rest.append(a)  # lost: replaced below, as any allocation of a down node
            continue
        out.next_reschedule_at = min(lost_at, out.next_reschedule_at or lost_at)
        out.unknown.append(a)
        if a.id in replaced_ids:
            continue  # its replacement holds the index
        held.add(a.index)
        if policy.replace:
            out.replace_unknown.append(a)
    return rest


def _node_name(snapshot: ClusterSnapshot, a: AllocInfo) -> str:
    node = snapshot.node(a.node_id)
    return node.info.name if node is not None else a.node_id[:8]


def reconcile_group(job: Job, group: Group | None, allocs: list[AllocInfo],
                    snapshot: ClusterSnapshot, now: float,
                    still_feasible: dict[str, bool] | None = None,
                    room: RoomCheck | None = None) -> GroupDecision:
    """Sort a group's allocations (any status) into what the plan must do with them.

    ``group`` is None when the job no longer has the group (or the job is stopped).
    ``still_feasible`` maps node ids to whether the node still passes the group's
    class checks (for in-place updates after constraints changed).
    """
    out = GroupDecision()
    live = [a for a in allocs if a.desired == "run"]
    if group is None or job.stop:
        why = STOP_JOB if job.stop else STOP_GROUP_REMOVED
        for a in sorted(live, key=lambda a: -a.index):
            if a.occupies:
                out.stop.append((a, why))
        return out

    count = group.count
    batch = job.type == "batch"
    replaced_ids = {a.previous_allocation for a in allocs if a.previous_allocation}
    held: set[int] = set()      # indexes taken by an allocation that stays (or waits)
    running: list[AllocInfo] = []

    canary_target = group.update.canary if not batch else 0
    for a in live:
        if a.canary and a.client in ("failed", "lost", "complete"):
            if a.job_version == job.version and canary_target:
                out.notes.append(f"canary {a.name} {a.client}; the update waits (fix the job "
                                 f"or revert)")
            continue
        if a.client == "complete":
            if batch and a.index < count:
                held.add(a.index)  # finished work is not redone
            continue
        if a.client in ("failed", "lost"):
            if a.id in replaced_ids or a.index >= count:
                continue
            if a.client == "lost":
                out.lost.append(a)
                held.add(a.index)
                continue
            policy = group.reschedule
            used = attempts_in_window(policy, a, now)
            if not policy.unlimited and used >= policy.attempts:
                out.notes.append(f"{a.name} failed; no reschedule attempts left "
                                 f"({policy.attempts} within {policy.interval:g}s)")
                held.add(a.index)
                continue
            # A failure of an older version is no reason to wait: the job has moved on
            # (an update or a rollback), so its replacement is the new version, at once.
            due = a.modify_time + reschedule_delay(policy, used) if a.job_version == job.version \
                else now
            held.add(a.index)
            if now >= due:
                out.reschedule.append(a)
            else:
                out.next_reschedule_at = min(due, out.next_reschedule_at or due)
            continue
        running.append(a)

    running = _disconnected(group, running, snapshot, now, replaced_ids, held, out)

    # Canaries not promoted yet stand beside the allocations they will replace.
    pending: list[AllocInfo] = []
    if canary_target or any(a.canary for a in running):
        older = {a.index for a in running if a.job_version != job.version and not a.canary}
        current = [a for a in running if a.canary and a.job_version == job.version]
        auto = group.update.auto_promote and current and all(a.healthy for a in current)
        pending = [] if auto else [a for a in current if a.index in older]
        stale = [a for a in running if a.canary and a.job_version != job.version
                 and a.index in {b.index for b in running if not b.canary}]
        out.stop.extend((a, STOP_STALE_CANARY) for a in stale)
        gone = {a.id for a in pending} | {a.id for a in stale}
        running = [a for a in running if a.id not in gone]

    # One allocation per index below count: prefer the newest version, then healthy ones.
    running.sort(key=lambda a: (a.index, -a.job_version, not a.healthy, -a.create_time, a.id))
    kept: list[AllocInfo] = []
    surplus: list[tuple[AllocInfo, str]] = []
    holder: dict[int, AllocInfo] = {}
    for a in running:
        if a.index >= count:
            surplus.append((a, STOP_COUNT))
        elif a.index in held:
            first = holder.get(a.index)
            if first is not None and first.job_version != a.job_version:
                surplus.append((a, STOP_CANARY if first.canary else STOP_SUPERSEDED))
            else:
                surplus.append((a, STOP_DUPLICATE))
        else:
            held.add(a.index)
            holder[a.index] = a
            kept.append(a)
    surplus.sort(key=lambda s: -s[0].index)
    out.stop.extend(surplus)

    # Allocations whose node is gone or down are lost; draining ones migrate.
    staying: list[AllocInfo] = []
    for a in kept:
        node = snapshot.node(a.node_id)
        if node is None or node.info.status == "down":
            out.lost.append(a)
        elif node.info.draining:
            out.migrate.append(a)
        else:
            staying.append(a)

    # Updates to the job's current version.
    destructive: list[AllocInfo] = []
    cache: dict[int, bool] = {}
    for a in staying:
        if a.job_version == job.version:
            out.keep.append(a)
            continue
        key = id(a.spec)
        if key not in cache:
            cache[key] = is_destructive(a.spec, group)
        feasible = still_feasible.get(a.node_id, True) if still_feasible is not None else True
        fits = room(a, group) if room is not None else room_to_resize(a, group, snapshot)
        if cache[key] or not feasible or not fits:
            destructive.append(a)
        else:
            out.in_place.append(a)

    out.keep.extend(pending)
    if canary_target and destructive:
        started = any(a.job_version == job.version and not a.canary for a in staying) \
            or any(a.canary and a.job_version == job.version for a in kept)
        if pending or not started:
            spent = sum(1 for a in live if a.canary and a.job_version == job.version
                        and a.client in ("failed", "lost"))
            missing = canary_target - len(pending) - spent
            have = {a.index for a in pending}
            out.canary = [a.index for a in sorted(destructive, key=lambda a: a.index)
                          if a.index not in have][:max(0, missing)]
            out.waiting += len(destructive)
            if pending and not out.canary and all(a.healthy for a in pending):
                what = "canary waits" if len(pending) == 1 else "canaries wait"
                out.notes.append(f"{len(pending)} healthy {what} for promotion "
                                 f"(orchctl job promote)")
            destructive = []

    budget = len(destructive) + len(out.migrate)
    if not batch:
        in_flight = sum(1 for a in staying if a.job_version == job.version and not a.healthy)
        budget = max(0, group.update.max_parallel - in_flight)
    destructive.sort(key=lambda a: a.index)
    migrating = {a.id for a in out.migrate}
    queue, out.migrate = out.migrate + destructive, []
    for a in queue:  # draining nodes first: they have a deadline
        if budget > 0:
            (out.migrate if a.id in migrating else out.replace).append(a)
            budget -= 1
        else:
            out.waiting += 1

    out.place = [i for i in range(count) if i not in held]
    return out
