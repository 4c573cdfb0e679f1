"""Garbage collection on the leader: what the cluster no longer needs leaves memory and the store.

As Nomad's core scheduler does it, with Nomad's thresholds (``GcPolicy``):

- **dead jobs** (stopped, or batch jobs whose work is over) with nothing left running,
  ``job_threshold`` after the last change, with their allocations, deployments and
  evaluations;
- **allocations** that stopped for good (desired stop and finished, or finished on a node
  that is down or gone), ``eval_threshold`` after their last change. An allocation the
  scheduler still reads is kept: finished batch work and failures without a reschedule
  left of a live job stay while the job does;
- **deployments** that ended (successful, failed, cancelled), ``deployment_threshold``
  after their last change, except each job's latest (``job status`` shows it);
- **evaluations** older than ``eval_threshold``, except each live job's latest (``job
  status`` explains an unplaced group with it);
- **job versions** beyond the latest ``max_versions``, except the stable version a revert
  or an auto-revert goes back to and the versions of deployments still rolling;
- **nodes** down for ``node_threshold`` with nothing left to reschedule there, with what
  finished on them and the key their certificates named. A removed node's entry on the
  deny list (``revoked/<id>``) stays for ever: its id is never admitted again.

``find_garbage`` (pure) lists what may go, as *units*, each deleted whole in one commit
(a job with everything it owns; one allocation; ...). ``GarbageCollector`` deletes the units in
batches of at most ``batch`` records, each batch in its own commit under the cluster's
lock, looking at every unit again just before (it may have changed since it was found):
the lock is never held for longer than one small commit, so scheduling goes on meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from controller.cluster import Cluster
from controller.deployments import ACTIVE
from controller.jobs import job_status
from controller.nodes import forget_node
from controller.planner import event
from controller.state import FAILED, LOST, PENDING, RUN, RUNNING, TERMINAL, ClusterState, job_key
from controller.store.base import Changes, JobKey, StoreSize
from controller.usage import UsageTable
from orch.errors import StoreError
from orch.v1 import controller_pb2, job_pb2, node_pb2
from orch.vocab import namespace_of

log = logging.getLogger("controller.gc")
NS = 1_000_000_000
HOUR = 3600.0
DOWN = node_pb2.NODE_STATUS_DOWN
KINDS = ("jobs", "job_versions", "allocations", "deployments", "evaluations", "nodes")
"""What the collector counts (``orch_controller_gc_collected_total{kind}``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GcPolicy:
    """When a record is garbage (Nomad's defaults), and how much one commit deletes."""

    job_threshold: float = 4 * HOUR
    """Seconds a dead job with nothing running is kept after its last change."""
    eval_threshold: float = 1 * HOUR
    """Seconds an evaluation, or an allocation that stopped for good, is kept."""
    deployment_threshold: float = 1 * HOUR
    """Seconds a deployment that ended is kept after its last change."""
    node_threshold: float = 24 * HOUR
    """Seconds a node that is down is kept before it is forgotten."""
    max_versions: int = 6
    """Versions of a job kept (the newest), besides the stable one a revert needs."""
    batch: int = 500
    """Records deleted by one commit at most: the commit lock is held for one such commit."""
    defrag_interval: float = 24 * HOUR
    """Seconds between defragmentations of the store after a collection (0: never)."""

    def forced(self) -> GcPolicy:
        """The same with no waiting (``orchctl system gc``): everything that is garbage by
        its state goes now, as Nomad's forced collection does."""
        return dataclasses.replace(self, job_threshold=0.0, eval_threshold=0.0,
                                   deployment_threshold=0.0, node_threshold=0.0)


@dataclass(frozen=True, slots=True)
class Unit:
    """Records deleted together (one commit holds whole units only)."""

    kind: str
    """A key of ``KINDS``."""
    key: str
    """The job (namespace/name), version (namespace/name/version) or record id."""
    size: int = 1
    """Records it deletes (a job: its versions, allocations, deployments, evaluations)."""


@dataclass(slots=True)
class Garbage:
    units: list[Unit] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(KINDS, 0)
        for u in self.units:
            out[u.kind] += 1
        return out


# --- what is garbage (pure) ------------------------------------------------------------------------


def _ago(now_ns: int, then_ns: int, threshold: float) -> bool:
    return now_ns - then_ns >= int(threshold * NS)


def _node_gone(state: ClusterState, node_id: str) -> bool:
    node = state.nodes.get(node_id)
    return node is None or node.status == DOWN


def _finished(state: ClusterState, a: node_pb2.Allocation) -> bool:
    """The allocation runs nowhere any more: it finished, or it was to stop and its node is
    down or gone (no agent will say it stopped)."""
    return a.client_status in TERMINAL or (a.desired_status != RUN
                                           and _node_gone(state, a.node_id))


def _last_change(a: node_pb2.Allocation) -> int:
    return max(a.modify_time_ns, a.client_since_ns, a.create_time_ns)


def job_is_dead(state: ClusterState, key: JobKey) -> bool:
    """Stopped, or a batch job whose work is over; and nothing of it runs anywhere."""
    job = state.job(key)
    if job is None:
        return False
    allocs = [state.allocs[i] for i in state.by_job.get(key, ())]
    if any(a.client_status in (PENDING, RUNNING) and not _finished(state, a) for a in allocs):
        return False
    if job.stop:
        return True
    if job.type != job_pb2.JOB_TYPE_BATCH or job_status(allocs, job) != job_pb2.JOB_STATUS_DEAD:
        return False
    # every piece of work ended: dead, unless a failure or a loss will still be placed again
    groups = {g.name: g for g in state.model(job).groups}
    for a in allocs:
        if a.desired_status != RUN or a.client_status not in (FAILED, LOST):
            continue
        group = groups.get(a.group)
        if a.client_status == LOST or group is None or group.reschedule.unlimited \
                or a.reschedule_attempts < group.reschedule.attempts:
            return False
    return True


def job_collectable(state: ClusterState, key: JobKey, now_ns: int, policy: GcPolicy) -> bool:
    if not job_is_dead(state, key):
        return False
    job = state.job(key)
    assert job is not None
    last = max([job.submit_time_ns, *(_last_change(state.allocs[i])
                                      for i in state.by_job.get(key, ()))])
    return _ago(now_ns, last, policy.job_threshold)


def alloc_collectable(state: ClusterState, a: node_pb2.Allocation, now_ns: int,
                      policy: GcPolicy) -> bool:
    if not _finished(state, a) or not _ago(now_ns, _last_change(a), policy.eval_threshold):
        return False
    if a.desired_status == RUN:  # the scheduler still reads it while the job lives
        job = state.job(job_key(a))
        return job is None or job.stop
    return True


def _latest_deployments(state: ClusterState) -> set[str]:
    latest: dict[JobKey, controller_pb2.Deployment] = {}
    for d in state.deployments.values():
        key = (namespace_of(d.namespace), d.job)
        cur = latest.get(key)
        if cur is None or (d.create_time_ns, d.id) > (cur.create_time_ns, cur.id):
            latest[key] = d
    return {d.id for d in latest.values()}


def deployment_collectable(d: controller_pb2.Deployment, now_ns: int, policy: GcPolicy) -> bool:
    return d.status not in ACTIVE and _ago(now_ns, d.modify_time_ns or d.create_time_ns,
                                           policy.deployment_threshold)


def _latest_evaluations(state: ClusterState) -> set[str]:
    latest: dict[JobKey, str] = {}
    for e in state.evaluations:  # oldest first: the last one seen is the latest
        latest[(namespace_of(e.namespace), e.job)] = e.id
    return {eid for key, eid in latest.items() if key in state.jobs}


def versions_to_drop(state: ClusterState, key: JobKey, policy: GcPolicy) -> list[int]:
    """The versions of a job beyond the ``max_versions`` newest, except the stable version a
    revert goes back to and those of deployments still rolling."""
    versions = state.jobs.get(key, [])
    if len(versions) <= policy.max_versions:
        return []
    keep = {v.version for v in versions[-max(policy.max_versions, 1):]}
    stable = [v.version for v in versions if v.stable and not v.stop]
    if stable:  # the newest stable version: what the next failed rollout goes back to
        keep.add(stable[-1])
    keep |= {d.job_version for d in state.deployments.values()
             if d.status in ACTIVE and (namespace_of(d.namespace), d.job) == key}
    return [v.version for v in versions if v.version not in keep]


def node_collectable(state: ClusterState, node: node_pb2.Node, now_ns: int, policy: GcPolicy,
                     connected: bool) -> bool:
    """Down for ``node_threshold``, no stream, and nothing there the scheduler must still move."""
    if node.status != DOWN or connected or not _ago(now_ns, node.status_time_ns,
                                                    policy.node_threshold):
        return False
    return not any(state.allocs[i].desired_status == RUN
                   and state.allocs[i].client_status not in TERMINAL
                   for i in state.by_node.get(node.id, ()))


def find_garbage(state: ClusterState, now_ns: int, policy: GcPolicy,
                 connected: Callable[[str], bool] = lambda _: False) -> Garbage:
    """Everything that is garbage now, as units (jobs first: they take what they own)."""
    out = Garbage()
    dead: set[JobKey] = set()
    for key in list(state.jobs):
        if job_collectable(state, key, now_ns, policy):
            dead.add(key)
            owned = len(state.jobs[key]) + len(state.by_job.get(key, ())) + sum(
                1 for d in state.deployments.values()
                if (namespace_of(d.namespace), d.job) == key)
            out.units.append(Unit("jobs", _job_ref(key), owned))
    for key in list(state.jobs):
        if key not in dead:
            out.units += [Unit("job_versions", f"{_job_ref(key)}/{v}")
                          for v in versions_to_drop(state, key, policy)]
    nodes = [n for n in state.nodes.values()
             if node_collectable(state, n, now_ns, policy, connected(n.id))]
    node_ids = {n.id for n in nodes}
    for a in state.allocs.values():
        if job_key(a) not in dead and a.node_id not in node_ids \
                and alloc_collectable(state, a, now_ns, policy):
            out.units.append(Unit("allocations", a.id))
    latest = _latest_deployments(state)
    out.units += [Unit("deployments", d.id) for d in state.deployments.values()
                  if d.id not in latest and (namespace_of(d.namespace), d.job) not in dead
                  and deployment_collectable(d, now_ns, policy)]
    keep = _latest_evaluations(state)
    out.units += [Unit("evaluations", e.id) for e in state.evaluations
                  if e.id not in keep and _ago(now_ns, e.create_time_ns, policy.eval_threshold)]
    for n in nodes:
        out.units.append(Unit("nodes", n.id, 1 + len(state.by_node.get(n.id, ()))))
    return out


def _job_ref(key: JobKey) -> str:
    return f"{key[0]}/{key[1]}"


def _parse_job(ref: str) -> JobKey:
    ns, _, name = ref.partition("/")
    return ns, name


# --- deleting: units into commits ------------------------------------------------------------------


def unit_changes(state: ClusterState, unit: Unit, now_ns: int, policy: GcPolicy,
                 connected: Callable[[str], bool] = lambda _: False) -> Changes | None:
    """The deletions of one unit, if it is still garbage (None when it no longer is)."""
    kind = unit.kind
    if kind == "jobs":
        key = _parse_job(unit.key)
        if not job_collectable(state, key, now_ns, policy):
            return None
        job = state.job(key)
        assert job is not None
        return Changes(
            purge_jobs=[key], delete_allocs=sorted(state.by_job.get(key, ())),
            delete_deployments=[d.id for d in state.deployments.values()
                                if (namespace_of(d.namespace), d.job) == key],
            delete_evaluations=[e.id for e in state.evaluations
                                if (namespace_of(e.namespace), e.job) == key],
            events=[event("job", "JobGarbageCollected", key[1],
                          f"job {key[1]} collected: dead since "
                          f"{max(0, now_ns - job.submit_time_ns) // NS}s ago", now_ns)])
    if kind == "job_versions":
        ref, _, version = unit.key.rpartition("/")
        key = _parse_job(ref)
        if int(version) not in versions_to_drop(state, key, policy):
            return None
        return Changes(delete_job_versions=[(key[0], key[1], int(version))])
    if kind == "allocations":
        a = state.allocs.get(unit.key)
        if a is None or not alloc_collectable(state, a, now_ns, policy):
            return None
        return Changes(delete_allocs=[a.id])
    if kind == "deployments":
        d = state.deployments.get(unit.key)
        if d is None or not deployment_collectable(d, now_ns, policy):
            return None
        return Changes(delete_deployments=[d.id])
    if kind == "evaluations":  # it only grows older; deleting one already gone is harmless
        return Changes(delete_evaluations=[unit.key])
    if kind == "nodes":
        node = state.nodes.get(unit.key)
        if node is None or not node_collectable(state, node, now_ns, policy,
                                                connected(node.id)):
            return None
        return forget_node(state, node, now_ns, "down for "
                           f"{max(0, now_ns - node.status_time_ns) // NS}s")
    raise ValueError(f"unknown garbage kind {kind!r}")


def merge(into: Changes, more: Changes) -> None:
    for f in dataclasses.fields(Changes):
        value = getattr(more, f.name)
        if isinstance(value, dict):
            getattr(into, f.name).update(value)
        else:
            getattr(into, f.name).extend(value)


def _records(c: Changes) -> int:
    return (len(c.purge_jobs) + len(c.delete_job_versions) + len(c.delete_allocs)
            + len(c.delete_nodes) + len(c.delete_deployments) + len(c.delete_evaluations)
            + len(c.delete_meta))


def batches(units: list[Unit], batch: int) -> Iterator[list[Unit]]:
    """Units in groups of at most ``batch`` records (a bigger unit goes alone)."""
    group: list[Unit] = []
    size = 0
    for u in units:
        if group and size + u.size > batch:
            yield group
            group, size = [], 0
        group.append(u)
        size += u.size
    if group:
        yield group


# --- the collector (on the leader) ---------------------------------------------------------------


@dataclass(slots=True)
class GcReport:
    """What one collection deleted."""

    collected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    commits: int = 0
    seconds: float = 0.0
    forced: bool = False


class GarbageCollector:
    """Runs ``collect`` every ``interval`` seconds while this controller leads."""

    def __init__(self, cluster: Cluster, usage: UsageTable, policy: GcPolicy | None = None, *,
                 interval: float = 300.0, on_node_forgotten: Callable[[str], None] | None = None,
                 after: Callable[[], Awaitable[object]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cluster = cluster
        self.state = cluster.state
        self.usage = usage
        self.policy = policy or GcPolicy()
        self.interval = interval
        self.on_node_forgotten = on_node_forgotten
        self.after = after
        """Called after each collection (closing what pointed at forgotten nodes)."""
        self.clock = clock
        self.collected: dict[str, int] = dict.fromkeys(KINDS, 0)
        """Records deleted since this controller started, by kind (metrics)."""
        self.runs = 0
        self.last: GcReport | None = None
        self.store_size: StoreSize | None = None
        """The store's size after the last collection (metrics)."""
        self.defragmented = 0
        """Defragmentations of the store since this controller started (metrics)."""
        self.defrag_seconds = 0.0
        """Time the last one took: commits waited that long."""
        self._defragmented_at = clock()
        self._running = asyncio.Lock()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.collect()
            except asyncio.CancelledError:
                raise
            except Exception:  # the next round tries again
                log.exception("garbage collection failed")

    async def collect(self, *, force: bool = False) -> GcReport:
        """Find what is garbage now and delete it, one small commit at a time."""
        async with self._running:  # one collection at a time (the loop, orchctl system gc)
            policy = self.policy.forced() if force else self.policy
            t0 = time.perf_counter()
            report = GcReport(forced=force)
            connected = self.cluster.connected
            garbage = find_garbage(self.state, int(self.clock() * NS), policy, connected)
            for group in batches(garbage.units, policy.batch):
                async with self.cluster.lock:
                    now_ns = int(self.clock() * NS)
                    changes = Changes()
                    kinds: list[str] = []
                    for unit in group:
                        c = unit_changes(self.state, unit, now_ns, policy, connected)
                        if c is not None:
                            merge(changes, c)
                            kinds.append(unit.kind)
                    if not changes:
                        continue
                    await self.cluster.commit(changes)
                report.commits += 1
                for kind in kinds:
                    report.collected[kind] += 1
                self.usage.forget(set(changes.delete_allocs))
                for node_id in changes.delete_nodes:
                    if self.on_node_forgotten is not None:
                        self.on_node_forgotten(node_id)
                await asyncio.sleep(0)  # the lock is free between commits
            self.usage.keep(set(self.state.allocs))
            self.state.prune_caches()
            if self.after is not None:
                await self.after()
            report.seconds = time.perf_counter() - t0
            await self._defragment()
            for kind, n in report.collected.items():
                self.collected[kind] += n
            self.runs += 1
            self.last = report
            try:
                self.store_size = await self.cluster.store.size()
            except Exception as e:  # a size that cannot be read is no reason to fail the run
                log.warning("cannot read the store's size: %s", e)
            if any(report.collected.values()):
                log.info("garbage collected", extra={
                    **{k: v for k, v in report.collected.items() if v},
                    "commits": report.commits, "seconds": round(report.seconds, 3),
                    "forced": force})
            return report

    async def _defragment(self) -> None:
        """Defragment the store once ``defrag_interval`` has passed since the last time (or
        since this controller started): after weeks of churn its commits are slower (see
        ``SQLiteStore.defragment``). Commits wait meanwhile, under the commit lock."""
        interval = self.policy.defrag_interval
        if interval <= 0 or self.clock() - self._defragmented_at < interval:
            return
        self._defragmented_at = self.clock()
        t0 = time.perf_counter()
        try:
            async with self.cluster.lock:
                done = await self.cluster.store.defragment()
        except StoreError as e:  # the store is as it was (disk full?): try again next time
            log.warning("cannot defragment the store: %s", e)
            return
        if done:
            self.defragmented += 1
            self.defrag_seconds = time.perf_counter() - t0
            log.info("store defragmented", extra={"seconds": round(self.defrag_seconds, 3)})
