"""The controller's working state in memory: what the store holds, indexed for reading.

Every change reaches it through ``apply(changes)`` after the store has made the
same change durable, so memory never runs ahead of the disk. Beside the
protobuf records it keeps the scheduler's ``ClusterSnapshot`` current, one
small update per change.

Allocations are by far the most numerous records (a million in a big cluster), so
they are kept serialized (``AllocTable``: a few hundred bytes each, where a parsed
message takes kilobytes); reading one parses it, and the reader gets its own copy.
What is read of every allocation often (node, job, statuses, resources) is in the
snapshot's ``AllocInfo``, whose strings are shared (interned) with the indexes here.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from typing import TypeVar

from controller.scheduler import AllocInfo, ClusterSnapshot, alloc_info_from_proto, node_info_from_proto
from controller.store.base import MAX_EVALUATIONS, AllocTable, Changes, JobKey, StoreSnapshot
from orch.errors import NotFoundError, RequestError
from orch.jobspec.model import Group, Job, group_from_proto, job_from_proto
from orch.v1 import controller_pb2, job_pb2, node_pb2
from orch.vocab import namespace_of

RUN, STOP = node_pb2.DESIRED_STATUS_RUN, node_pb2.DESIRED_STATUS_STOP
PENDING, RUNNING = node_pb2.CLIENT_STATUS_PENDING, node_pb2.CLIENT_STATUS_RUNNING
COMPLETE, FAILED, LOST = (node_pb2.CLIENT_STATUS_COMPLETE, node_pb2.CLIENT_STATUS_FAILED,
                          node_pb2.CLIENT_STATUS_LOST)
TERMINAL = frozenset((COMPLETE, FAILED, LOST))
K = TypeVar("K")
ALLOCS_PER_YIELD = 5000
"""Allocations a state load (a new leader's, a follower's) builds before it lets the event
loop run: building 100,000 at once held a new leader's loop for seconds on a busy machine,
its lease keepalives with it, and it lost the lease it had just won."""


def job_key(job: job_pb2.Job | node_pb2.Allocation) -> JobKey:
    if isinstance(job, job_pb2.Job):
        return (namespace_of(job.namespace), job.name)
    return (namespace_of(job.namespace), job.job)


class ClusterState:
    """Jobs (every version), allocations, nodes, deployments and recent evaluations."""

    def __init__(self) -> None:
        self.index = 0
        self.jobs: dict[JobKey, list[job_pb2.Job]] = {}
        self.allocs = AllocTable()
        self.by_node: dict[str, set[str]] = {}
        self.by_job: dict[JobKey, set[str]] = {}
        self.nodes: dict[str, node_pb2.Node] = {}
        self.deployments: dict[str, controller_pb2.Deployment] = {}
        self.evaluations: deque[controller_pb2.Evaluation] = deque(maxlen=MAX_EVALUATIONS)
        self.meta: dict[str, str] = {}
        self.meta_index = 0
        """The index of the last commit that changed ``meta`` (views of it cache on this)."""
        self.snapshot = ClusterSnapshot()
        self.alloc_counts: dict[tuple[str, str], int] = {}
        """(desired status, client status) -> allocations (kept as they change: metrics read
        it without walking every allocation)."""
        self._models: dict[tuple[JobKey, int], Job] = {}
        self._specs: dict[tuple[JobKey, int, str], Group] = {}

    @classmethod
    def from_store(cls, snap: StoreSnapshot) -> ClusterState:
        state = cls._without_allocs(snap)
        for _ in state._put_allocs(snap):
            pass
        return state

    @classmethod
    async def load(cls, snap: StoreSnapshot) -> ClusterState:
        """As ``from_store``, letting the event loop run every ``ALLOCS_PER_YIELD``
        allocations (a leader's lease keepalives, the agents' streams)."""
        state = cls._without_allocs(snap)
        for _ in state._put_allocs(snap):
            await asyncio.sleep(0)
        return state

    @classmethod
    def _without_allocs(cls, snap: StoreSnapshot) -> ClusterState:
        state = cls()
        state.apply(Changes(
            put_jobs=[v for versions in snap.jobs.values() for v in versions],
            put_nodes=list(snap.nodes.values()), put_deployments=list(snap.deployments.values()),
            put_evaluations=list(snap.evaluations), meta=dict(snap.meta)), snap.index)
        return state

    def _put_allocs(self, snap: StoreSnapshot) -> Iterator[None]:
        """Add the snapshot's allocations, pausing (a yield) every ``ALLOCS_PER_YIELD``."""
        if isinstance(snap.allocs, AllocTable):  # the store's bytes are kept as they are
            for i, (_, raw) in enumerate(snap.allocs.raw_items(), 1):
                self._put_alloc(node_pb2.Allocation.FromString(raw), raw)
                if i % ALLOCS_PER_YIELD == 0:
                    yield
        else:
            for i, alloc in enumerate(snap.allocs.values(), 1):
                self._put_alloc(alloc)
                if i % ALLOCS_PER_YIELD == 0:
                    yield

    async def reload(self, snap: StoreSnapshot) -> None:
        """Become what ``snap`` holds, in place (everyone holding this object sees it): a
        new leader reading the store it now writes. Built without holding the event loop
        for long (see ``load``); this state stays as it was until the new one is whole."""
        self.become(await ClusterState.load(snap))

    def become(self, other: ClusterState) -> None:
        """Be ``other``, in place (everyone holding this object sees it)."""
        moved = self.meta_index + 1
        self.__dict__.update(other.__dict__)
        self.meta_index = max(self.meta_index, moved)  # views of the meta read it again

    # --- reading -------------------------------------------------------------------------------

    def seed(self) -> int:
        """The scheduler's seed for the next plan: this cluster's id mixed with the index, so
        that plans are reproducible in one cluster and allocation ids differ between clusters."""
        cluster = int(self.meta.get("cluster_id", "0").replace("-", "")[:16] or "0", 16)
        return cluster ^ (self.index + 1)

    def job(self, key: JobKey) -> job_pb2.Job | None:
        """The job's latest version (None when unknown or purged)."""
        versions = self.jobs.get(key)
        return versions[-1] if versions else None

    def job_version(self, key: JobKey, version: int) -> job_pb2.Job | None:
        for v in self.jobs.get(key, ()):
            if v.version == version:
                return v
        return None

    def model(self, job: job_pb2.Job) -> Job:
        """The job as the scheduler reads it (cached per version)."""
        k = (job_key(job), job.version)
        m = self._models.get(k)
        if m is None:
            m = self._models[k] = job_from_proto(job)
        return m

    def group_spec(self, alloc: node_pb2.Allocation) -> Group | None:
        """The allocation's group spec, shared among allocations of the same job version."""
        if not alloc.HasField("spec"):
            return None
        k = (job_key(alloc), alloc.job_version, alloc.group)
        g = self._specs.get(k)
        if g is None:
            g = self._specs[k] = group_from_proto(alloc.spec)
        return g

    def allocs_of_job(self, key: JobKey) -> list[node_pb2.Allocation]:
        return sorted((self.allocs[i] for i in self.by_job.get(key, ())),
                      key=lambda a: (a.group, a.index, a.create_time_ns))

    def allocs_on_node(self, node_id: str) -> list[node_pb2.Allocation]:
        return sorted((self.allocs[i] for i in self.by_node.get(node_id, ())),
                      key=lambda a: (a.job, a.group, a.index))

    def latest_deployment(self, key: JobKey) -> controller_pb2.Deployment | None:
        found = [d for d in self.deployments.values() if (namespace_of(d.namespace), d.job) == key]
        return max(found, key=lambda d: (d.create_time_ns, d.id)) if found else None

    def find_alloc(self, prefix: str) -> list[node_pb2.Allocation]:
        """Allocations whose id starts with ``prefix`` (a full id matches itself only)."""
        if prefix in self.allocs:
            return [self.allocs[prefix]]
        return [self.allocs[i] for i in self.allocs if i.startswith(prefix)] if prefix else []

    def one_alloc(self, ref: str) -> node_pb2.Allocation:
        """The allocation an id, or a prefix of one id only, names."""
        found = self.find_alloc(ref)
        if not found:
            raise NotFoundError(f"no allocation {ref!r}")
        if len(found) > 1:
            raise RequestError(f"{ref!r} matches {len(found)} allocations: "
                               + ", ".join(a.id[:8] for a in found[:5]) + "; give more of the id")
        return found[0]

    def find_node(self, ref: str) -> list[node_pb2.Node]:
        """Nodes whose id starts with ``ref`` or whose name is ``ref``."""
        if ref in self.nodes:
            return [self.nodes[ref]]
        named = [n for n in self.nodes.values() if n.name == ref]
        return named or ([n for i, n in self.nodes.items() if i.startswith(ref)] if ref else [])

    # --- changing ------------------------------------------------------------------------------

    def apply(self, changes: Changes, index: int) -> None:
        """Record a change the store has already made durable."""
        self.index = max(self.index, index)
        for key in changes.purge_jobs:
            self.jobs.pop(key, None)
            self._models = {k: v for k, v in self._models.items() if k[0] != key}
            self._specs = {k: v for k, v in self._specs.items() if k[0] != key}
        for ns, name, version in changes.delete_job_versions:
            versions = self.jobs.get((ns, name))
            if versions is not None:
                versions[:] = [v for v in versions if v.version != version]
                if not versions:
                    del self.jobs[(ns, name)]
            self._models.pop(((ns, name), version), None)
        if changes.delete_evaluations:
            gone = set(changes.delete_evaluations)
            kept = [e for e in self.evaluations if e.id not in gone]
            self.evaluations.clear()
            self.evaluations.extend(kept)
        for job in changes.put_jobs:
            versions = self.jobs.setdefault(job_key(job), [])
            versions[:] = [v for v in versions if v.version != job.version]
            versions.append(job)
            versions.sort(key=lambda v: v.version)
            self._models.pop((job_key(job), job.version), None)
        for node in changes.put_nodes:
            self.nodes[node.id] = node
            self.snapshot.upsert_node(node_info_from_proto(node))
        for node_id in changes.delete_nodes:
            self.nodes.pop(node_id, None)
            self.snapshot.remove_node(node_id)
        for alloc in changes.put_allocs:
            self._put_alloc(alloc)
        for alloc_id in changes.delete_allocs:
            self._delete_alloc(alloc_id)
        for d in changes.put_deployments:
            self.deployments[d.id] = d
        for dep_id in changes.delete_deployments:
            self.deployments.pop(dep_id, None)
        self.evaluations.extend(changes.put_evaluations)
        for name in changes.delete_meta:
            self.meta.pop(name, None)
        self.meta.update(changes.meta)
        if changes.meta or changes.delete_meta:
            self.meta_index = max(self.meta_index + 1, index)

    def alloc_info(self, alloc: node_pb2.Allocation) -> AllocInfo:
        return alloc_info_from_proto(alloc, self.group_spec(alloc))

    def _count(self, info: AllocInfo, sign: int) -> None:
        k = (info.desired, info.client)
        n = self.alloc_counts.get(k, 0) + sign
        if n:
            self.alloc_counts[k] = n
        else:
            del self.alloc_counts[k]

    def _put_alloc(self, alloc: node_pb2.Allocation, raw: bytes | None = None) -> None:
        info = self.alloc_info(alloc)
        alloc_id = info.id
        old = self.snapshot.alloc(alloc_id)
        if old is not None:
            self._count(old, -1)
            if old.node_id != info.node_id:
                _discard(self.by_node, old.node_id, alloc_id)
        self._count(info, 1)
        self.allocs.put(alloc_id, alloc, raw)
        self.by_node.setdefault(info.node_id, set()).add(alloc_id)
        self.by_job.setdefault((info.namespace, info.job), set()).add(alloc_id)
        self.snapshot.upsert_alloc(info)

    def _delete_alloc(self, alloc_id: str) -> None:
        old = self.snapshot.alloc(alloc_id)
        if not self.allocs.pop(alloc_id) or old is None:
            return
        self._count(old, -1)
        _discard(self.by_node, old.node_id, alloc_id)
        _discard(self.by_job, (old.namespace, old.job), alloc_id)
        self.snapshot.remove_alloc(alloc_id)

    def prune_caches(self) -> int:
        """Drop the cached group specs no allocation refers to any more, and the cached job
        models of versions no longer kept; how many."""
        used = {(job_key(a), a.job_version, a.group) for a in self.allocs.values()}
        stale = [k for k in self._specs if k not in used]
        for k in stale:
            del self._specs[k]
        kept = {(key, v.version) for key, versions in self.jobs.items() for v in versions}
        models = [m for m in self._models if m not in kept]
        for m in models:
            del self._models[m]
        return len(stale) + len(models)


def _discard(index: dict[K, set[str]], key: K, alloc_id: str) -> None:
    ids = index.get(key)
    if ids is not None:
        ids.discard(alloc_id)
        if not ids:
            del index[key]
