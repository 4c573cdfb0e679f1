"""Choosing a node for one allocation of a group: bounded sampling of feasible nodes, best score.

Candidate nodes are the members of the node classes that pass the group's class
checks, in the snapshot's stable order, split into *buckets* when the group
has spreads or affinities (one bucket per spread value and affinity score, so
that the nodes the group prefers are tried first). For one placement the
placer walks the buckets and collects the first ``limit`` feasible nodes
(``SchedulerConfig.limit``: power of two choices for batch jobs, log2(n) for
others, every node for small clusters), setting aside up to ``max_skip`` nodes
that already run a replica of the group, then scores them and keeps the best.

Nodes found unable to take the group (full, port taken, wrong state, ...) are
dropped from the placer's own copy of its buckets: within one plan they stay
unable (the plan only adds load), so each is rejected once per group and a
placement costs about ``limit`` node visits. With bin-packing every placement
starts from the head of the stable order, so successive placements and
successive jobs fill the same nodes before opening new ones: that is what
keeps the number of nodes used close to the lower bound (Nomad visits nodes
in a fresh random order per evaluation, which spreads work over a large
cluster). With the spread algorithm the walk starts at a seeded random offset
and rotates.
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
from controller.scheduler.ranking import AffinityScorer, SpreadScorer
from controller.scheduler.snapshot import AllocInfo, NodeClass, NodeState
from orch.jobspec import constraints as cl
from orch.jobspec.model import Group


@dataclass(slots=True)
class _Bucket:
    nodes: list[NodeState]
    """The placer's own copy: nodes found unable to take the group are dropped from it."""
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


class Candidates:
    """The nodes whose class passes a group's class checks, split by (spread value, affinity).

    Kept in the snapshot's memo per (class checks, spread attribute, affinities)
    and rebuilt only when nodes change, so that the next job with the same
    constraints starts without touching every node class again.
    """

    def __init__(self, classes: list[NodeClass], primary: str | None,
                 affinity: AffinityScorer | None) -> None:
        self.classes = classes
        self.size = sum(len(c.nodes) for c in classes)
        groups: dict[tuple[str | None, float], list[NodeState]] = {}
        for c in classes:
            value = c.props.get(primary) if primary is not None else None
            aff = affinity.class_score(c) if affinity is not None else 0.0
            groups.setdefault((value, aff), []).extend(c.nodes)
        for nodes in groups.values():  # the snapshot's order, whatever order classes came in
            nodes.sort(key=_order_key)
        self.buckets = [(value, aff, nodes) for (value, aff), nodes in groups.items()]
        self._values: dict[str, int] = {}

    def values(self, target: str) -> int:
        """Distinct values of ``target`` among the candidate nodes."""
        n = self._values.get(target)
        if n is None:
            if cl.is_unique_target(target):
                n = self.size
            else:
                n = len({c.props.get(target) for c in self.classes} - {None})
            self._values[target] = n
        return n


def candidates(ctx: PlanContext, filt: ClassFilter, primary: str | None,
               affinity: AffinityScorer | None) -> Candidates:
    snap = ctx.snapshot
    key = (filt.signature, primary, affinity.signature if affinity is not None else None)
    memo = snap.memo("candidates")
    hit = memo.get(key)
    if hit is not None and hit[0] == snap.node_version:
        return hit[1]  # type: ignore[no-any-return]
    classes = [c for c in snap.classes if c.nodes and filt.check_class(c) is None]
    found = Candidates(classes, primary, affinity)
    if len(memo) >= _CANDIDATE_SETS:
        memo.clear()  # many distinct constraint sets: start over rather than grow
    memo[key] = (snap.node_version, found)
    return found


_CANDIDATE_SETS = 64
"""Candidate lists kept in the snapshot's memo (each holds up to one reference per node)."""


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
        self.filter = ClassFilter(job, group, snap.memo)
        self.job_hosts, self.group_hosts, self.distinct_props = placement_rules(job, group)
        self._prop_counts = [self._property_counts(p.target, p.job_scope, existing)
                             for p in self.distinct_props]
        self.extra = bool(self.static_ports or self.dynamic_labels or self.filter.node_rules
                          or self.job_hosts or self.group_hosts or self.distinct_props)
        """Whether node checks beyond CPU and memory apply."""

        affinities = (*job.affinities, *group.affinities)
        self.affinity = AffinityScorer(affinities, snap.memo) if affinities else None
        spreads = (*job.spreads, *group.spreads)
        targets = [(s.weight, cl.target_name(s.attribute) or s.attribute) for s in spreads]
        shared = [(w, t) for w, t in targets if not cl.is_unique_target(t)]
        primary = max(shared, key=lambda wt: wt[0])[1] if shared else None
        by_affinity = self.affinity if self.affinity is not None and not self.affinity.per_node \
            else None
        cands = candidates(ctx, self.filter, primary, by_affinity)
        self.size = cands.size
        self.spread: SpreadScorer | None = None
        if spreads:
            self.spread = SpreadScorer(spreads, count, {t: cands.values(t) for _, t in targets})
            for a in existing:
                if a.occupies and a.id not in ctx.stopped:
                    node = snap.node(a.node_id)
                    if node is not None:
                        self.spread.record(node)
        self.buckets = [_Bucket(list(nodes), value, aff) for value, aff, nodes in cands.buckets]
        self.limit = cfg.limit(self.size, job.type == "batch")
        self.max_skip = cfg.max_skip
        self.binpack = cfg.algorithm == "binpack"
        if not self.binpack:
            for b in self.buckets:
                b.cursor = ctx.rng.randrange(len(b.nodes)) if b.nodes else 0
        self.n_scores = (1 + (count > 1) + (self.affinity is not None)
                         + (self.spread is not None))
        """How many scores apply to this group (the divisor of the reported mean)."""
        self._fair_share = max(1.0, count / max(self.size, 1))

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
        """The best of a bounded sample of feasible nodes (not yet committed), or None.

        Nodes met on the way that cannot take the group (class checks, state,
        resources, ports, distinct_*) are dropped from the placer's buckets: within
        one plan they will not be able to later either, so every node is rejected
        at most once per group and the cost of a placement stays about ``limit``.
        """
        overlay_get = self.ctx.overlay.get
        cpu, mem, gkey, extra = self.cpu, self.mem, self.gkey, self.extra
        limit, max_skip, binpack = self.limit, self.max_skip, self.binpack
        found: list[tuple[NodeState, int, int, int]] = []
        skipped: list[tuple[NodeState, int, int, int]] = []
        for b in self._ordered():
            nodes = b.nodes
            n = len(nodes)
            if not n:
                continue
            start = 0 if binpack else b.cursor
            j = start
            end = start + n
            dead: list[int] = []
            while j < end:
                k = j if j < n else j - n
                node = nodes[k]
                j += 1
                if not node.schedulable:  # (classes were checked when buckets were built)
                    dead.append(k)
                    continue
                d = overlay_get(node)
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
                    dead.append(k)
                    continue
                if coll > 0 and len(skipped) < max_skip:
                    skipped.append((node, cu, mu, coll))
                    continue
                found.append((node, cu, mu, coll))
                if len(found) >= limit:
                    break
            nxt = j % n
            if dead:
                nxt -= _drop(nodes, dead, nxt)
            if not binpack:
                b.cursor = nxt % len(b.nodes) if b.nodes else 0
            if len(found) >= limit:
                break
        if len(found) < limit:
            found += skipped[:limit - len(found)]
        if not found:
            return None
        best: NodeState | None = None
        best_score = float("-inf")
        for node, cu, mu, coll in found:
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
            s -= collisions / self._fair_share  # ranking.anti_affinity, inlined
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


def _order_key(node: NodeState) -> bytes:
    return node.order_key


def _drop(nodes: list[NodeState], positions: list[int], before: int) -> int:
    """Delete ``positions`` from ``nodes`` in place; how many of them were below ``before``.

    The positions are those of one scan: ascending, or ascending, then wrapping
    around to ascending again. Few are deleted one by one; many are cut out by
    rebuilding only the stretch they span, never the whole list.
    """
    below = sum(1 for i in positions if i < before)
    ordered = sorted(positions)
    if len(ordered) <= 16:
        for i in reversed(ordered):
            del nodes[i]
        return below
    gone = set(ordered)
    lo, hi = ordered[0], ordered[-1] + 1
    if hi - lo > 4 * len(ordered) and ordered[0] < before <= ordered[-1]:
        # A wrapped scan: two stretches, the head of the list and its tail.
        head = [i for i in ordered if i < before]
        tail = [i for i in ordered if i >= before]
        _drop(nodes, tail, 0)
        _drop(nodes, head, 0)
        return below
    nodes[lo:hi] = [x for i, x in enumerate(nodes[lo:hi], lo) if i not in gone]
    return below
