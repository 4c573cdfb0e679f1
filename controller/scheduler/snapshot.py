"""The cluster as the scheduler sees it: nodes, allocations, and per-node usage kept up to date.

The controller keeps one :class:`ClusterSnapshot` beside its store and feeds it
every change (``upsert_node``, ``upsert_alloc``, ``remove_alloc``, ...); each
change costs O(1) (O(log n) to keep the node order), so the snapshot never has
to be rebuilt. What a placement needs is precomputed here: per node the CPU,
memory and ports in use, the replicas per job and group; per *node class*
(nodes alike in datacenter, region, class, attributes, meta and drivers) the
values constraints look at, so that a constraint is evaluated once per class,
not once per node. The scheduler only reads it.

Allocations occupy resources while they are desired to run and not finished
(client status pending or running), as in Nomad: a stop in a plan frees them.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from sys import intern
from types import MappingProxyType
from typing import Any

from controller.scheduler.quota import Usage
from orch.jobspec.model import Group, group_from_proto
from orch.v1 import job_pb2, node_pb2
from orch.vocab import (
    ALLOC_HEALTH,
    CLIENT_STATUS,
    DEFAULT_NAMESPACE,
    DESIRED_STATUS,
    NODE_STATUS,
    namespace_of,
)

LIVE_CLIENT = frozenset(("pending", "running"))

_MEMO_KEYS = 128


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeInfo:
    """What the scheduler knows about one node."""

    id: str
    name: str = ""
    datacenter: str = "dc1"
    region: str = "global"
    node_class: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)
    """``${attr.<key>}``: kernel.name, cpu.arch, os.version, driver versions, ..."""
    meta: Mapping[str, str] = field(default_factory=dict)
    """``${meta.<key>}``: labels set by the operator."""
    cpu_millicores: int = 4000
    """Capacity offered to tasks (before ``reserved_cpu_millicores``)."""
    memory_mb: int = 8192
    reserved_cpu_millicores: int = 0
    reserved_memory_mb: int = 0
    reserved_ports: frozenset[int] = frozenset()
    drivers: frozenset[str] = frozenset(("docker", "process"))
    """Healthy task drivers."""
    status: str = "ready"
    """ready, init or down."""
    status_since: float = 0.0
    """When the status last changed (a down node: since when it is down)."""
    eligible: bool = True
    """Scheduling eligibility (``orchctl node eligibility``)."""
    draining: bool = False
    drain_ignore_system_jobs: bool = False
    """While draining, leave system allocations where they are."""

    @property
    def schedulable(self) -> bool:
        """May take new allocations."""
        return self.status == "ready" and self.eligible and not self.draining


@dataclass(slots=True, kw_only=True)
class AllocInfo:
    """One allocation as the scheduler needs it.

    Never changed once made: the snapshot shares one object among its indexes and a new
    status is a new object (``upsert_alloc``). Not ``frozen`` only because a frozen
    dataclass takes five times longer to make, and the controller makes one for every
    allocation it writes or loads (a million at a start)."""

    id: str
    job: str
    group: str
    index: int
    node_id: str
    namespace: str = DEFAULT_NAMESPACE
    cpu_millicores: int = 0
    memory_mb: int = 0
    ports: Mapping[str, int] = field(default_factory=dict)
    """Port label -> host port."""
    desired: str = "run"
    """run or stop."""
    client: str = "pending"
    """pending, running, complete, failed or lost."""
    job_version: int = 0
    spec: Group | None = None
    """The group as of ``job_version`` (decides in-place against destructive updates)."""
    healthy: bool = False
    health: str = ""
    """Its agent's verdict (pending, healthy, unhealthy; "": its agent does not judge)."""
    canary: bool = False
    reschedule_attempts: int = 0
    """How many reschedules led to this allocation."""
    previous_allocation: str = ""
    create_time: float = 0.0
    modify_time: float = 0.0
    """When the client status last changed (a failure's time)."""
    client_since: float = 0.0
    """When the client status last changed, as the controller recorded it."""

    @property
    def name(self) -> str:
        return f"{self.job}.{self.group}[{self.index}]"

    @property
    def occupies(self) -> bool:
        """Counts against its node's resources: wanted and not finished."""
        return self.desired == "run" and self.client in LIVE_CLIENT


class NodeClass:
    """Nodes alike in everything constraints and drivers look at (not in unique values)."""

    __slots__ = ("datacenter", "drivers", "id", "key", "nodes", "order_keys", "props", "region")

    def __init__(self, id: int, key: tuple[object, ...], info: NodeInfo) -> None:
        self.id = id
        self.key = key
        self.datacenter = info.datacenter
        self.region = info.region
        self.drivers = info.drivers
        props = {"node.datacenter": info.datacenter, "node.region": info.region,
                 "node.class": info.node_class}
        props.update((f"attr.{k}", v) for k, v in info.attributes.items()
                     if not k.startswith("unique."))
        props.update((f"meta.{k}", v) for k, v in info.meta.items()
                     if not k.startswith("unique."))
        self.props: Mapping[str, str] = props
        """Target name (``attr.kernel.name``) -> value, for every non-unique target."""
        self.nodes: list[NodeState] = []
        """Member nodes in the snapshot's stable order."""
        self.order_keys: list[bytes] = []
        """Their order keys, beside them (a node joins or leaves a class in O(log n))."""


class NodeState:
    """One node with its usage; mutated only by :class:`ClusterSnapshot`."""

    __slots__ = ("allocs", "cls", "cpu_total", "cpu_used", "group_counts", "info", "job_counts",
                 "mem_total", "mem_used", "order_key", "ports", "schedulable")

    def __init__(self, info: NodeInfo, cls: NodeClass, order_key: bytes) -> None:
        self.info = info
        self.cls = cls
        self.order_key = order_key
        self.schedulable = info.schedulable
        self.cpu_total = max(0, info.cpu_millicores - info.reserved_cpu_millicores)
        self.mem_total = max(0, info.memory_mb - info.reserved_memory_mb)
        self.cpu_used = 0
        self.mem_used = 0
        self.ports: dict[int, int] = dict.fromkeys(info.reserved_ports, 1)
        """Host port -> how many holders (reservations and occupying allocations)."""
        self.allocs: dict[str, AllocInfo] = {}
        """Occupying allocations by id."""
        self.group_counts: dict[tuple[str, str, str], int] = {}
        """(namespace, job, group) -> occupying allocations here."""
        self.job_counts: dict[tuple[str, str], int] = {}

    def prop(self, name: str) -> str | None:
        """The value of a constraint target on this node (None when it lacks it)."""
        v = self.cls.props.get(name)
        if v is not None:
            return v
        info = self.info
        if name in ("node.id", "node.unique.id"):
            return info.id
        if name in ("node.name", "node.unique.name"):
            return info.name
        if name.startswith("attr."):
            return info.attributes.get(name[5:])
        if name.startswith("meta."):
            return info.meta.get(name[5:])
        return None

    def _add(self, a: AllocInfo, sign: int) -> None:
        self.cpu_used += sign * a.cpu_millicores
        self.mem_used += sign * a.memory_mb
        for port in a.ports.values():
            n = self.ports.get(port, 0) + sign
            if n > 0:
                self.ports[port] = n
            else:
                self.ports.pop(port, None)
        gk = (a.namespace, a.job, a.group)
        jk = (a.namespace, a.job)
        self.group_counts[gk] = self.group_counts.get(gk, 0) + sign
        self.job_counts[jk] = self.job_counts.get(jk, 0) + sign
        if not self.group_counts[gk]:
            del self.group_counts[gk]
        if not self.job_counts[jk]:
            del self.job_counts[jk]
        if sign > 0:
            self.allocs[a.id] = a
        else:
            self.allocs.pop(a.id, None)


def _order_key(node_id: str) -> bytes:
    """A stable pseudo-random position for a node: the same on every controller and run."""
    return hashlib.blake2b(node_id.encode(), digest_size=8).digest() + node_id.encode()


def _class_key(info: NodeInfo) -> tuple[object, ...]:
    return (info.datacenter, info.region, info.node_class,
            tuple(sorted((k, v) for k, v in info.attributes.items()
                         if not k.startswith("unique."))),
            tuple(sorted((k, v) for k, v in info.meta.items() if not k.startswith("unique."))),
            tuple(sorted(info.drivers)))


class ClusterSnapshot:
    """Nodes and allocations with usage kept current by small incremental updates."""

    def __init__(self, nodes: Iterable[NodeInfo] = (), allocs: Iterable[AllocInfo] = ()) -> None:
        self._nodes: dict[str, NodeState] = {}
        self._order: list[NodeState] = []
        self._order_keys: list[bytes] = []
        self._classes: dict[tuple[object, ...], NodeClass] = {}
        self._allocs: dict[str, AllocInfo] = {}
        self._by_job: dict[tuple[str, str], dict[str, AllocInfo]] = {}
        self._orphans: dict[str, dict[str, AllocInfo]] = {}
        """Occupying allocations whose node is not (or no longer) in the snapshot."""
        self._usage: dict[str, Usage] = {}
        """Namespace -> what its occupying allocations hold (for quotas)."""
        self._job_changed: dict[tuple[str, str], int] = {}
        """(namespace, job) -> ``version`` when one of its allocations last changed."""
        self.version = 0
        """Bumped on every change."""
        self.node_version = 0
        """Bumped when a node is added, changed or removed (not for allocations)."""
        self._memo: dict[object, dict[Any, Any]] = {}
        for n in nodes:
            self.upsert_node(n)
        for a in allocs:
            self.upsert_alloc(a)

    # --- reading --------------------------------------------------------------------------

    @property
    def order(self) -> list[NodeState]:
        """Every node in the stable visiting order (do not mutate)."""
        return self._order

    @property
    def classes(self) -> list[NodeClass]:
        """Node classes in the order they were first seen (some may have no nodes left)."""
        return list(self._classes.values())

    def memo(self, key: object) -> dict[Any, Any]:
        """A cache for a pure function of node classes or nodes, kept with the snapshot.

        The scheduler stores results that depend only on what ``key`` names (a
        constraint set, ...) and on nodes or classes, so that the next job with the
        same constraints reuses them. Entries keyed per class stay valid forever (a
        class never changes); users of node lists check ``node_version``.
        """
        found = self._memo.get(key)
        if found is None:
            if len(self._memo) >= _MEMO_KEYS:
                self._memo.clear()
            found = self._memo[key] = {}
        return found

    def node(self, node_id: str) -> NodeState | None:
        return self._nodes.get(node_id)

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[NodeState]:
        return iter(self._order)

    def alloc(self, alloc_id: str) -> AllocInfo | None:
        return self._allocs.get(alloc_id)

    @property
    def allocs(self) -> Mapping[str, AllocInfo]:
        return MappingProxyType(self._allocs)

    def allocs_of_job(self, namespace: str, job: str) -> list[AllocInfo]:
        """The job's allocations (any status), in a stable order: group, index, id."""
        found = self._by_job.get((namespace, job))
        if not found:
            return []
        return sorted(found.values(), key=lambda a: (a.group, a.index, a.id))

    def job_changed(self, namespace: str, job: str) -> int:
        """A number that changes whenever one of the job's allocations does (0: it has none)."""
        return self._job_changed.get((namespace, job), 0)

    def usage(self, namespace: str) -> Usage:
        """What the namespace's occupying allocations hold (do not mutate)."""
        return self._usage.get(namespace) or Usage()

    # --- nodes ----------------------------------------------------------------------------

    def upsert_node(self, info: NodeInfo) -> None:
        """Add a node or replace what is known about it (its allocations stay). A node
        registered again as it was (an agent reconnecting) changes nothing, not even
        ``node_version``: evaluations settled on the nodes stay settled."""
        old = self._nodes.get(info.id)
        if old is not None and old.info == info:
            return
        self.version += 1
        self.node_version += 1
        cls = self._class_for(info)
        if old is not None:
            occupying = list(old.allocs.values())
            self._remove_state(old)
        else:
            occupying = list(self._orphans.pop(info.id, {}).values())
        state = NodeState(info, cls, _order_key(info.id))
        for a in occupying:
            state._add(a, 1)
        self._nodes[info.id] = state
        i = bisect.bisect_left(self._order_keys, state.order_key)
        self._order.insert(i, state)
        self._order_keys.insert(i, state.order_key)
        j = bisect.bisect_left(cls.order_keys, state.order_key)
        cls.nodes.insert(j, state)
        cls.order_keys.insert(j, state.order_key)

    def remove_node(self, node_id: str) -> None:
        """Forget a node; its allocations stay and are treated as lost by the scheduler."""
        state = self._nodes.pop(node_id, None)
        if state is not None:
            self.version += 1
            self.node_version += 1
            self._remove_state(state)
            if state.allocs:
                self._orphans[node_id] = dict(state.allocs)

    def _remove_state(self, state: NodeState) -> None:
        i = bisect.bisect_left(self._order_keys, state.order_key)
        del self._order[i]
        del self._order_keys[i]
        cls = state.cls
        j = bisect.bisect_left(cls.order_keys, state.order_key)
        del cls.nodes[j]
        del cls.order_keys[j]
        self._nodes.pop(state.info.id, None)

    def _class_for(self, info: NodeInfo) -> NodeClass:
        key = _class_key(info)
        cls = self._classes.get(key)
        if cls is None:
            cls = self._classes[key] = NodeClass(len(self._classes), key, info)
        return cls

    # --- allocations ----------------------------------------------------------------------

    def upsert_alloc(self, alloc: AllocInfo) -> None:
        """Add an allocation or replace it (a new status, version or node)."""
        self.version += 1
        old = self._allocs.get(alloc.id)
        if old is not None:
            self._unaccount(old)
        self._allocs[alloc.id] = alloc
        self._by_job.setdefault((alloc.namespace, alloc.job), {})[alloc.id] = alloc
        self._job_changed[(alloc.namespace, alloc.job)] = self.version
        if alloc.occupies:
            self._usage.setdefault(alloc.namespace, Usage()).add(alloc.cpu_millicores,
                                                                 alloc.memory_mb)
            state = self._nodes.get(alloc.node_id)
            if state is not None:
                state._add(alloc, 1)
            else:
                self._orphans.setdefault(alloc.node_id, {})[alloc.id] = alloc

    def remove_alloc(self, alloc_id: str) -> None:
        """Forget an allocation (garbage-collected)."""
        old = self._allocs.pop(alloc_id, None)
        if old is None:
            return
        self.version += 1
        self._unaccount(old)
        job = self._by_job.get((old.namespace, old.job))
        if job is not None:
            job.pop(alloc_id, None)
            self._job_changed[(old.namespace, old.job)] = self.version
            if not job:
                del self._by_job[(old.namespace, old.job)]
                del self._job_changed[(old.namespace, old.job)]

    def _unaccount(self, old: AllocInfo) -> None:
        if old.occupies:
            used = self._usage[old.namespace]
            used.add(old.cpu_millicores, old.memory_mb, -1)
            if not used.allocations:
                del self._usage[old.namespace]
            state = self._nodes.get(old.node_id)
            if state is not None and old.id in state.allocs:
                state._add(old, -1)
            orphans = self._orphans.get(old.node_id)
            if orphans is not None:
                orphans.pop(old.id, None)
                if not orphans:
                    del self._orphans[old.node_id]


# --- from the wire --------------------------------------------------------------------------

def node_info_from_proto(pb: node_pb2.Node) -> NodeInfo:
    """The scheduler's view of a Node message."""
    return NodeInfo(
        id=pb.id, name=pb.name or pb.id, datacenter=pb.datacenter or "dc1",
        region=pb.region or "global", node_class=pb.node_class, attributes=dict(pb.attributes),
        meta=dict(pb.meta), cpu_millicores=pb.capacity.cpu_millicores,
        memory_mb=pb.capacity.memory_mb, reserved_cpu_millicores=pb.reserved.cpu_millicores,
        reserved_memory_mb=pb.reserved.memory_mb, reserved_ports=frozenset(pb.reserved_ports),
        drivers=frozenset(pb.drivers), status=NODE_STATUS.word(pb.status),
        status_since=pb.status_time_ns / 1e9, eligible=pb.eligible,
        draining=pb.HasField("drain"), drain_ignore_system_jobs=pb.drain.ignore_system_jobs)


_NO_PORTS: Mapping[str, int] = MappingProxyType({})


def alloc_info_from_proto(pb: node_pb2.Allocation, spec: Group | None = None) -> AllocInfo:
    """The scheduler's view of an Allocation message.

    ``spec`` lets callers share one Group object among the allocations of a job
    version instead of converting ``pb.spec`` for each.
    """
    if spec is None and pb.HasField("spec"):
        spec = group_from_proto(pb.spec)
    res: job_pb2.Resources = pb.resources
    return AllocInfo(  # a million of these share their strings
        id=intern(pb.id), namespace=intern(namespace_of(pb.namespace)), job=intern(pb.job),
        group=intern(pb.group), index=pb.index, node_id=intern(pb.node_id),
        cpu_millicores=res.cpu_millicores,
        memory_mb=res.memory_mb, ports=dict(pb.ports) if len(pb.ports) else _NO_PORTS,
        desired=DESIRED_STATUS.word(pb.desired_status),
        client=CLIENT_STATUS.word(pb.client_status), job_version=pb.job_version, spec=spec,
        healthy=pb.healthy, health=ALLOC_HEALTH.word(pb.deployment_health), canary=pb.canary,
        reschedule_attempts=pb.reschedule_attempts,
        previous_allocation=pb.previous_allocation, create_time=pb.create_time_ns / 1e9,
        modify_time=pb.modify_time_ns / 1e9, client_since=pb.client_since_ns / 1e9)
