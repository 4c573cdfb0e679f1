"""Scoring feasible nodes: fit (bin-pack or spread), job anti-affinity, affinities, spread targets.

Every score lies in [-1, 1] (fit in [0, 1]); a node's total is their sum and its
reported score their mean over the scores that apply to the group, as Nomad's
score normalisation does. Only relative order matters for the choice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from controller.scheduler.snapshot import NodeClass, NodeState
from orch.jobspec import constraints as cl
from orch.jobspec.model import Affinity, Spread


def fit_score(cpu_total: int, mem_total: int, cpu_after: int, mem_after: int,
              binpack: bool = True) -> float:
    """How well the node fits after the placement, in [0, 1].

    Nomad's "best fit v3": with f the free fraction of CPU and of memory left,
    bin-packing scores ``(20 - 10^f_cpu - 10^f_mem) / 18`` (1 when full, 0 when
    empty) and spreading its mirror ``(10^f_cpu + 10^f_mem - 2) / 18``.
    """
    fc = 1.0 - cpu_after / cpu_total if cpu_total > 0 else 0.0
    fm = 1.0 - mem_after / mem_total if mem_total > 0 else 0.0
    raw = 10.0 ** fc + 10.0 ** fm
    score = (20.0 - raw) / 18.0 if binpack else (raw - 2.0) / 18.0
    return 0.0 if score < 0.0 else 1.0 if score > 1.0 else score


def anti_affinity(collisions: int, count: int, candidates: int) -> float:
    """Penalty for a node that already runs ``collisions`` replicas of the group.

    ``-collisions / fair_share`` where ``fair_share = max(1, count / candidates)``
    is how many replicas each candidate node would run if they were spread
    evenly. While the group has fewer replicas than nodes, one collision costs
    a full point, more than any fit or affinity difference can win back, so
    replicas land on different nodes whenever they can; in groups larger than
    the cluster the penalty shrinks so that they share nodes evenly. (Nomad's
    ``-(collisions + 1) / count`` is weak for large groups: replicas of a
    100-replica group stack on the fullest node.)
    """
    if collisions <= 0:
        return 0.0
    return -collisions / max(1.0, count / max(candidates, 1))


@dataclass(frozen=True, slots=True)
class _AffinityRule:
    target: str
    holds: cl.Predicate
    weight: int
    unique: bool


class AffinityScorer:
    """Sum of the weights of the affinities a node matches, over the sum of all |weights|."""

    def __init__(self, affinities: Iterable[Affinity],
                 memo: Callable[[object], dict[Any, Any]] | None = None) -> None:
        affinities = tuple(affinities)
        rules = []
        for a in affinities:
            target = cl.target_name(a.attribute) or a.attribute
            rules.append(_AffinityRule(target, cl.compile_predicate(a.operator, a.value),
                                       a.weight, cl.is_unique_target(target)))
        self.total = float(sum(abs(r.weight) for r in rules)) or 1.0
        self._class_rules = [r for r in rules if not r.unique]
        self._node_rules = [r for r in rules if r.unique]
        self.per_node = bool(self._node_rules)
        """True when some affinity looks at unique targets (the score differs per node)."""
        self.signature = tuple(sorted((a.attribute, cl.canonical_operator(a.operator), a.value,
                                       a.weight) for a in affinities))
        self._cache: dict[int, float] = (
            memo(("affinity", self.signature)) if memo is not None else {})

    def class_score(self, cls: NodeClass) -> float:
        """The part of the score shared by every node of ``cls``."""
        try:
            return self._cache[cls.id]
        except KeyError:
            s = sum(r.weight for r in self._class_rules if r.holds(cls.props.get(r.target)))
            score = self._cache[cls.id] = s / self.total
            return score

    def score(self, node: NodeState) -> float:
        s = self.class_score(node.cls)
        for r in self._node_rules:
            if r.holds(node.prop(r.target)):
                s += r.weight / self.total
        return s


IMPLICIT = "*"
"""The spread bucket of every value the targets do not name."""


class _SpreadRule:
    __slots__ = ("boosts", "counts", "desired", "even", "target", "unique", "weight")

    def __init__(self, spread: Spread, count: int, values: int) -> None:
        self.target = cl.target_name(spread.attribute) or spread.attribute
        self.unique = cl.is_unique_target(self.target)
        self.weight = spread.weight
        self.counts: dict[str, int] = {}
        self.boosts: dict[str | None, float] = {}
        """Weighted boost per value, valid until the counts change."""
        self.desired: dict[str, float] = {}
        self.even = not spread.targets
        if self.even:
            self.desired[IMPLICIT] = count / max(values, 1)
        else:
            for t in spread.targets:
                self.desired[t.value] = t.percent / 100.0 * count
            rest = count - sum(self.desired.values())
            if rest > 1e-9:
                self.desired[IMPLICIT] = rest

    def bucket(self, value: str) -> str:
        return value if (value in self.desired and not self.even) else IMPLICIT

    def used(self, value: str) -> int:
        if self.even or value in self.desired:
            return self.counts.get(value, 0)
        return sum(n for v, n in self.counts.items() if v not in self.desired)

    def need(self, value: str | None) -> float:
        """Allocations the value still wants (negative when it has more than its share)."""
        if value is None:
            return float("-inf")
        desired = self.desired.get(self.bucket(value))
        if desired is None:
            return float("-inf")
        return desired - self.used(value)

    def boost(self, value: str | None) -> float:
        if value is None:
            return -1.0
        desired = self.desired.get(self.bucket(value), 0.0)
        if desired <= 0.0:
            return -1.0
        b = (desired - (self.used(value) + 1)) / max(desired, 1.0)
        return -1.0 if b < -1.0 else 1.0 if b > 1.0 else b


class SpreadScorer:
    """How much a node's value of each spread attribute still lacks allocations of the group.

    With targets, a value wants ``percent`` of the group's count; values the
    targets do not name share what is left. Without targets every value seen
    among the candidate nodes wants an equal share. The boost for a node is
    ``(desired - (used + 1)) / max(desired, 1)``, clipped to [-1, 1], weighted
    by the spread's weight; a node lacking the attribute gets -1.
    """

    def __init__(self, spreads: Iterable[Spread], count: int,
                 values_seen: dict[str, int]) -> None:
        self.rules = [_SpreadRule(s, count, values_seen.get(cl.target_name(s.attribute) or "",
                                                            1)) for s in spreads]
        self.total_weight = float(sum(r.weight for r in self.rules)) or 1.0
        primary = [r for r in self.rules if not r.unique]
        self.primary = max(primary, key=lambda r: r.weight) if primary else None
        """The spread that decides in which order node buckets are tried."""

    def targets(self) -> list[str]:
        return [r.target for r in self.rules]

    def score(self, node: NodeState) -> float:
        total = 0.0
        props = node.cls.props
        for r in self.rules:
            v = node.prop(r.target) if r.unique else props.get(r.target)
            b = r.boosts.get(v)
            if b is None:
                b = r.boosts[v] = r.weight * r.boost(v)
            total += b
        return total / self.total_weight

    def record(self, node: NodeState, sign: int = 1) -> None:
        for r in self.rules:
            v = node.prop(r.target)
            if v is not None:
                r.counts[v] = r.counts.get(v, 0) + sign
                r.boosts.clear()
