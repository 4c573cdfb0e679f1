"""What one ``schedule()`` call carries around: the plan's own changes on top of the snapshot.

The snapshot is never written; a :class:`Delta` per touched node holds what the
plan adds (placements) and takes away (stops), so "is there room on this node"
is the snapshot's usage plus the node's delta.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field

from controller.scheduler.config import SchedulerConfig
from controller.scheduler.quota import Budget
from controller.scheduler.snapshot import AllocInfo, ClusterSnapshot, NodeState
from orch.jobspec.model import Job


class Delta:
    """The plan's changes on one node."""

    __slots__ = ("cpu", "groups", "jobs", "mem", "ports_added", "ports_freed")

    def __init__(self) -> None:
        self.cpu = 0
        self.mem = 0
        self.ports_added: set[int] = set()
        self.ports_freed: dict[int, int] = {}
        self.groups: dict[tuple[str, str, str], int] = {}
        self.jobs: dict[tuple[str, str], int] = {}

    def port_taken(self, node: NodeState, port: int) -> bool:
        """Whether ``port`` is held on ``node`` once the plan is applied."""
        return port in self.ports_added or node.ports.get(port, 0) > self.ports_freed.get(port, 0)


def port_taken(node: NodeState, delta: Delta | None, port: int) -> bool:
    if delta is None:
        return port in node.ports
    return delta.port_taken(node, port)


@dataclass(slots=True)
class PlanContext:
    """State shared by every group of one scheduling call."""

    snapshot: ClusterSnapshot
    job: Job
    config: SchedulerConfig
    rng: random.Random
    now: float
    overlay: dict[NodeState, Delta] = field(default_factory=dict)
    stopped: set[str] = field(default_factory=set)
    """Allocation ids the plan stops (they no longer count for spread or distinct_property)."""
    property_counts: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    """(scope, target) -> allocations per target value, for distinct_property; scope is the
    job name or job.group."""
    budget: Budget | None = None
    """The job's namespace's room under its quota (None: no quota)."""

    def delta(self, node: NodeState) -> Delta:
        d = self.overlay.get(node)
        if d is None:
            d = self.overlay[node] = Delta()
        return d

    def new_alloc_id(self) -> str:
        """A UUID drawn from the call's seeded random source (so plans are reproducible),
        never one the snapshot already holds (a seed may be used twice)."""
        while True:
            aid = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
            if self.snapshot.alloc(aid) is None:
                return aid

    def free(self, alloc: AllocInfo, sign: int = 1) -> None:
        """Account for a stop: the allocation's resources and ports become available.

        ``sign=-1`` takes a stop back (its replacement found no node).
        """
        if sign > 0:
            self.stopped.add(alloc.id)
        else:
            self.stopped.discard(alloc.id)
        if self.budget is not None and alloc.namespace == self.budget.namespace:
            self.budget.give(alloc.cpu_millicores, alloc.memory_mb, sign)
        node = self.snapshot.node(alloc.node_id)
        if node is None or alloc.id not in node.allocs:
            return
        d = self.delta(node)
        d.cpu -= sign * alloc.cpu_millicores
        d.mem -= sign * alloc.memory_mb
        for port in alloc.ports.values():
            d.ports_freed[port] = d.ports_freed.get(port, 0) + sign
        gk = (alloc.namespace, alloc.job, alloc.group)
        jk = (alloc.namespace, alloc.job)
        d.groups[gk] = d.groups.get(gk, 0) - sign
        d.jobs[jk] = d.jobs.get(jk, 0) - sign

    def take(self, node: NodeState, gkey: tuple[str, str, str], cpu: int, mem: int,
             ports: list[int]) -> None:
        """Account for a placement on ``node``."""
        if self.budget is not None:
            self.budget.take(cpu, mem)
        d = self.delta(node)
        d.cpu += cpu
        d.mem += mem
        d.ports_added.update(ports)
        d.groups[gkey] = d.groups.get(gkey, 0) + 1
        jk = (gkey[0], gkey[1])
        d.jobs[jk] = d.jobs.get(jk, 0) + 1
