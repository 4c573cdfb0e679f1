"""Feasibility: can this node take one allocation of this group at all?

Checks come in three kinds, cheapest and most shared first:

* **node state** — ready, eligible, not draining (a flag on the node);
* **class checks** — datacenter, region, drivers, host volumes and constraints on
  non-unique targets: the answer is the same for every node of a :class:`NodeClass`, so
  it is computed once per class and cached (Nomad's "computed node class");
* **node checks** — constraints on unique targets (``${node.unique.name}``) and the
  placement-dependent ``distinct_hosts`` and ``distinct_property``, then resources
  (CPU, memory, ports) against what the snapshot and the plan already use.

Each failed check names a reason for the plan's explanation.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from controller.scheduler.snapshot import AllocInfo, NodeClass, NodeState
from orch.jobspec import constraints as cl
from orch.jobspec.model import Constraint, Group, Job
from orch.vocab import HOST_VOLUME_ATTR


@dataclass(frozen=True, slots=True)
class NodeRule:
    """A node-local constraint compiled once: ``holds(node_value)``."""

    target: str | None
    """Target name (``node.class``), or None when the attribute is a literal."""
    literal: str
    holds: cl.Predicate
    reason: str
    """``constraint ${node.class} = gpu``."""
    unique: bool


def compile_rule(c: Constraint) -> NodeRule:
    """A node-local constraint as a predicate (the job was validated, so it compiles)."""
    target = cl.target_name(c.attribute)
    return NodeRule(
        target=target, literal=c.attribute, holds=cl.compile_predicate(c.operator, c.value),
        reason="constraint " + cl.describe(c.attribute, c.operator, c.value),
        unique=target is not None and cl.is_unique_target(target))


@dataclass(frozen=True, slots=True)
class DistinctProperty:
    """At most ``limit`` allocations of the scope (job or group) per value of ``target``."""

    target: str
    limit: int
    job_scope: bool
    reason: str


class ClassFilter:
    """The checks whose answer is shared by a node class, cached per class.

    ``memo`` (from :meth:`ClusterSnapshot.memo`) lets the answers outlive one
    scheduling call: every job with the same datacenters, region, drivers and
    constraints shares them.
    """

    def __init__(self, job: Job, group: Group,
                 memo: Callable[[object], dict[Any, Any]] | None = None) -> None:
        self.datacenters = tuple(job.datacenters)
        self.region = job.region
        self.drivers = tuple(sorted({t.driver for t in group.tasks}))
        self.privileged = any(t.privileged for t in group.tasks)
        self.host_network = group.network.mode == "host" and "docker" in self.drivers
        self.host_volumes = host_volumes(group)
        node_local = [c for c in (*job.constraints, *group.constraints)
                      if cl.canonical_operator(c.operator) not in cl.PLACEMENT_OPERATORS]
        rules = [compile_rule(c) for c in node_local]
        self.class_rules = [r for r in rules if not r.unique]
        self.node_rules = [r for r in rules if r.unique]
        """Rules on unique targets: checked node by node."""
        self.signature = (self.datacenters, self.region, self.drivers, self.privileged,
                          self.host_network, self.host_volumes,
                          tuple(sorted((c.attribute, cl.canonical_operator(c.operator), c.value)
                                       for c, r in zip(node_local, rules, strict=True)
                                       if not r.unique)))
        """What the class checks depend on: equal signatures give equal answers."""
        self._cache: dict[int, str | None] = (
            memo(("class-filter", self.signature)) if memo is not None else {})

    def check_class(self, cls: NodeClass) -> str | None:
        """None when nodes of ``cls`` may run the group, else the reason they may not."""
        try:
            return self._cache[cls.id]
        except KeyError:
            reason = self._cache[cls.id] = self._check(cls)
            return reason

    def _check(self, cls: NodeClass) -> str | None:
        if self.datacenters and not any(fnmatch.fnmatchcase(cls.datacenter, dc)
                                        for dc in self.datacenters):
            return f"datacenter (not in {', '.join(self.datacenters)})"
        if self.region and cls.region != self.region:
            return f"region (not {self.region})"
        for d in self.drivers:
            if d not in cls.drivers:
                return f"missing driver {d}"
        props = cls.props
        if self.privileged and props.get("attr.orch.privileged") != "true":
            return "privileged containers not allowed"
        if self.host_network and props.get("attr.orch.host_network") == "false":
            return "host networking not allowed"
        for source, write in self.host_volumes:
            mode = props.get(f"attr.{HOST_VOLUME_ATTR}{source}")
            if mode is None:
                return f"missing host volume {source}"
            if write and mode != "rw":
                return f"host volume {source} is read-only"
        for r in self.class_rules:
            value = props.get(r.target) if r.target is not None else r.literal
            if not r.holds(value):
                return r.reason
        return None

    def check_node(self, node: NodeState) -> str | None:
        """Rules on unique targets (only when the group has some)."""
        for r in self.node_rules:
            assert r.target is not None
            if not r.holds(node.prop(r.target)):
                return r.reason
        return None


def host_volumes(group: Group) -> tuple[tuple[str, bool], ...]:
    """(host volume name, whether a task writes to it) for every host volume of the group."""
    out = set()
    for name, v in group.volumes.items():
        if v.type != "host":
            continue
        write = not v.read_only and any(m.volume == name and not m.read_only
                                        for t in group.tasks for m in t.volume_mounts)
        out.add((v.source, write))
    return tuple(sorted(out))


def placement_rules(job: Job, group: Group) -> tuple[bool, bool, list[DistinctProperty]]:
    """(distinct hosts for the job, for the group, distinct_property rules) of a group."""
    job_hosts = group_hosts = False
    props: list[DistinctProperty] = []
    for scope_job, items in ((True, job.constraints), (False, group.constraints)):
        for c in items:
            op = cl.canonical_operator(c.operator)
            if op == "distinct_hosts" and c.value.lower() != "false":
                if scope_job:
                    job_hosts = True
                else:
                    group_hosts = True
            elif op == "distinct_property":
                target = cl.target_name(c.attribute) or c.attribute
                props.append(DistinctProperty(
                    target=target, limit=int(c.value or 1), job_scope=scope_job,
                    reason=cl.describe(c.attribute, c.operator, c.value)))
    return job_hosts, group_hosts, props


def node_unavailable(node: NodeState) -> str | None:
    """Why a node takes no new allocations at all (None when it is schedulable)."""
    info = node.info
    if info.status == "down":
        return "down"
    if info.status != "ready":
        return "initializing"
    if info.draining:
        return "draining"
    if not info.eligible:
        return "ineligible"
    return None


def property_counts(allocs: Iterable[AllocInfo], nodes: dict[str, NodeState | None],
                    target: str) -> dict[str, int]:
    """How many of ``allocs`` run per value of ``target`` on their node."""
    counts: dict[str, int] = {}
    for a in allocs:
        node = nodes.get(a.node_id)
        if node is None:
            continue
        v = node.prop(target)
        if v is not None:
            counts[v] = counts.get(v, 0) + 1
    return counts
