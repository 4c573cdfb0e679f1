"""Choosing a node for one allocation of a group: bounded sampling of feasible nodes, best score.

Candidate nodes are the members of the node classes that pass the group's class
checks, in the snapshot's stable order, split into *buckets* when the group
has spreads or affinities (one bucket per spread value and affinity score, so
that the nodes the group prefers are tried first). For one placement the
placer walks the buckets and collects the first ``limit`` feasible nodes
(``SchedulerConfig.limit``: power of two choices for batch jobs, log2(n) for
others, every node for small clusters), setting aside up to ``max_skip`` nodes
that already run a replica of the group, then scores them and keeps the best.

With bin-packing, each bucket's cursor stays on the first node that can still
take the group: nodes before it are full for this group (the plan only adds
load), so every placement starts where the last one filled up. Successive
jobs thus fill the same nodes before opening new ones, which is what keeps the
number of nodes used close to the lower bound; the cost per placement stays
bounded by ``limit + max_skip`` plus the nodes the cursor passes once. With
the spread algorithm the cursors start at seeded random offsets and rotate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from controller.scheduler.context import Delta, PlanContext
from controller.scheduler.feasibility import (
    ClassFilter,
    node_unavailable,
    placement_rules,
    property_counts,
)
from controller.scheduler.plan import NodeMetrics
from controller.scheduler.ports import pick_dynamic, ports_problem
from controller.scheduler.ranking import AffinityScorer, SpreadScorer, anti_affinity
from controller.scheduler.snapshot import AllocInfo, NodeClass, NodeState
from orch.jobspec import constraints as cl
from orch.jobspec.model import Group


@dataclass(slots=True)
class _Bucket:
    nodes: list[NodeState]
    value: str | None = None
    """The primary spread attribute's value on these nodes."""
    affinity: float = 0.0
    cursor: int = 0


@dataclass(frozen=True, slots=True)
class Choice:
    """A chosen node, its normalised score and the host ports assigned there."""

    node: NodeState
    score: float
    ports: dict[str, int] = field(default_factory=dict)


class GroupPlacer:
    """Places allocations of one group, one at a time, against the snapshot plus the plan."""

    def __init__(self, ctx: PlanContext, group: Group, count: int,
                 existing: list[AllocInfo]) -> None:
        job, snap, cfg = ctx.job, ctx.snapshot, ctx.config
        self.ctx = ctx
        self.group = group
        self.count = count
        self.gkey = (job.namespace, job.name, group.name)
        self.jkey = (job.namespace, job.name)
        res = group.resources
        self.cpu = res.cpu_millicores
        self.mem = res.memory_mb
        self.static_ports = [p.static for p in group.network.ports if p.static]
        self.dynamic_labels = [p.label for p in group.network.ports if not p.static]
        self.port_lo, self.port_hi = cfg.dynamic_port_min, cfg.dynamic_port_max
        self.filter = ClassFilter(job, group)
        self.job_hosts, self.group_hosts, self.distinct_props = placement_rules(job, group)
        self._prop_counts = [self._property_counts(p.target, p.job_scope, existing)
                             for p in self.distinct_props]
        self.extra = bool(self.static_ports or self.dynamic_labels or self.filter.node_rules
                          or self.job_hosts or self.group_hosts or self.distinct_props)
        """Whether node checks beyond CPU and memory apply."""

        classes = [c for c in snap.classes if c.nodes and self.filter.check_class(c) is None]
        affinities = (*job.affinities, *group.affinities)
        self.affinity = AffinityScorer(affinities) if affinities else None
        spreads = (*job.spreads, *group.spreads)
        self.spread: SpreadScorer | None = None
        if spreads:
            self.spread = SpreadScorer(spreads, count, self._values_seen(spreads, classes))
            live = {a.id for a in existing if a.occupies and a.id not in ctx.stopped}
            for a in existing:
                node = snap.node(a.node_id) if a.id in live else None
                if node is not None:
                    self.spread.record(node)
        self.buckets = self._buckets(classes)
        self.size = sum(len(b.nodes) for b in self.buckets)
        self.limit = cfg.limit(self.size, job.type == "batch")
        self.max_skip = cfg.max_skip
        self.binpack = cfg.algorithm == "binpack"
        if not self.binpack:
            for b in self.buckets:
                b.cursor = ctx.rng.randrange(len(b.nodes)) if b.nodes else 0
        self.n_scores = (1 + (count > 1) + (self.affinity is not None)
                         + (self.spread is not None))
        """How many scores apply to this group (the divisor of the reported mean)."""

    # --- setup ----------------------------------------------------------------------------

    def _property_counts(self, target: str, job_scope: bool,
                         existing: list[AllocInfo]) -> dict[str, int]:
        ctx = self.ctx
        key = (self.jkey[1] if job_scope else f"{self.jkey[1]}.{self.group.name}", target)
        counts = ctx.property_counts.get(key)
        if counts is None:
            allocs = ctx.snapshot.allocs_of_job(*self.jkey) if job_scope else existing
            live = [a for a in allocs if a.occupies and a.id not in ctx.stopped]
            nodes = {a.node_id: ctx.snapshot.node(a.node_id) for a in live}
            counts = ctx.property_counts[key] = property_counts(live, nodes, target)
        return counts

    def _values_seen(self, spreads: tuple[object, ...], classes: list[NodeClass]) -> dict[str, int]:
        seen: dict[str, int] = {}
        for s in spreads:
            target = cl.target_name(getattr(s, "attribute", "")) or ""
            if cl.is_unique_target(target):
                seen[target] = sum(len(c.nodes) for c in classes)
            else:
                seen[target] = len({c.props.get(target) for c in classes} - {None})
        return seen

    def _buckets(self, classes: list[NodeClass]) -> list[_Bucket]:
        snap = self.ctx.snapshot
        primary = self.spread.primary if self.spread is not None else None
        by_affinity = self.affinity is not None and not self.affinity.per_node
        if primary is None and not by_affinity:
            if sum(len(c.nodes) for c in classes) == len(snap):
                return [_Bucket(snap.order)]  # every node's class passes: no copy
            return [_Bucket([n for c in classes for n in c.nodes])]
        groups: dict[tuple[str | None, float], list[NodeState]] = {}
        for c in classes:
            value = c.props.get(primary.target) if primary is not None else None
            aff = self.affinity.class_score(c) if by_affinity and self.affinity else 0.0
            groups.setdefault((value, aff), []).extend(c.nodes)
        return [_Bucket(nodes, value, aff) for (value, aff), nodes in groups.items()]

    def _ordered(self) -> list[_Bucket]:
        if len(self.buckets) == 1:
            return self.buckets
        primary = self.spread.primary if self.spread is not None else None
        if primary is None:
            return sorted(self.buckets, key=lambda b: -b.affinity)
        return sorted(self.buckets, key=lambda b: (-primary.need(b.value), -b.affinity,
                                                   b.value is None, b.value or ""))

    # --- checks ---------------------------------------------------------------------------

    def _extra_problem(self, node: NodeState, d: Delta | None) -> tuple[str, str] | None:
        """(kind, reason) of the first node check beyond CPU/memory that fails, or None."""
        if self.filter.node_rules:
            r = self.filter.check_node(node)
            if r is not None:
                return "filtered", r
        if self.job_hosts:
            n = node.job_counts.get(self.jkey, 0) + (d.jobs.get(self.jkey, 0) if d else 0)
            if n > 0:
                return "filtered", "distinct_hosts"
        if self.group_hosts:
            n = node.group_counts.get(self.gkey, 0) + (d.groups.get(self.gkey, 0) if d else 0)
            if n > 0:
                return "filtered", "distinct_hosts"
        for rule, counts in zip(self.distinct_props, self._prop_counts, strict=True):
            v = node.prop(rule.target)
            if v is None:
                return "filtered", f"{rule.reason} (attribute missing)"
            if counts.get(v, 0) >= rule.limit:
                return "filtered", rule.reason
        if self.static_ports or self.dynamic_labels:
            r = ports_problem(node, d, self.static_ports, len(self.dynamic_labels),
                              self.port_lo, self.port_hi)
            if r is not None:
                return "exhausted", r
        return None

    def problem(self, node: NodeState) -> tuple[str, str] | None:
        """(kind, reason) why ``node`` cannot take one more allocation now; None if it can.

        Kinds: ``unavailable``, ``filtered``, ``exhausted`` (see NodeMetrics).
        """
        r = node_unavailable(node)
        if r is not None:
            return "unavailable", r
        r = self.filter.check_class(node.cls)
        if r is not None:
            return "filtered", r
        d = self.ctx.overlay.get(node)
        extra = self._extra_problem(node, d)
        if extra is not None and extra[0] == "filtered":
            return extra
        cpu_used = node.cpu_used + (d.cpu if d else 0)
        mem_used = node.mem_used + (d.mem if d else 0)
        if cpu_used + self.cpu > node.cpu_total:
            return "exhausted", "cpu"
        if mem_used + self.mem > node.mem_total:
            return "exhausted", "memory"
        return extra

    def explain(self) -> NodeMetrics:
        """Why no node can take the next allocation: every node counted under its first reason."""
        snap = self.ctx.snapshot
        m = NodeMetrics(evaluated=len(snap))
        for node in snap.order:
            p = self.problem(node)
            if p is not None:
                m.add(*p)
        return m

    # --- choosing -------------------------------------------------------------------------

    def select(self, penalty: frozenset[str] = frozenset()) -> Choice | None:
        """The best of a bounded sample of feasible nodes (not yet committed), or None."""
        overlay = self.ctx.overlay
        cpu, mem, gkey, extra = self.cpu, self.mem, self.gkey, self.extra
        limit, max_skip, binpack = self.limit, self.max_skip, self.binpack
        found: list[tuple[NodeState, Delta | None, int, int, int]] = []
        skipped: list[tuple[NodeState, Delta | None, int, int, int]] = []
        for b in self._ordered():
            nodes = b.nodes
            n = len(nodes)
            if not n:
                continue
            j = start = b.cursor
            end = n if binpack else start + n
            sticky = binpack
            while j < end:
                node = nodes[j if j < n else j - n]
                j += 1
                if not node.schedulable:
                    if sticky:
                        b.cursor = j
                    continue
                d = overlay.get(node)
                if d is None:
                    cu = node.cpu_used + cpu
                    mu = node.mem_used + mem
                    coll = node.group_counts.get(gkey, 0)
                else:
                    cu = node.cpu_used + d.cpu + cpu
                    mu = node.mem_used + d.mem + mem
                    coll = node.group_counts.get(gkey, 0) + d.groups.get(gkey, 0)
                if (cu > node.cpu_total or mu > node.mem_total
                        or (extra and self._extra_problem(node, d) is not None)):
                    if sticky:
                        b.cursor = j
                    continue
                sticky = False
                if coll > 0 and len(skipped) < max_skip:
                    skipped.append((node, d, cu, mu, coll))
                    continue
                found.append((node, d, cu, mu, coll))
                if len(found) >= limit:
                    break
            if not binpack:
                b.cursor = j % n
            if len(found) >= limit:
                break
        if len(found) < limit:
            found += skipped[:limit - len(found)]
        if not found:
            return None
        best: NodeState | None = None
        best_score = float("-inf")
        for node, _d, cu, mu, coll in found:
            s = self._score(node, cu, mu, coll, penalty)
            if s > best_score:
                best, best_score = node, s
        assert best is not None
        return Choice(best, best_score / self.n_scores)

    def _score(self, node: NodeState, cpu_after: int, mem_after: int, collisions: int,
               penalty: frozenset[str]) -> float:
        ct, mt = node.cpu_total, node.mem_total
        fc = 1.0 - cpu_after / ct if ct > 0 else 0.0
        fm = 1.0 - mem_after / mt if mt > 0 else 0.0
        raw = 10.0 ** fc + 10.0 ** fm
        s = (20.0 - raw) / 18.0 if self.binpack else (raw - 2.0) / 18.0
        s = 0.0 if s < 0.0 else 1.0 if s > 1.0 else s
        if collisions:
            s += anti_affinity(collisions, self.count, self.size)
        if self.affinity is not None:
            s += self.affinity.score(node)
        if self.spread is not None:
            s += self.spread.score(node)
        if penalty and node.info.id in penalty:
            s -= 1.0
        return s

    def score_on(self, node: NodeState, penalty: frozenset[str] = frozenset()) -> float:
        """The normalised score ``node`` would get (it must be feasible)."""
        d = self.ctx.overlay.get(node)
        cu = node.cpu_used + (d.cpu if d else 0) + self.cpu
        mu = node.mem_used + (d.mem if d else 0) + self.mem
        coll = node.group_counts.get(self.gkey, 0) + (d.groups.get(self.gkey, 0) if d else 0)
        return self._score(node, cu, mu, coll, penalty) / self.n_scores

    def commit(self, choice: Choice) -> Choice:
        """Account for a placement on the chosen node; returns it with its host ports."""
        node, ctx = choice.node, self.ctx
        d = ctx.overlay.get(node)
        ports = {p.label: p.static for p in self.group.network.ports if p.static}
        if self.dynamic_labels:
            picked = pick_dynamic(node, d, len(self.dynamic_labels), self.port_lo, self.port_hi,
                                  self.static_ports, ctx.rng)
            ports.update(zip(self.dynamic_labels, picked, strict=True))
        ctx.take(node, self.gkey, self.cpu, self.mem, list(ports.values()))
        if self.spread is not None:
            self.spread.record(node)
        for rule, counts in zip(self.distinct_props, self._prop_counts, strict=True):
            v = node.prop(rule.target)
            if v is not None:
                counts[v] = counts.get(v, 0) + 1
        return Choice(node, choice.score, ports)

    def release(self, alloc: AllocInfo, sign: int = 1) -> None:
        """Stop ``alloc`` within the plan (``sign=-1`` undoes it): frees its node's resources
        and takes it out of this group's spread and distinct_property counts."""
        ctx = self.ctx
        if (alloc.id in ctx.stopped) == (sign > 0) or not alloc.occupies:
            return
        ctx.free(alloc, sign)
        node = ctx.snapshot.node(alloc.node_id)
        if node is None:
            return
        if self.spread is not None:
            self.spread.record(node, -sign)
        for rule, counts in zip(self.distinct_props, self._prop_counts, strict=True):
            v = node.prop(rule.target)
            if v is not None:
                counts[v] = counts.get(v, 0) - sign

    def place(self, penalty: frozenset[str] = frozenset(),
              preferred: NodeState | None = None) -> Choice | None:
        """Select and commit; ``preferred`` is taken when it is feasible (in-place replacement)."""
        if preferred is not None and self.problem(preferred) is None:
            return self.commit(Choice(preferred, self.score_on(preferred, penalty)))
        choice = self.select(penalty)
        return self.commit(choice) if choice is not None else None
