"""What the scheduler decided: placements, in-place updates, stops, and why some were not placed.

A destructive update or a reschedule is a :class:`Stop` plus a :class:`Placement`
whose ``previous_alloc`` names the stopped allocation. :class:`NodeMetrics`
counts nodes per reason the way ``nomad job plan`` reports them, and
:meth:`Plan.explain` turns them into sentences such as::

    group "frontend": 3 of 4 allocations placed; 1 unplaced: 12 nodes filtered by
    constraint ${node.class} = gpu, 3 exhausted memory
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orch.jobspec.model import Group


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    """A new allocation on a node."""

    alloc_id: str
    namespace: str
    job: str
    group: str
    index: int
    node_id: str
    node_name: str
    cpu_millicores: int
    memory_mb: int
    ports: Mapping[str, int]
    """Port label -> host port (static and the dynamic ones chosen here)."""
    reason: str
    """new, replacement (destructive update), reschedule (failed), lost (node down),
    disconnected (node down, and the group's disconnect block replaces at once: the original
    is not stopped), migrate (node draining), canary."""
    previous_alloc: str = ""
    reschedule_attempts: int = 0
    canary: bool = False
    score: float = 0.0
    """Normalised score of the chosen node (mean of the scores that applied)."""

    @property
    def name(self) -> str:
        return f"{self.job}.{self.group}[{self.index}]"


@dataclass(frozen=True, slots=True, kw_only=True)
class InPlaceUpdate:
    """An allocation that takes the new job version where it runs, without a restart."""

    alloc_id: str
    name: str
    node_id: str
    from_version: int
    to_version: int
    node_name: str = ""
    resize: bool = False
    """Only CPU or memory change: the running tasks get their new limits where they run."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Stop:
    """An allocation to stop; ``lost`` when its node is gone (its client status becomes lost)."""

    alloc_id: str
    name: str
    node_id: str
    reason: str
    """count reduced, group removed, job stopped, replaced by a new version, node down, node
    draining, duplicate index, no longer feasible."""
    lost: bool = False
    node_name: str = ""


@dataclass(slots=True)
class NodeMetrics:
    """Why nodes could not take an allocation, counted per reason (each node once)."""

    evaluated: int = 0
    filtered: dict[str, int] = field(default_factory=dict)
    """Node-level mismatches: ``constraint ${node.class} = gpu``, ``missing driver docker``."""
    exhausted: dict[str, int] = field(default_factory=dict)
    """Resource -> nodes out of it: ``cpu``, ``memory``, ``port 80``, ``dynamic ports``."""
    unavailable: dict[str, int] = field(default_factory=dict)
    """``down``, ``initializing``, ``ineligible``, ``draining``."""
    quota: str = ""
    """Why the namespace's quota has no room for it (no node was looked at then)."""

    def add(self, kind: str, reason: str) -> None:
        bucket = getattr(self, kind)
        bucket[reason] = bucket.get(reason, 0) + 1

    def describe(self) -> str:
        """``12 nodes filtered by constraint ${node.class} = gpu, 3 exhausted memory``."""
        if self.quota:
            return self.quota
        parts = [f"{_nodes(n)} filtered by {r}" for r, n in _by_count(self.filtered)]
        parts += [f"{n} exhausted {r}" for r, n in _by_count(self.exhausted)]
        parts += [f"{_nodes(n)} {r}" for r, n in _by_count(self.unavailable)]
        if not parts:
            return "no nodes" if not self.evaluated else "no node could take it"
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"evaluated": self.evaluated, "filtered": dict(self.filtered),
                "exhausted": dict(self.exhausted), "unavailable": dict(self.unavailable),
                "quota": self.quota}


def _by_count(d: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))


def _nodes(n: int) -> str:
    return f"{n} node" if n == 1 else f"{n} nodes"


@dataclass(slots=True)
class GroupPlan:
    """Per-group counts (as ``nomad job plan`` annotates them) and the failure, if any."""

    name: str
    desired: int = 0
    """Allocations the group wants (for system jobs: the nodes it should run on)."""
    place: int = 0
    """New allocations (count increases, first placements)."""
    in_place: int = 0
    replace: int = 0
    """Destructive updates: stop and place the new version."""
    reschedule: int = 0
    """Failed allocations placed again (or lost ones, on a node that went down)."""
    migrate: int = 0
    """Moved off draining nodes."""
    stop: int = 0
    """Stopped for good (count reduced, group removed, job stopped)."""
    unchanged: int = 0
    waiting: int = 0
    """Destructive updates held back by max_parallel (done in later plans)."""
    canary: int = 0
    unplaced: int = 0
    """Placements that found no node."""
    failure: NodeMetrics | None = None
    previous_spec: Group | None = None
    """The group as most of its running allocations have it (for the plan diff)."""
    spec: Group | None = None
    next_reschedule_at: float | None = None
    """When a failed allocation becomes due for rescheduling (delay not yet over)."""
    notes: list[str] = field(default_factory=list)
    """Other things a person should know (reschedule attempts exhausted, ...)."""

    @property
    def attempted(self) -> int:
        return self.place + self.replace + self.reschedule + self.migrate + self.canary

    def explain(self) -> str:
        """One sentence: what happened to the group; the reasons when something was not placed."""
        if self.unplaced:
            ok = self.attempted - self.unplaced
            head = (f"{ok} of {self.attempted} allocations placed; {self.unplaced} unplaced: "
                    f"{self.failure.describe() if self.failure else 'no nodes'}")
        else:
            head = ", ".join(self._actions()) or "no changes"
        tail = [head]
        if self.waiting:
            tail.append(f"{self.waiting} waiting for the rolling update (max_parallel)")
        tail += self.notes
        return f'group "{self.name}": ' + "; ".join(tail)

    def _actions(self) -> list[str]:
        out = []
        for label, n in (("to place", self.place), ("to update in place", self.in_place),
                         ("to replace", self.replace), ("to reschedule", self.reschedule),
                         ("to migrate", self.migrate),
                         ("canary" if self.canary == 1 else "canaries", self.canary),
                         ("to stop", self.stop), ("unchanged", self.unchanged)):
            if n:
                out.append(f"{n} {label}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "desired": self.desired, "place": self.place,
            "in_place": self.in_place, "replace": self.replace, "reschedule": self.reschedule,
            "migrate": self.migrate, "stop": self.stop, "unchanged": self.unchanged,
            "waiting": self.waiting, "canary": self.canary, "unplaced": self.unplaced,
            "failure": self.failure.to_dict() if self.failure else None,
            "next_reschedule_at": self.next_reschedule_at, "notes": list(self.notes),
            "explanation": self.explain(),
        }


@dataclass(slots=True)
class Plan:
    """The scheduler's answer for one job at one moment."""

    namespace: str
    job: str
    job_version: int
    job_type: str
    placements: list[Placement] = field(default_factory=list)
    updates: list[InPlaceUpdate] = field(default_factory=list)
    stops: list[Stop] = field(default_factory=list)
    groups: dict[str, GroupPlan] = field(default_factory=dict)
    next_eval_at: float | None = None
    """When to schedule this job again by itself (a reschedule delay ends), if ever."""

    @property
    def unplaced(self) -> int:
        return sum(g.unplaced for g in self.groups.values())

    @property
    def is_noop(self) -> bool:
        return not (self.placements or self.updates or self.stops)

    def explain(self) -> list[str]:
        """One line per group, in job order."""
        return [g.explain() for g in self.groups.values()]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for ``orchctl job plan -o json``."""
        return {
            "namespace": self.namespace, "job": self.job, "job_version": self.job_version,
            "job_type": self.job_type,
            "placements": [{
                "alloc_id": p.alloc_id, "name": p.name, "node_id": p.node_id,
                "node_name": p.node_name, "cpu_millicores": p.cpu_millicores,
                "memory_mb": p.memory_mb, "ports": dict(p.ports), "reason": p.reason,
                "previous_alloc": p.previous_alloc, "canary": p.canary,
                "score": round(p.score, 4)} for p in self.placements],
            "updates": [{"alloc_id": u.alloc_id, "name": u.name, "node_id": u.node_id,
                         "from_version": u.from_version, "to_version": u.to_version}
                        for u in self.updates],
            "stops": [{"alloc_id": s.alloc_id, "name": s.name, "node_id": s.node_id,
                       "reason": s.reason, "lost": s.lost} for s in self.stops],
            "groups": [g.to_dict() for g in self.groups.values()],
            "next_eval_at": self.next_eval_at,
        }
