"""Configuration files (TOML) and flags onto the daemons' frozen dataclasses.

Each daemon has one configuration dataclass with every default written once,
beside its meaning. This module only moves values onto those objects and says
clearly where a value is wrong.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from orch.errors import ConfigError

T = TypeVar("T")


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; a syntax error names the file and the line."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("file not found", where=str(p)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}", where=str(p)) from None


def build(cls: type[T], values: dict[str, Any], *, where: str = "") -> T:
    """Make ``cls`` (a dataclass) from ``values``, checking names and types.

    Nested dataclass fields take nested tables. Unknown keys and wrong types
    raise ConfigError naming ``where.key``.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, raw in values.items():
        name = key.replace("-", "_")
        at = f"{where}.{key}" if where else key
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown setting (known: {known})", where=at)
        kwargs[name] = _coerce(hints[name], raw, at)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e), where=where or cls.__name__) from None


def _coerce(tp: Any, raw: Any, at: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if raw is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, raw, at)
            except ConfigError:
                continue
        raise ConfigError(f"expected {tp}, got {raw!r}", where=at)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(raw, dict):
            raise ConfigError(f"expected a table, got {raw!r}", where=at)
        return build(tp, raw, where=at)
    if origin in (list, tuple):
        if not isinstance(raw, list | tuple):
            raise ConfigError(f"expected a list, got {raw!r}", where=at)
        (inner, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(inner, x, f"{at}[{i}]") for i, x in enumerate(raw)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(raw, dict):
            raise ConfigError(f"expected a table, got {raw!r}", where=at)
        return dict(raw)
    if tp is Any:
        return raw
    if tp is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if tp is bool and not isinstance(raw, bool):
        raise ConfigError(f"expected true or false, got {raw!r}", where=at)
    if isinstance(tp, type) and not isinstance(raw, tp):
        raise ConfigError(f"expected {tp.__name__}, got {raw!r}", where=at)
    return raw
