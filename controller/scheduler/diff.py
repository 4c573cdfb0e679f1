"""A plan as people read it (``orchctl job plan``): what changes in the spec, what happens to
which allocation, and whether everything found a node.

::

    Job "web" (service, version 4)

    +/- group "frontend" (1 to place, 2 to update in place, 1 to replace)
          count: 3 => 4
          tasks[nginx].image: "nginx:1.25" => "nginx:1.27"  (forces replacement)

    Allocations:
      create   web.frontend[3]  on node-7   http=23456
      update   web.frontend[0]  on node-1   in place, version 3 => 4
      replace  web.frontend[1]  node-2 => node-2
      stop     web.frontend[5]  on node-9   count reduced

    Scheduler dry-run:
    - All allocations placed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controller.scheduler.plan import Plan
from orch.jobspec.model import Group

REPLACES = "forces replacement"
IN_PLACE = "in place"
RESIZE = "resized in place when the node has room, else moved"


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One field that differs between two versions of a group."""

    path: str
    """``count``, ``tasks[nginx].image``, ``services[web].check.interval``."""
    old: Any
    new: Any
    effect: str
    """``forces replacement`` or ``in place``."""

    def render(self) -> str:
        note = f"  ({self.effect})" if self.effect in (REPLACES, RESIZE) else ""
        if self.old is None:
            return f"+ {self.path}: {_show(self.new)}{note}"
        if self.new is None:
            return f"- {self.path}: {_show(self.old)}{note}"
        return f"{self.path}: {_show(self.old)} => {_show(self.new)}{note}"


def diff_groups(old: Group | None, new: Group | None) -> list[FieldChange]:
    """Field by field differences; tasks, ports and services are matched by name."""
    out: list[tuple[str, Any, Any]] = []
    _walk("", old, new, out)
    return [FieldChange(p, o, n, _effect(p)) for p, o, n in out]


def _effect(path: str) -> str:
    if path.startswith("tasks") and ".resources." in path:
        return RESIZE
    if path.startswith(("network", "volumes")) or (path.startswith("tasks")
                                                   and ".checks" not in path):
        return REPLACES
    return IN_PLACE


def _key(item: Any) -> str | None:
    for attr in ("name", "label", "value"):
        v = getattr(item, attr, None)
        if isinstance(v, str) and v:
            return v
    return None


def _walk(path: str, old: Any, new: Any, out: list[tuple[str, Any, Any]]) -> None:
    if old == new:
        return
    if dataclasses.is_dataclass(old) and type(old) is type(new):
        for f in dataclasses.fields(old):
            _walk(_join(path, f.name), getattr(old, f.name), getattr(new, f.name), out)
        return
    if isinstance(old, tuple) and isinstance(new, tuple):
        keys_old = [_key(x) for x in old]
        keys_new = [_key(x) for x in new]
        if (old or new) and all(k is not None for k in keys_old + keys_new) \
                and len(set(keys_old)) == len(old) and len(set(keys_new)) == len(new):
            o = dict(zip(keys_old, old, strict=True))
            n = dict(zip(keys_new, new, strict=True))
            for k in [*keys_old, *(k for k in keys_new if k not in o)]:
                assert k is not None
                _walk(f"{path}[{k}]", o.get(k), n.get(k), out)
            return
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for k in sorted(set(old) | set(new)):
            _walk(f"{path}.{k}", old.get(k), new.get(k), out)
        return
    out.append((path, old, new))


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _show(v: Any) -> str:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        key = _key(v)
        return f"{type(v).__name__} {key!r}" if key else type(v).__name__
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, tuple):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{k}: {_show(x)}" for k, x in v.items()) + "}"
    return str(v)


def render_plan(plan: Plan, *, max_rows: int = 20) -> str:
    """The plan as text for people: spec diff per group, allocations, dry-run verdict.

    ``max_rows`` caps the allocation lines of each kind (0 = no cap).
    """
    lines = [f'Job "{plan.job}" ({plan.job_type}, version {plan.job_version})', ""]
    for g in plan.groups.values():
        if g.spec is None:
            marker = "-  "
        elif g.previous_spec is g.spec and not (g.stop or g.replace or g.in_place):
            marker = "+  " if g.place and not g.unchanged else "   "
        else:
            marker = "+/-"
        actions = ", ".join(g._actions()) or "no changes"
        lines.append(f'{marker} group "{g.name}" ({actions})')
        for ch in diff_groups(g.previous_spec, g.spec) if g.spec is not None else []:
            lines.append(f"      {ch.render()}")
    rows = _allocation_rows(plan, max_rows)
    if rows:
        lines += ["", "Allocations:", *rows]
    lines += ["", "Scheduler dry-run:"]
    failed = [g for g in plan.groups.values() if g.unplaced]
    if not failed:
        lines.append("- All allocations placed.")
    for g in failed:
        lines.append(f"- {g.explain()}")
    waiting = sum(g.waiting for g in plan.groups.values())
    if waiting:
        lines.append(f"- {waiting} allocation{'s wait' if waiting > 1 else ' waits'} for the "
                     f"rolling update (max_parallel).")
    for g in plan.groups.values():
        lines += [f"- {note}" for note in g.notes]
    if plan.next_eval_at is not None:
        lines.append(f"- Failed allocations become due for rescheduling at "
                     f"{plan.next_eval_at:.0f} (unix time).")
    return "\n".join(lines)


def _allocation_rows(plan: Plan, max_rows: int) -> list[str]:
    stops = {s.alloc_id: s for s in plan.stops}
    kinds: dict[str, list[str]] = {"create": [], "update": [], "replace": [], "stop": []}
    replaced = set()
    for p in plan.placements:
        ports = " ".join(f"{k}={v}" for k, v in sorted(p.ports.items()))
        prev = stops.get(p.previous_alloc)
        if prev is not None:
            replaced.add(prev.alloc_id)
            kinds["replace"].append(
                f"  replace  {p.name:<28} {prev.node_name or prev.node_id} => "
                f"{p.node_name or p.node_id}"
                f"   {p.reason}{'  ' + ports if ports else ''}")
        else:
            why = "" if p.reason == "new" else f"   {p.reason}"
            kinds["create"].append(f"  create   {p.name:<28} on {p.node_name or p.node_id}"
                                   f"{'   ' + ports if ports else ''}{why}")
    for u in plan.updates:
        kinds["update"].append(f"  update   {u.name:<28} on {u.node_name or u.node_id}   "
                               f"in place, version {u.from_version} => {u.to_version}")
    for s in plan.stops:
        if s.alloc_id not in replaced:
            lost = " (lost)" if s.lost else ""
            kinds["stop"].append(f"  stop     {s.name:<28} on {s.node_name or s.node_id}   "
                                 f"{s.reason}{lost}")
    out: list[str] = []
    for rows in kinds.values():
        if max_rows and len(rows) > max_rows:
            out += [*rows[:max_rows], f"  ... and {len(rows) - max_rows} more"]
        else:
            out += rows
    return out
