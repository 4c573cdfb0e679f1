"""How orchctl shows things: aligned tables and key = value blocks for people, JSON for
scripts (``-o json``: the API's messages as protobuf's JSON mapping)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message


def table(head: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    cells = [list(map(str, head))] + [[_cell(c) for c in r] for r in rows]
    if len(cells) == 1:
        return "(none)"
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


def block(pairs: Sequence[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k.ljust(width)} = {_cell(v)}" for k, v in pairs)


def _cell(v: Any) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def to_json(msg: Message | list[Message] | dict[str, Any]) -> str:
    def conv(m: Any) -> Any:
        if isinstance(m, Message):
            return MessageToDict(m, preserving_proto_field_name=True)
        if isinstance(m, list):
            return [conv(x) for x in m]
        if isinstance(m, dict):
            return {k: conv(v) for k, v in m.items()}
        return m
    return json.dumps(conv(msg), indent=2, sort_keys=True)


def ago(ns: int, now: float | None = None) -> str:
    """``3s ago``, ``5m ago``, ``2h ago``, ``4d ago``."""
    if not ns:
        return "-"
    secs = max(0.0, (now or time.time()) - ns / 1e9)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{int(secs // size)}{unit} ago"
    return f"{int(secs)}s ago"


def short(id_: str) -> str:
    return id_[:8]




def out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
