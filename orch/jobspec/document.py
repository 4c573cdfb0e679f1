"""Job file text (YAML or JSON) as a tree of :class:`Value` that remembers lines and source text.

Reading YAML node by node, instead of asking PyYAML for Python objects, keeps
two things a schema-driven reader needs: the line of every value (for error
messages) and the exact text of every scalar, so that ``value: 1.10`` in a
constraint stays ``"1.10"`` and ``env: {COUNTRY: NO}`` stays ``"NO"`` (the YAML
"Norway problem" never reaches a string field). Duplicate keys, which PyYAML
silently collapses, are reported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from orch.errors import JobSpecProblem


@dataclass(slots=True)
class Value:
    """One node of a job file: a mapping, a list or a scalar."""

    kind: str
    """``map``, ``list`` or ``scalar``."""
    data: Any
    """dict[str, Value], list[Value], or the scalar as YAML/JSON typed it (None, bool, int,
    float, str)."""
    text: str = ""
    """A scalar's text as written (without quotes)."""
    line: int | None = None
    """1-based line where the value starts (None for JSON)."""
    key_lines: dict[str, int] = field(default_factory=dict)
    """For mappings: the line of each key."""


MAX_BYTES = 1024 * 1024
"""The largest job file read (a job is a few KiB; a megabyte is a mistake or an attack)."""
MAX_DEPTH = 32
"""Deepest nesting of mappings and lists (job files nest about 8 deep)."""
MAX_VALUES = 100_000
"""Most values one file may hold once YAML aliases are expanded (a "billion laughs" file
expands a few lines into billions)."""


class _TooBig(Exception):
    pass


def load_document(text: str, fmt: str) -> tuple[Value | None, list[JobSpecProblem]]:
    """Parse ``text`` as ``yaml`` or ``json``; syntax errors and files past the limits
    (size, depth, number of values) come back as problems."""
    if fmt not in ("yaml", "json"):
        raise ValueError(f"unknown job file format {fmt!r} (yaml or json)")
    if len(text) > MAX_BYTES:
        return None, [JobSpecProblem("", f"the file is {len(text):,} characters; a job file "
                                         f"may hold at most {MAX_BYTES:,}")]
    try:
        return _load_json(text) if fmt == "json" else _load_yaml(text)
    except (_TooBig, RecursionError) as e:
        what = str(e) if isinstance(e, _TooBig) else f"nests deeper than {MAX_DEPTH} levels"
        return None, [JobSpecProblem("", f"the file {what}")]


class _Budget:
    """Counts values and depth while a tree is built."""

    def __init__(self) -> None:
        self.values = 0

    def enter(self, depth: int) -> None:
        self.values += 1
        if self.values > MAX_VALUES:
            raise _TooBig(f"holds more than {MAX_VALUES:,} values (YAML aliases expanded)")
        if depth > MAX_DEPTH:
            raise _TooBig(f"nests deeper than {MAX_DEPTH} levels")


# --- YAML ---------------------------------------------------------------------------------

_INT, _FLOAT, _BOOL, _NULL = (f"tag:yaml.org,2002:{t}" for t in ("int", "float", "bool", "null"))


class _Constructor(yaml.constructor.SafeConstructor):
    """Only used to turn resolved scalar nodes into Python values and expand ``<<`` merges."""


def _load_yaml(text: str) -> tuple[Value | None, list[JobSpecProblem]]:
    try:
        docs = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        what = " ".join(str(p) for p in (e.context, e.problem) if p)
        return None, [JobSpecProblem("", f"not valid YAML: {what}", line)]
    except yaml.YAMLError as e:  # pragma: no cover - every PyYAML parse error is marked
        return None, [JobSpecProblem("", f"not valid YAML: {e}")]
    docs = [d for d in docs if d is not None]
    if not docs:
        return None, [JobSpecProblem("", "the file is empty; a job file holds one job")]
    if len(docs) > 1:
        line = docs[1].start_mark.line + 1
        return None, [JobSpecProblem("", "holds more than one YAML document; one job per file",
                                     line)]
    problems: list[JobSpecProblem] = []
    value = _from_yaml(docs[0], _Constructor(), "", problems, _Budget(), 0)
    return value, problems


def _from_yaml(node: yaml.Node, ctor: _Constructor, path: str,
               problems: list[JobSpecProblem], budget: _Budget, depth: int) -> Value:
    budget.enter(depth)
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        written = {id(k) for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"}
        try:
            ctor.flatten_mapping(node)  # expands ``<<: *anchor`` merge keys, merged ones first
        except yaml.constructor.ConstructorError as e:
            problems.append(JobSpecProblem(path, f"bad merge key: {e.problem}", line))
        out = Value("map", {}, line=line)
        merged: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(JobSpecProblem(path, "keys must be plain names",
                                               key_node.start_mark.line + 1))
                continue
            key = key_node.value
            key_line = key_node.start_mark.line + 1
            if id(key_node) not in written:
                merged.add(key)
            elif key in merged:
                merged.discard(key)  # a key written here overrides the merged one
            elif key in out.data:
                first = out.key_lines[key]
                problems.append(JobSpecProblem(
                    _join(path, key), f"duplicate key (first on line {first})", key_line))
                continue
            out.key_lines[key] = key_line
            out.data[key] = _from_yaml(value_node, ctor, _join(path, key), problems, budget,
                                       depth + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return Value("list", [_from_yaml(n, ctor, f"{path}[{i}]", problems, budget, depth + 1)
                              for i, n in enumerate(node.value)], line=line)
    assert isinstance(node, yaml.ScalarNode)
    try:
        data = ctor.construct_object(node) if node.tag in (_INT, _FLOAT, _BOOL, _NULL) \
            else node.value
    except (yaml.constructor.ConstructorError, ValueError):
        data = node.value
    return Value("scalar", data, text=node.value, line=line)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --- JSON ---------------------------------------------------------------------------------


class _Number(str):
    """A JSON number kept as its text, so that string fields get it exactly as written."""


def _load_json(text: str) -> tuple[Value | None, list[JobSpecProblem]]:
    duplicates: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out:
                duplicates.append(k)
            out[k] = v
        return out

    try:
        data = json.loads(text, object_pairs_hook=pairs, parse_int=_Number, parse_float=_Number)
    except json.JSONDecodeError as e:
        return None, [JobSpecProblem("", f"not valid JSON: {e.msg} (column {e.colno})", e.lineno)]
    problems = [JobSpecProblem(k, "duplicate key") for k in duplicates]
    return _from_json(data, _Budget(), 0), problems


def _from_json(data: Any, budget: _Budget, depth: int) -> Value:
    budget.enter(depth)
    if isinstance(data, dict):
        return Value("map", {k: _from_json(v, budget, depth + 1) for k, v in data.items()})
    if isinstance(data, list):
        return Value("list", [_from_json(v, budget, depth + 1) for v in data])
    if isinstance(data, _Number):
        n: int | float = int(data) if data.lstrip("-").isdigit() else float(data)
        return Value("scalar", n, text=str.__str__(data))
    if isinstance(data, bool):
        return Value("scalar", data, text="true" if data else "false")
    if data is None:
        return Value("scalar", None, text="null")
    return Value("scalar", data, text=str(data))
