"""The store interface: the controller's durable state, written in atomic change sets.

The controller keeps its working state in memory (fast reads for the scheduler
and the API) and makes every change durable first: it builds a ``Changes``,
awaits ``Store.commit`` (which returns only once the change is durable), then
applies the same change to memory. After a restart ``Store.load`` gives
everything back. Backends: SQLite (one controller); etcd (several, with a
fenced leader: ``controller.store.etcd``, ``controller.election``); both pass the
same tests.

Records are protobuf messages stored whole; backends may index what they need.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from orch.v1 import controller_pb2, job_pb2, node_pb2

JobKey = tuple[str, str]
"""(namespace, name)"""
EPOCH = "store_epoch"
"""Meta: the store's lineage, nanoseconds since the epoch when it began (a fresh store) or
was last restored; it only grows."""
CLUSTER_ID = "cluster_id"
"""Meta: the cluster's id (desired sets carry it; agents apply their own cluster's only)."""
MAX_EVALUATIONS = 10_000
"""Evaluations a store keeps by default (and the controller holds in memory): the garbage
collector removes them by age long before, this bounds a burst."""


@dataclass(slots=True)
class Changes:
    """One atomic write: all of it is durable, or none of it.

    Deletions (``purge_jobs``, ``delete_*``) apply before puts, so a record that is both
    deleted and put in one ``Changes`` ends up put (a purge followed by puts of the
    versions to keep trims a job's history). Within one list, the last put of a key wins.
    The store serialises the records when ``commit`` is called; the caller keeps its objects.
    """

    put_jobs: list[job_pb2.Job] = field(default_factory=list)
    """Job versions to insert or replace, keyed by (namespace, name, version)."""
    purge_jobs: list[JobKey] = field(default_factory=list)
    """Jobs to delete with every version."""
    delete_job_versions: list[tuple[str, str, int]] = field(default_factory=list)
    """Single versions of jobs to delete: (namespace, name, version)."""
    put_allocs: list[node_pb2.Allocation] = field(default_factory=list)
    delete_allocs: list[str] = field(default_factory=list)
    put_nodes: list[node_pb2.Node] = field(default_factory=list)
    delete_nodes: list[str] = field(default_factory=list)
    put_deployments: list[controller_pb2.Deployment] = field(default_factory=list)
    delete_deployments: list[str] = field(default_factory=list)
    put_evaluations: list[controller_pb2.Evaluation] = field(default_factory=list)
    """Inserted or replaced by id; a replaced evaluation keeps its place in the history.
    The store keeps those among the last ``max_evaluations`` first stored (a deleted one's
    place is not given to an older one)."""
    delete_evaluations: list[str] = field(default_factory=list)
    events: list[controller_pb2.Event] = field(default_factory=list)
    """Appended to the event log; the store sets each event's ``index``."""
    meta: dict[str, str] = field(default_factory=dict)
    """Small named values (cluster id, settings, tokens, namespaces, secrets)."""
    delete_meta: list[str] = field(default_factory=list)
    """Meta keys to delete (before ``meta`` is applied)."""

    def __bool__(self) -> bool:
        return any((self.put_jobs, self.purge_jobs, self.delete_job_versions, self.put_allocs,
                    self.delete_allocs, self.put_nodes, self.delete_nodes, self.put_deployments,
                    self.delete_deployments, self.put_evaluations, self.delete_evaluations,
                    self.events, self.meta, self.delete_meta))


class AllocTable(Mapping[str, node_pb2.Allocation]):
    """Allocations by id, kept serialized: reading one parses it (a fresh copy, the
    caller's to change); ``put`` and ``pop`` change the table.

    A million allocations are the bulk of a big cluster's state: as bytes each takes a few
    hundred bytes, where a parsed (upb) message takes kilobytes. Stores load into one, so
    a controller starting up keeps the bytes it read instead of parsing and serializing
    them again."""

    __slots__ = ("_raw",)

    def __init__(self) -> None:
        self._raw: dict[str, bytes] = {}

    def __getitem__(self, alloc_id: str) -> node_pb2.Allocation:
        return node_pb2.Allocation.FromString(self._raw[alloc_id])

    def __contains__(self, alloc_id: object) -> bool:
        return alloc_id in self._raw

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def put(self, alloc_id: str, alloc: node_pb2.Allocation, raw: bytes | None = None) -> None:
        """Keep ``alloc`` (``raw``: its bytes, when the caller has them already)."""
        self._raw[alloc_id] = alloc.SerializeToString() if raw is None else raw

    def put_raw(self, alloc_id: str, raw: bytes) -> None:
        self._raw[alloc_id] = raw

    def raw_items(self) -> Iterator[tuple[str, bytes]]:
        return iter(self._raw.items())

    def pop(self, alloc_id: str) -> bool:
        """Forget an allocation; whether it was there."""
        return self._raw.pop(alloc_id, None) is not None

    def size(self) -> int:
        """Bytes the serialized allocations take (without the table's own)."""
        return sum(len(b) for b in self._raw.values())


@dataclass(slots=True)
class StoreSnapshot:
    """Everything the store holds, as of ``index``."""

    index: int = 0
    """The index of the last commit (0 for an empty store)."""
    event_index: int = 0
    """The index of the last event appended (0 when none ever was): where a watch from now starts."""
    jobs: dict[JobKey, list[job_pb2.Job]] = field(default_factory=dict)
    """Every version of every job, oldest first."""
    allocs: Mapping[str, node_pb2.Allocation] = field(default_factory=AllocTable)
    """Backends load them into an ``AllocTable`` (kept serialized)."""
    nodes: dict[str, node_pb2.Node] = field(default_factory=dict)
    deployments: dict[str, controller_pb2.Deployment] = field(default_factory=dict)
    evaluations: list[controller_pb2.Evaluation] = field(default_factory=list)
    """The most recent evaluations (a backend keeps a bounded number), in the order they
    were first stored, oldest first."""
    meta: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoreSize:
    """How much the store holds: for metrics and the soak benchmark."""

    bytes: int
    """Bytes in use (SQLite: its pages in use; etcd: its database in use, every prefix)."""
    rows: dict[str, int]
    """Records per kind: jobs (versions), allocations, nodes, deployments, evaluations,
    events, meta."""


class Store(ABC):
    """Durable controller state. Not safe for two writers: only the leader commits."""

    @abstractmethod
    async def open(self) -> None:
        """Create or migrate the schema; after this, load and commit work."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def load(self) -> StoreSnapshot:
        """Everything committed so far."""

    @abstractmethod
    async def commit(self, changes: Changes) -> int:
        """Apply ``changes`` atomically and durably; return the new index (one per commit).

        Events get consecutive indexes of their own, after every event before them; the
        store sets ``index`` on the caller's events once the commit is durable. An empty
        ``Changes`` is a commit too. On failure (``StoreError``; ``TypeError`` or
        ``ValueError`` for records that are not what the field holds) nothing was written:
        neither the index nor any event index was used up; the one exception is
        ``CommitInDoubtError`` (etcd went away mid-commit), after which ``load`` tells.
        Cancelling the awaiting task does not stop a commit already under way: it still
        lands (or fails) as a whole, and the caller learns which only from ``load``.
        """

    @abstractmethod
    async def backup(self, dest: Path) -> None:
        """Write the store's own consistent snapshot to the new file ``dest`` (SQLite's online
        backup; etcd's snapshot of its database, with its SHA-256 at the end)."""

    @abstractmethod
    async def replace(self, snap: StoreSnapshot) -> int:
        """Make the store hold exactly ``snap``'s records (jobs, allocations, nodes,
        deployments, evaluations, meta; not its indexes), as a restore does. The event log
        stays as it is; the commit index becomes ``max(current, snap.index) + 1`` and is
        returned. SQLite replaces all in one transaction; etcd in several (a restore larger
        than one transaction), so a failure part way leaves a mix: restore again."""

    @abstractmethod
    async def defragment(self) -> bool:
        """Rewrite the store so that what it holds lies together again, as a store does
        after months of churn no longer (SQLite's ``VACUUM``; commits wait while it runs);
        whether this store did (etcd's members are defragmented by their operators)."""

    @abstractmethod
    async def size(self) -> StoreSize:
        """What the store holds now, in bytes and in records per kind."""

    @abstractmethod
    async def events_since(self, index: int, limit: int = 1000) -> list[controller_pb2.Event]:
        """Events with an index above ``index``, oldest first, at most ``limit``, as far as kept.

        Indexes are consecutive, so a first event above ``index + 1`` means that the
        events in between were pruned (the watcher fell too far behind).
        """
