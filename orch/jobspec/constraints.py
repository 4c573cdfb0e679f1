"""The constraint language shared by job validation and the scheduler.

A constraint compares a node *target* (``${node.class}``, ``${attr.kernel.name}``,
``${meta.rack}``) with a value using an operator. :func:`compile_predicate`
turns (operator, value) into a fast ``predicate(node_value) -> bool`` once, so
the scheduler never re-parses a regexp or a version range per node.

Operators (Nomad's, with its aliases ``==``/``is`` for ``=`` and ``not`` for ``!=``):

``=`` ``!=``            string equality (a missing attribute never equals anything)
``<`` ``<=`` ``>`` ``>=`` numbers if both sides are numbers, versions if both look like
                        versions (``5.15.0`` > ``5.4``), otherwise text order
``version`` ``semver``  a range such as ``>= 1.2, < 2.0`` or ``~> 1.6`` on a version
``regexp``              Python ``re.search``
``set_contains``        every comma-separated item of the value is in the attribute's list
``set_contains_any``    at least one is
``is_set`` ``is_not_set``  the attribute exists / does not
``distinct_hosts``      placement-dependent: replicas on different nodes
``distinct_property``   placement-dependent: at most N (the value, default 1) per target value
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from functools import total_ordering
from typing import Any

OPERATORS = ("=", "!=", "<", "<=", ">", ">=", "version", "semver", "regexp", "set_contains",
             "set_contains_any", "is_set", "is_not_set", "distinct_hosts", "distinct_property")
ALIASES = {"==": "=", "is": "=", "not": "!="}
PLACEMENT_OPERATORS = ("distinct_hosts", "distinct_property")
"""Operators whose answer depends on what is already placed, not on the node alone."""

NODE_TARGETS = ("node.id", "node.name", "node.datacenter", "node.region", "node.class",
                "node.unique.id", "node.unique.name")
TARGET_PREFIXES = ("attr.", "meta.")
UNIQUE_TARGETS = ("node.id", "node.name", "node.unique.")
"""Targets that differ on every node (so a result cannot be shared by a class of nodes)."""

_TARGET = re.compile(r"\$\{([^${}]+)\}\Z")

Predicate = Callable[[str | None], bool]


def canonical_operator(op: str) -> str:
    """``==``/``is`` -> ``=``, ``not`` -> ``!=``, empty -> ``=``; others unchanged."""
    return ALIASES.get(op, op or "=")


def target_name(attribute: str) -> str | None:
    """``"${attr.kernel.name}"`` -> ``"attr.kernel.name"``; None when not an interpolation."""
    m = _TARGET.match(attribute.strip())
    return m.group(1).strip() if m else None


def is_unique_target(name: str) -> bool:
    """True for targets that differ per node: node.id, node.name, *.unique.*."""
    return name.startswith(UNIQUE_TARGETS) or ".unique." in name


def check_target(attribute: str) -> str | None:
    """Why ``attribute`` is not a valid node target, or None when it is."""
    name = target_name(attribute)
    if name is None:
        return (f"must name a node attribute such as ${{node.class}}, ${{attr.kernel.name}} "
                f"or ${{meta.rack}}, got {attribute!r}")
    if name in NODE_TARGETS or (name.startswith(TARGET_PREFIXES) and len(name) > 5):
        return None
    return (f"unknown target {attribute!r}: use ${{node.<{'|'.join(t[5:] for t in NODE_TARGETS)}>}}"
            f", ${{attr.<name>}} or ${{meta.<name>}}")


def check_operand(op: str, value: str) -> str | None:
    """Why ``value`` does not suit operator ``op``, or None when it does."""
    op = canonical_operator(op)
    if op not in OPERATORS:
        return None  # the operator itself is reported by the caller
    try:
        compile_predicate(op, value)
    except ValueError as e:
        return str(e)
    return None


# --- versions -----------------------------------------------------------------------------

_VERSION = re.compile(r"v?(\d+(?:\.\d+)*)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?\Z")


@total_ordering
class Version:
    """A dotted version with an optional pre-release (``1.2.3-rc.1``); build metadata is ignored."""

    __slots__ = ("pre", "segments")

    def __init__(self, segments: tuple[int, ...], pre: tuple[int | str, ...]) -> None:
        self.segments = segments
        self.pre = pre

    @classmethod
    def parse(cls, text: str) -> Version | None:
        m = _VERSION.match(text.strip())
        if m is None:
            return None
        segs = tuple(int(x) for x in m.group(1).split("."))
        pre = tuple(int(p) if p.isdigit() else p for p in (m.group(2) or "").split(".") if p)
        return cls(segs, pre)

    def _key(self, width: int) -> tuple[tuple[int, ...], int, tuple[tuple[int, int | str], ...]]:
        segs = self.segments + (0,) * (width - len(self.segments))
        # A release sorts after its pre-releases; numeric identifiers before alphanumeric ones.
        pre = tuple((0, p) if isinstance(p, int) else (1, p) for p in self.pre)
        return segs, 0 if self.pre else 1, pre

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        w = max(len(self.segments), len(other.segments))
        return self._key(w) == other._key(w)

    def __lt__(self, other: Version) -> bool:
        w = max(len(self.segments), len(other.segments))
        return self._key(w) < other._key(w)

    def __hash__(self) -> int:
        return hash(self._key(8))

    def __repr__(self) -> str:
        pre = "-" + ".".join(map(str, self.pre)) if self.pre else ""
        return f"Version({'.'.join(map(str, self.segments))}{pre})"


_RANGE_OPS: dict[str, Callable[[Version, Version], bool]] = {
    "=": lambda v, c: v == c, "!=": lambda v, c: v != c, ">": lambda v, c: v > c,
    ">=": lambda v, c: v >= c, "<": lambda v, c: v < c, "<=": lambda v, c: v <= c,
}
_CLAUSE = re.compile(r"\s*(~>|>=|<=|!=|=|>|<)?\s*(\S+)\s*\Z")


def version_range(text: str) -> Callable[[Version], bool]:
    """A predicate for a range such as ``">= 1.2, < 2.0"`` or ``"~> 1.6"`` (pessimistic)."""
    clauses: list[Callable[[Version], bool]] = []
    for part in text.split(","):
        m = _CLAUSE.match(part)
        bound = Version.parse(m.group(2)) if m else None
        if m is None or bound is None:
            raise ValueError(f"not a version range: {text!r} (write e.g. \">= 1.2, < 2.0\")")
        op = m.group(1) or "="
        if op == "~>":
            # ~> 1.6 means >= 1.6, < 2.0; ~> 1.6.3 means >= 1.6.3, < 1.7.0.
            segs = bound.segments
            upper_segs = (segs[0] + 1,) if len(segs) == 1 else (*segs[:-2], segs[-2] + 1)
            clauses.append(_between(bound, Version(upper_segs, ())))
        else:
            clauses.append(_compare(_RANGE_OPS[op], bound))
    return lambda v: all(c(v) for c in clauses)


def _between(lo: Version, hi: Version) -> Callable[[Version], bool]:
    return lambda v: lo <= v < hi


def _compare(fn: Callable[[Version, Version], bool], bound: Version) -> Callable[[Version], bool]:
    return lambda v: fn(v, bound)


# --- predicates ---------------------------------------------------------------------------


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _ordered(op: str, rhs: str) -> Predicate:
    cmp: Callable[[Any, Any], bool] = {
        "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}[op]
    r_num = _number(rhs)
    r_ver = Version.parse(rhs)

    def pred(lhs: str | None) -> bool:
        if lhs is None:
            return False
        if r_num is not None:
            l_num = _number(lhs)
            if l_num is not None:
                return cmp(l_num, r_num)
        if r_ver is not None:
            l_ver = Version.parse(lhs)
            if l_ver is not None:
                return cmp(l_ver, r_ver)
        return cmp(lhs, rhs)

    return pred


def _items(text: str) -> set[str]:
    return {x.strip() for x in text.split(",") if x.strip()}


def compile_predicate(op: str, rhs: str) -> Predicate:
    """``predicate(node_value)`` for a node-local operator; ValueError for a bad value.

    ``node_value`` is None when the node lacks the attribute.
    """
    op = canonical_operator(op)
    if op == "=":
        return lambda lhs: lhs is not None and lhs == rhs
    if op == "!=":
        return lambda lhs: lhs != rhs
    if op in ("<", "<=", ">", ">="):
        if not rhs:
            raise ValueError(f"operator {op!r} needs a value to compare with")
        return _ordered(op, rhs)
    if op in ("version", "semver"):
        rng = version_range(rhs)

        def in_range(lhs: str | None) -> bool:
            v = Version.parse(lhs) if lhs is not None else None
            return v is not None and rng(v)

        return in_range
    if op == "regexp":
        try:
            rx = re.compile(rhs)
        except re.error as e:
            raise ValueError(f"not a valid regular expression: {e}") from None
        return lambda lhs: lhs is not None and rx.search(lhs) is not None
    if op in ("set_contains", "set_contains_any"):
        want = _items(rhs)
        if not want:
            raise ValueError(f"operator {op!r} needs a comma-separated list of values")
        if op == "set_contains":
            return lambda lhs: lhs is not None and want <= _items(lhs)
        return lambda lhs: lhs is not None and bool(want & _items(lhs))
    if op in ("is_set", "is_not_set"):
        if rhs:
            raise ValueError(f"operator {op!r} takes no value, got {rhs!r}")
        return (lambda lhs: lhs is not None) if op == "is_set" else (lambda lhs: lhs is None)
    if op == "distinct_hosts":
        if rhs.lower() not in ("", "true", "false"):
            raise ValueError(f"distinct_hosts takes true or false, got {rhs!r}")
        return lambda lhs: True
    if op == "distinct_property":
        if rhs and (not rhs.isdigit() or int(rhs) < 1):
            raise ValueError(f"distinct_property takes a limit >= 1, got {rhs!r}")
        return lambda lhs: True
    raise ValueError(f"unknown operator {op!r}")


def describe(attribute: str, op: str, value: str) -> str:
    """The constraint as people write it: ``${node.class} = gpu``."""
    op = canonical_operator(op)
    if op == "distinct_hosts":
        return "distinct_hosts"
    if op in ("is_set", "is_not_set"):
        return f"{attribute} {op}"
    if op == "distinct_property":
        return f"distinct_property {attribute}" + (f" = {value}" if value else "")
    return f"{attribute} {op} {value}".rstrip()
