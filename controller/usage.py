"""What allocations use, as agents report it (kept in memory only: it is not state).

Agents send each sampling interval the cumulative CPU time of their allocations
and what their load balancer sends to every endpoint; the table turns them into
per-group figures for the autoscaler: CPU in percent of what the allocations
asked for, active connections and new connections per second per allocation.

Only the groups the autoscaler watches (``watch``: those with an enabled scaling
policy) are kept, and each pass of the autoscaler drops what no longer runs, so the
table is bounded by the allocations of scaled groups, not by every allocation.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass, field

from controller.scheduler import AllocInfo
from orch.v1 import controller_pb2, node_pb2

GroupKey = tuple[str, str, str]
"""(namespace, job, group)"""


@dataclass(slots=True)
class _Cpu:
    t: float = 0.0
    seconds: float = 0.0
    rate: float | None = None
    """Cores used, between the last two samples."""
    memory: int = 0
    """Bytes of memory its tasks use, as last reported."""


@dataclass(frozen=True, slots=True)
class AllocFigures:
    """What one allocation uses now, for people (the web UI): None where nothing fresh
    was reported."""

    reported: bool = False
    """Its agent reported on it within ``stale_after``."""
    cpu_cores: float | None = None
    """None until two reports measured it."""
    memory_bytes: int | None = None
    active_connections: int = 0
    """Connections the load balancers of every node hold to it now."""
    connections_per_second: float = 0.0
    """New connections a second the load balancers send it, every node's added up."""


@dataclass(slots=True)
class _Lb:
    active: dict[str, int] = field(default_factory=dict)
    """reporting node -> active connections to this endpoint."""
    total: dict[str, tuple[float, int]] = field(default_factory=dict)
    """reporting node -> (time, connections ever)."""
    rate: dict[str, float] = field(default_factory=dict)
    """reporting node -> new connections per second."""


class UsageTable:
    def __init__(self, stale_after: float = 60.0) -> None:
        self.stale_after = stale_after
        self._cpu: dict[str, _Cpu] = {}
        self._lb: dict[str, _Lb] = {}
        self.watched: Container[GroupKey] | None = None
        """The groups whose usage is kept (None: every group's)."""

    def watch(self, groups: Container[GroupKey], alive: Mapping[str, AllocInfo]) -> None:
        """Keep the usage of ``groups`` only, and of the allocations among ``alive`` that
        run (the autoscaler calls this on every pass)."""
        self.watched = groups

        def keep(alloc_id: str) -> bool:
            a = alive.get(alloc_id)
            return a is not None and a.client == "running" and \
                (a.namespace, a.job, a.group) in groups
        self._cpu = {i: c for i, c in self._cpu.items() if keep(i)}
        self._lb = {i: lb for i, lb in self._lb.items() if keep(i)}

    def _wanted(self, alloc_id: str, allocs: Mapping[str, AllocInfo] | None) -> AllocInfo | None:
        a = allocs.get(alloc_id) if allocs is not None else None
        if a is not None and self.watched is not None and \
                (a.namespace, a.job, a.group) not in self.watched:
            return None
        return a

    def report(self, node_id: str, r: controller_pb2.UsageReport,
               allocs: Mapping[str, AllocInfo] | None = None) -> None:
        """What ``node_id`` reports: the CPU of its own allocations, and what its load
        balancer sends to every endpoint. With ``allocs`` (the controller's), a report about
        an allocation that does not exist, or CPU of one on another node, is ignored, and so
        is one of a group nobody watches."""
        t = r.time_ns / 1e9
        for a in r.allocations:
            if allocs is not None:
                info = self._wanted(a.alloc_id, allocs)
                if info is None or info.node_id != node_id:
                    continue
            c = self._cpu.setdefault(a.alloc_id, _Cpu())
            if c.t and t > c.t and a.cpu_seconds >= c.seconds:
                c.rate = (a.cpu_seconds - c.seconds) / (t - c.t)
            c.t, c.seconds, c.memory = t, a.cpu_seconds, a.memory_bytes
        for e in r.endpoints:
            if allocs is not None and self._wanted(e.alloc_id, allocs) is None:
                continue
            lb = self._lb.setdefault(e.alloc_id, _Lb())
            lb.active[node_id] = e.active_connections
            prev = lb.total.get(node_id)
            if prev is not None and t > prev[0] and e.connections_total >= prev[1]:
                lb.rate[node_id] = (e.connections_total - prev[1]) / (t - prev[0])
            lb.total[node_id] = (t, e.connections_total)

    def forget(self, alloc_ids: set[str]) -> None:
        """Drop what was reported about these allocations (they are gone)."""
        for i in alloc_ids:
            self._cpu.pop(i, None)
            self._lb.pop(i, None)

    def figures(self, alloc_id: str, now: float) -> AllocFigures:
        c = self._cpu.get(alloc_id)
        fresh = c is not None and now - c.t <= self.stale_after
        lb = self._lb.get(alloc_id)
        return AllocFigures(
            reported=fresh,
            cpu_cores=c.rate if fresh and c is not None else None,
            memory_bytes=c.memory if fresh and c is not None else None,
            active_connections=sum(lb.active.values()) if lb else 0,
            connections_per_second=sum(lb.rate.values()) if lb else 0.0)

    def keep(self, alloc_ids: set[str]) -> None:
        """Drop what was reported about any allocation not among these."""
        self.forget((set(self._cpu) | set(self._lb)) - alloc_ids)

    def __len__(self) -> int:
        """Allocations with a usage entry."""
        return len(set(self._cpu) | set(self._lb))

    def group_metric(self, metric: str, allocs: list[node_pb2.Allocation],
                     now: float) -> float | None:
        """The group's metric per allocation; None when no allocation has fresh data."""
        values: list[float] = []
        for a in allocs:
            if metric == "cpu":
                c = self._cpu.get(a.id)
                asked = a.resources.cpu_millicores / 1000
                if c is not None and c.rate is not None and now - c.t <= self.stale_after \
                        and asked > 0:
                    values.append(100 * c.rate / asked)
            else:
                lb = self._lb.get(a.id)
                if lb is None:
                    continue
                if metric == "connections":
                    values.append(float(sum(lb.active.values())))
                elif lb.rate:
                    values.append(sum(lb.rate.values()))
        if not values:
            return None
        if metric == "cpu":
            return sum(values) / len(values)
        return sum(values) / max(len(allocs), 1)
