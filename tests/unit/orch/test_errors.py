"""The error tree drawn in ``orch/errors.py`` is the tree of classes that exist."""

from __future__ import annotations

import importlib
import pkgutil
import re

import orch.errors
from orch.errors import OrchError

PACKAGES = ("orch", "agent", "controller", "orchctl")


def _import_everything() -> None:
    for name in PACKAGES:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, f"{name}."):
            importlib.import_module(info.name)


def _drawn() -> dict[str, str]:
    """class -> parent, as the docstring's tree draws them (depth from the name's column)."""
    doc = orch.errors.__doc__ or ""
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in doc.splitlines():
        m = re.match(r"^[\s│├└─]*?([A-Z]\w*(?:Error|Unavailable|Rejected|InDoubt))\b", line)
        if m is None:
            continue
        column = m.start(1)
        while stack and stack[-1][0] >= column:
            stack.pop()
        if stack:
            parents[m.group(1)] = stack[-1][1]
        stack.append((column, m.group(1)))
    return parents


def _actual() -> dict[str, str]:
    out: dict[str, str] = {}
    todo = [OrchError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            out[sub.__name__] = next(b.__name__ for b in sub.__bases__ if issubclass(b, OrchError))
            todo.append(sub)
    return out


def test_the_drawn_error_tree_is_the_one_that_exists() -> None:
    _import_everything()
    drawn, actual = _drawn(), _actual()
    assert len(drawn) > 10  # the tree was read
    missing = {k: v for k, v in actual.items() if k not in drawn}
    stale = {k: v for k, v in drawn.items() if k not in actual}
    moved = {k: (drawn[k], actual[k]) for k in drawn.keys() & actual.keys()
             if drawn[k] != actual[k]}
    assert not missing, f"draw these in orch/errors.py (class: parent): {missing}"
    assert not stale, f"these are drawn in orch/errors.py but do not exist: {stale}"
    assert not moved, f"drawn under another parent (drawn, actual): {moved}"
