"""The leader's scheduling loop: level-triggered evaluations of jobs, health, deployments.

Any change that may matter for a job (it was registered or stopped, a node went
down or came back, an allocation failed or turned healthy, a reschedule delay
ran out) queues an *evaluation* of that job; queued evaluations of the same job
coalesce. An evaluation hands the job and the cluster snapshot to the pure
scheduler and commits the plan it returns. The loop also runs every
``reconcile_interval`` over every job whose inputs changed since its last evaluation
found nothing to do (its allocations, its version, the nodes, namespaces), so that
anything missed is repaired without evaluating a thousand settled jobs every time.

Health and deployments are followed from what commits touch: an allocation is looked
at again when a commit changes it or, when its agent does not judge its health itself
(``deployment_health``; an older agent), when its ``min_healthy_time`` runs out, a
deployment when its job's allocations changed or one of its deadlines falls due, at
most every ``DEPLOYMENT_BATCH`` seconds (as Nomad's deployment watcher batches), so a
pass costs what changed, not what exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import logging
import time
import uuid
from collections.abc import Callable

from controller.cluster import Cluster
from controller.deployments import ACTIVE, assess, has_checks, health_updates
from controller.namespaces import META_PREFIX as NAMESPACE_META
from controller.namespaces import Namespaces
from controller.planner import event, new_deployment, plan_summary, plan_to_changes
from controller.scheduler import AllocInfo, SchedulerConfig, schedule
from controller.state import RUN, TERMINAL, job_key
from controller.store.base import Changes, JobKey
from orch.metrics import LATENCY, Hist
from orch.v1 import controller_pb2, job_pb2, node_pb2
from orch.vocab import namespace_of

log = logging.getLogger("controller")
NS = 1_000_000_000
MAX_KEPT_CHANGES = 100
"""Planned changes an evaluation kept in the history lists (the rest are counted): a plan
placing a thousand allocations would otherwise keep a thousand lines per evaluation."""
HEALTH_BATCH = 5000
"""Allocations one health pass looks at, at most (the rest wait for the next pass, so
that a burst of reports does not hold the loop for seconds)."""
DEPLOYMENT_BATCH = 0.25
"""Seconds between two looks at the deployments whose allocations changed (changes that
come meanwhile are looked at together)."""


class Evaluator:
    def __init__(self, cluster: Cluster, *, reconcile_interval: float = 30.0,
                 scheduler: SchedulerConfig | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cluster = cluster
        self.state = cluster.state
        self.reconcile_interval = reconcile_interval
        self.scheduler = scheduler or SchedulerConfig()
        self.clock = clock
        self.namespaces = Namespaces(self.state)
        """Their quotas bound what a plan places."""
        self._queue: dict[JobKey, str] = {}
        self._first: dict[JobKey, str] = {}
        """Evaluations someone waits for (an API write): taken before ``_queue``'s, so that a
        write is not answered after a sweep of every job (a new leader, a node lost)."""
        self._waiters: dict[JobKey, list[asyncio.Future[controller_pb2.Evaluation]]] = {}
        self._due: dict[JobKey, float] = {}
        """Jobs to evaluate again at a given time (a reschedule delay ends)."""
        self._settled: dict[JobKey, tuple[int, ...]] = {}
        """Jobs whose last evaluation found nothing to do, with what it looked at then: the
        periodic sweep leaves them be while that is the same."""
        self._blocked: set[JobKey] = set()
        """Jobs with unplaced allocations: evaluated again when capacity may have appeared."""
        self._health_due: float | None = None
        self._health_all = True
        """Look at every allocation's health at the next pass (a new term starts)."""
        self._health_ids: set[str] = set()
        """Allocations changed since the last health pass."""
        self._health_later: dict[str, int] = {}
        """Allocations that turn healthy at a time unless they change (id -> time, ns)."""
        self._health_heap: list[tuple[int, str]] = []
        """The same times in a heap (stale entries are skipped)."""
        self._dirty_jobs: set[JobKey] = set()
        """Jobs whose allocations, versions or deployments changed since their last look."""
        self._urgent_jobs: set[JobKey] = set()
        """Of those, jobs with an allocation that failed or was lost: looked at before the
        job is evaluated again (which replaces it), whatever the batch."""
        self._judged: set[JobKey] = set()
        """Jobs with allocations whose agents' verdicts changed their health (evaluated again
        after the next health pass, as those the pass itself changes)."""
        self._dep_checks: dict[str, int] = {}
        """Deployment id -> when one of its deadlines falls due (ns)."""
        self._deployments_at = 0.0
        """When the deployments were last looked at (monotonic)."""
        self._health_at = 0.0
        """When the last health pass ran (monotonic)."""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.evaluations = 0
        self.placements = 0
        self.stops = 0
        self.scheduling_latency = Hist(LATENCY)
        self.pass_latency = Hist(LATENCY)
        """How long one pass of the loop takes (health, deployments, queued evaluations)."""
        cluster.listeners.append(self._on_commit)

    # --- queueing ------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self._queue) + len(self._first)

    @property
    def blocked(self) -> int:
        """Jobs with allocations that found no node."""
        return len(self._blocked)

    def enqueue(self, key: JobKey, reason: str, *, first: bool = False) -> None:
        if first:
            self._queue.pop(key, None)
            self._first.setdefault(key, reason)
        elif key not in self._first:
            self._queue.setdefault(key, reason)
        self._wake.set()

    def _take(self) -> tuple[JobKey, str] | None:
        """The next evaluation: those waited for first, then in the order queued."""
        queue = self._first or self._queue
        if not queue:
            return None
        key = next(iter(queue))
        return key, queue.pop(key)

    def enqueue_all(self, reason: str, *, system_only: bool = False) -> None:
        for key, versions in self.state.jobs.items():
            if not system_only or versions[-1].type == job_pb2.JOB_TYPE_SYSTEM:
                self.enqueue(key, reason)

    async def evaluate_now(self, key: JobKey, reason: str) -> controller_pb2.Evaluation:
        """Queue an evaluation and wait for its outcome."""
        fut: asyncio.Future[controller_pb2.Evaluation] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(fut)
        self.enqueue(key, reason, first=True)
        return await fut

    def health_changed(self, keys: set[JobKey]) -> None:
        """Agents' verdicts changed the health of these jobs' allocations (committed)."""
        if keys:
            self._judged |= keys
            self._wake.set()

    def _on_commit(self, changes: Changes) -> None:
        """Wake on what changes placements (failed or finished allocations, nodes) and on
        what changes health and deployments.

        An allocation that ends while still desired to run (it failed, finished, or was
        lost) makes its job evaluated again. One that ends after it was stopped does not:
        whatever stopped it (a plan, an operator, a drain) evaluated its job already, and
        what it frees is offered to the jobs waiting for room. (Each plan that replaces lost
        allocations writes them lost: that commit alone would evaluate its job a second
        time.)"""
        for a in changes.put_allocs:
            self._health_ids.add(a.id)
            self._dirty_jobs.add(job_key(a))
            if a.client_status in TERMINAL:
                self._urgent_jobs.add(job_key(a))
                if a.desired_status == RUN:
                    self.enqueue(job_key(a), "alloc-update")
        if changes.put_allocs or changes.put_deployments:
            self._wake.set()  # the health pass looks at what changed
        for alloc_id in changes.delete_allocs:
            self._health_later.pop(alloc_id, None)
        self._dirty_jobs.update(job_key(j) for j in changes.put_jobs)
        self._dirty_jobs.update((namespace_of(d.namespace), d.job) for d in changes.put_deployments)
        if changes.put_nodes or any(a.client_status in TERMINAL for a in changes.put_allocs) \
                or any(k.startswith(NAMESPACE_META) for k in (*changes.meta, *changes.delete_meta)):
            for key in self._blocked:
                self.enqueue(key, "capacity")
            self._blocked.clear()

    # --- the loop ------------------------------------------------------------------------------

    def start(self) -> None:
        self._health_all = True  # a new term: the state may be new too
        self._task = asyncio.create_task(self.run(), name="evaluator")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for futs in self._waiters.values():
            for f in futs:
                if not f.done():
                    f.cancel()

    async def run(self) -> None:
        next_sweep = time.monotonic() + self.reconcile_interval
        while True:
            now = self.clock()
            timeout = next_sweep - time.monotonic()
            due = [t for t in self._due.values()]
            if self._health_due is not None:
                due.append(self._health_due)
            if due:
                timeout = min(timeout, min(due) - now)
            if timeout > 0 and not self.queue_depth:
                self._wake.clear()
                # asyncio.timeout, not wait_for: on 3.11 wait_for drops a cancellation that
                # arrives as the event is set, and stop() then waits for ever
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
            now = self.clock()
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + self.reconcile_interval
                self._sweep()
            for key, at in list(self._due.items()):
                if at <= now:
                    del self._due[key]
                    self.enqueue(key, "reschedule-delay")
            try:
                t0 = time.perf_counter()
                await self.health_pass()
                while (taken := self._take()) is not None:
                    key, reason = taken
                    ev = await self.evaluate(key, reason)
                    for fut in self._waiters.pop(key, []):
                        if not fut.done():
                            fut.set_result(ev)
                    if time.monotonic() - self._health_at >= DEPLOYMENT_BATCH:
                        await self.health_pass()  # a long queue does not hold health back
                await self.health_pass()
                while self._health_ids and not self.queue_depth:
                    await self.health_pass()
                self.pass_latency.observe(time.perf_counter() - t0)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in one pass must not stop scheduling for good
                log.exception("scheduling pass failed; retrying in 1 s")
                await asyncio.sleep(1.0)

    def _inputs(self, key: JobKey) -> tuple[int, ...]:
        """What an evaluation of the job reads that can change: its allocations, its latest
        version, the nodes, the namespaces and settings."""
        job = self.state.job(key)
        snap = self.state.snapshot
        return (snap.job_changed(*key), snap.node_version, job.version if job else -1,
                int(job.stop) if job else 1, self.state.meta_index)

    def _sweep(self) -> None:
        """Evaluate every job again, except those settled since nothing they read changed."""
        self._settled = {k: v for k, v in self._settled.items() if k in self.state.jobs}
        for key in self.state.jobs:
            if self._settled.get(key) != self._inputs(key):
                self.enqueue(key, "periodic")

    # --- one evaluation ------------------------------------------------------------------------

    async def evaluate(self, key: JobKey, reason: str) -> controller_pb2.Evaluation:
        async with self.cluster.lock:
            return await self._evaluate(key, reason)

    async def _evaluate(self, key: JobKey, reason: str) -> controller_pb2.Evaluation:
        state = self.state
        now = self.clock()
        now_ns = int(now * NS)
        self.evaluations += 1
        job_pb = state.job(key)
        if job_pb is None:  # purged: stop whatever is left
            job_pb = job_pb2.Job(name=key[1], namespace=key[0], stop=True,
                                 version=max((a.job_version for a in state.allocs_of_job(key)),
                                             default=0))
        job = state.model(job_pb)
        if job.is_parent:  # periodic and parameterized jobs run as their children only
            job = dataclasses.replace(job, stop=True)
        inputs = self._inputs(key)
        t0 = time.perf_counter()
        plan = schedule(job, state.snapshot, now, seed=state.seed(), config=self.scheduler,
                        quota=self.namespaces.quota(key[0]))
        self.scheduling_latency.observe(time.perf_counter() - t0)
        self.placements += len(plan.placements)
        self.stops += len(plan.stops)
        ev = controller_pb2.Evaluation(
            id=str(uuid.uuid4()), namespace=key[0], job=key[1], job_version=job.version,
            triggered_by=reason, create_time_ns=now_ns, plan=plan_summary(plan),
            status="blocked" if plan.unplaced else "complete", description="; ".join(plan.explain()))
        if plan.next_eval_at is not None:
            self._due[key] = plan.next_eval_at
        else:
            self._due.pop(key, None)
        if plan.unplaced:
            self._blocked.add(key)
        else:
            self._blocked.discard(key)
        if plan.is_noop and not plan.unplaced and plan.next_eval_at is None:
            self._settled[key] = inputs
        else:
            self._settled.pop(key, None)
        changes = Changes()
        dep_id = ""
        latest = state.latest_deployment(key)
        if latest is not None and latest.job_version == job.version and latest.status in ACTIVE:
            dep_id = latest.id
        elif not job.stop and not plan.is_noop:
            dep = new_deployment(job, plan, now_ns)
            if dep is not None:
                dep_id = dep.id
                changes.put_deployments.append(dep)
                changes.events.append(event("deployment", "DeploymentCreated", dep.id,
                                            f"deployment of {job.name} version {job.version}",
                                            now_ns, deployment=dep))
                if latest is not None and latest.status in ACTIVE:
                    old = controller_pb2.Deployment()
                    old.CopyFrom(latest)
                    old.status = "cancelled"
                    old.description = f"superseded by version {job.version}"
                    old.modify_time_ns = now_ns
                    changes.put_deployments.append(old)
        if job.stop and latest is not None and latest.status in ACTIVE:
            old = controller_pb2.Deployment()
            old.CopyFrom(latest)
            old.status, old.description, old.modify_time_ns = "cancelled", "job stopped", now_ns
            changes.put_deployments.append(old)
        pc = plan_to_changes(state, job_pb, job, plan, now_ns, dep_id)
        changes.put_allocs += pc.put_allocs
        changes.events += pc.events
        if not plan.is_noop or plan.unplaced or reason not in ("periodic", "alloc-update",
                                                                "capacity"):
            changes.put_evaluations.append(_kept(ev))
        if not plan.is_noop:
            log.info("evaluation", extra={"job": key[1], "reason": reason,
                                          "placed": len(plan.placements), "stopped": len(plan.stops),
                                          "updated": len(plan.updates), "unplaced": plan.unplaced})
        await self.cluster.commit(changes)
        return ev

    # --- health and deployments ----------------------------------------------------------------

    async def health_pass(self) -> None:
        """Mark allocations healthy or not, and move deployments along."""
        self._health_at = time.monotonic()
        async with self.cluster.lock:
            now_ns = int(self.clock() * NS)
            updates, due = self._health_updates(now_ns)
            changes = Changes(put_allocs=updates)
            touched = {job_key(a) for a in updates} | self._judged
            self._judged = set()
            for a in updates:
                changes.events.append(event(
                    "allocation", "AllocationHealthy" if a.healthy else "AllocationUnhealthy",
                    a.id, f"{a.name} is {'healthy' if a.healthy else 'not healthy'}", now_ns))
            checks: list[int] = [] if due is None else [due]
            waited = time.monotonic() - self._deployments_at
            fresh = {a.id: a for a in updates}
            if waited >= DEPLOYMENT_BATCH or self._health_all:
                self._deployments_at = time.monotonic()
                dirty, self._dirty_jobs = self._dirty_jobs, set()
                self._deployments(now_ns, dirty, fresh, touched, changes, checks)
            else:
                if self._urgent_jobs:
                    self._deployments(now_ns, self._urgent_jobs, fresh, touched, changes, checks)
                    self._dirty_jobs -= self._urgent_jobs
                if self._dirty_jobs or touched:
                    checks.append(now_ns + int((DEPLOYMENT_BATCH - waited) * NS))
            self._urgent_jobs = set()
            self._health_all = False
            await self.cluster.commit(changes)
            self._health_due = min(checks) / NS if checks else None
        for key in touched:
            self.enqueue(key, "deployment")

    def _health_updates(self, now_ns: int) -> tuple[list[node_pb2.Allocation], int | None]:
        """The health changes due now, of what changed and what waited for this time; and
        when the next one falls due."""
        if self._health_all:  # a new term: whatever may not be as it should
            self._health_ids |= {i for i, a in self.state.snapshot.allocs.items()
                                 if _unsettled(a)}
            self._health_later.clear()
            self._health_heap.clear()
        ids: set[str] = set()
        while self._health_ids and len(ids) < HEALTH_BATCH:
            ids.add(self._health_ids.pop())
        later, heap = self._health_later, self._health_heap
        while heap and heap[0][0] <= now_ns and len(ids) < 2 * HEALTH_BATCH:
            at, alloc_id = heapq.heappop(heap)
            if later.get(alloc_id) == at:
                del later[alloc_id]
                ids.add(alloc_id)
        updates, waiting = health_updates(self.state, now_ns, ids)
        for alloc_id in ids:
            self._health_later.pop(alloc_id, None)
        for alloc_id, at in waiting.items():
            self._health_later[alloc_id] = at
            heapq.heappush(self._health_heap, (at, alloc_id))
        if len(self._health_heap) > 2 * len(self._health_later) + 1024:  # drop stale entries
            self._health_heap = [(at, i) for i, at in self._health_later.items()]
            heapq.heapify(self._health_heap)
        while self._health_heap and self._health_later.get(self._health_heap[0][1]) != \
                self._health_heap[0][0]:
            heapq.heappop(self._health_heap)
        return updates, self._health_heap[0][0] if self._health_heap else None

    def _deployments(self, now_ns: int, jobs: set[JobKey], fresh: dict[str, node_pb2.Allocation],
                     touched: set[JobKey], changes: Changes, checks: list[int]) -> None:
        """Bring the deployments of ``jobs`` (whose allocations changed) and of those whose
        deadlines fell due up to date, adding what that changes to ``changes``."""
        state = self.state
        dirty = jobs | {job_key(a) for a in fresh.values()}
        fresh_infos = {i: state.alloc_info(a) for i, a in fresh.items()}
        for dep in list(state.deployments.values()):
            if dep.status not in ACTIVE:
                self._dep_checks.pop(dep.id, None)
                continue
            key = (namespace_of(dep.namespace), dep.job)
            check = self._dep_checks.get(dep.id)
            if not self._health_all and key not in dirty and (check is None or check > now_ns):
                if check is not None:
                    checks.append(check)
                continue
            job_pb = state.job_version(key, dep.job_version)
            if job_pb is None:
                continue
            infos = [fresh_infos.get(a.id, a) for a in state.snapshot.allocs_of_job(*key)]
            verdict = assess(dep, state.model(job_pb), infos, now_ns)
            if verdict.next_check_ns is not None:
                checks.append(verdict.next_check_ns)
                self._dep_checks[dep.id] = verdict.next_check_ns
            else:
                self._dep_checks.pop(dep.id, None)
            if not verdict.changed:
                continue
            d = verdict.deployment
            changes.put_deployments.append(d)
            if d.status != dep.status:  # counters change often; say only when status does
                changes.events.append(event("deployment", f"Deployment{d.status.capitalize()}",
                                            d.id, f"{d.job} version {d.job_version}: "
                                            f"{d.description}", now_ns, deployment=d))
            touched.add(key)
            changes.put_allocs += self._clear_promoted_canaries(d, fresh)
            if d.status == "successful":
                stable = job_pb2.Job()
                stable.CopyFrom(job_pb)
                stable.stable = True
                changes.put_jobs.append(stable)
            elif d.status == "failed" and any(g.auto_revert for g in d.groups):
                self._revert(key, d, changes, now_ns)

    def _clear_promoted_canaries(self, d: controller_pb2.Deployment,
                                 fresh: dict[str, node_pb2.Allocation]) -> list[node_pb2.Allocation]:
        """Promoted canaries become ordinary allocations (and take over their index)."""
        promoted = {g.group for g in d.groups if g.promoted}
        if not promoted:
            return []
        out = []
        canaries = [i.id for i in self.state.snapshot.allocs_of_job(namespace_of(d.namespace), d.job)
                    if i.canary and i.group in promoted and i.desired == "run"]
        for alloc_id in canaries:
            if alloc_id in fresh:  # already being rewritten in this commit
                if fresh[alloc_id].deployment_id == d.id:
                    fresh[alloc_id].canary = False
                continue
            a = self.state.allocs[alloc_id]  # a copy of its own
            if a.deployment_id == d.id:
                a.canary = False
                out.append(a)
        return out

    def _revert(self, key: JobKey, d: controller_pb2.Deployment, changes: Changes,
                now_ns: int) -> None:
        versions = self.state.jobs.get(key, [])
        stable = [v for v in versions if v.stable and v.version < d.job_version and not v.stop]
        if not stable:
            d.description += "; no stable version to roll back to"
            return
        target = stable[-1]
        latest = versions[-1]
        if latest.version != d.job_version:
            return  # someone registered a newer version meanwhile: leave it be
        back = job_pb2.Job()
        back.CopyFrom(target)
        back.version = latest.version + 1
        back.stable = False
        back.submit_time_ns = now_ns
        changes.put_jobs.append(back)
        d.description += f"; rolling back to version {target.version} (as version {back.version})"
        changes.events.append(event("job", "JobReverted", key[1], d.description, now_ns, job=back))


def _kept(ev: controller_pb2.Evaluation) -> controller_pb2.Evaluation:
    """The evaluation as the history keeps it: its first ``MAX_KEPT_CHANGES`` changes."""
    n = len(ev.plan.changes)
    if n <= MAX_KEPT_CHANGES:
        return ev
    kept = controller_pb2.Evaluation()
    kept.CopyFrom(ev)
    del kept.plan.changes[MAX_KEPT_CHANGES:]
    kept.plan.changes_omitted = n - MAX_KEPT_CHANGES
    return kept


def _unsettled(a: AllocInfo) -> bool:
    """Whether an allocation's health may have to change (what a new term looks at): all but
    those that run, healthy, without checks, and those stopped and not healthy."""
    if a.desired != "run":
        return a.healthy
    return not a.healthy or a.client != "running" or a.spec is None or has_checks(a.spec)
