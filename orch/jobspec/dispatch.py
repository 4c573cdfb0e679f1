"""Dispatching a parameterized job: what a dispatch may carry, and its child's name.

Pure. A parameterized job declares the meta keys a dispatch must give
(``meta_required``) and may give (``meta_optional``), and whether it takes a payload
(``optional``, ``required`` or ``forbidden``). :func:`dispatch_problems` says everything
wrong with one dispatch, so that a bad one changes nothing; :func:`dispatch_child` names
the child ``<parent>/dispatch-<unix seconds>-<8 hex>`` as Nomad does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from orch.v1 import job_pb2

MAX_PAYLOAD = 16 * 1024
"""Bytes in a dispatch's payload (Nomad's limit): it is stored with the child and copied
into every allocation of it, so it is for inputs, not data sets."""
MAX_META = 64
"""Meta keys in one dispatch (and declared by one parameterized job)."""
MAX_META_VALUE = 4096
"""Characters in one dispatched meta value (it becomes an environment variable)."""
PAYLOAD_MODES = ("optional", "required", "forbidden")
META_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}\Z")
"""A meta key a parameterized job may declare (it names ORCH_META_<KEY>)."""


def payload_mode(p: job_pb2.Parameterized) -> str:
    """``optional`` (the default), ``required`` or ``forbidden``."""
    return p.payload or "optional"


def dispatch_problems(parent: str, p: job_pb2.Parameterized, meta: Mapping[str, str],
                      payload: bytes) -> list[str]:
    """Everything wrong with dispatching ``parent`` (parameterized by ``p``) with ``meta``
    and ``payload``; empty when the dispatch may go ahead."""
    out = []
    required, optional = list(p.meta_required), list(p.meta_optional)
    missing = [k for k in required if k not in meta]
    if missing:
        out.append(f"missing required meta {', '.join(map(repr, missing))} (give each with "
                   f"--meta KEY=VALUE)")
    unknown = sorted(k for k in meta if k not in required and k not in optional)
    if unknown:
        allowed = ", ".join(required + optional) or "none"
        out.append(f"meta {', '.join(map(repr, unknown))} is neither required nor optional for "
                   f"job {parent!r} (it takes: {allowed})")
    if len(meta) > MAX_META:
        out.append(f"at most {MAX_META} meta keys, got {len(meta)}")
    for k, v in sorted(meta.items()):
        if len(v) > MAX_META_VALUE:
            out.append(f"meta {k!r} is {len(v):,} characters; at most {MAX_META_VALUE:,}")
        if "\0" in v:
            out.append(f"meta {k!r} holds a NUL character (it becomes an environment variable)")
    mode = payload_mode(p)
    if len(payload) > MAX_PAYLOAD:
        out.append(f"the payload is {len(payload):,} bytes; at most {MAX_PAYLOAD:,} "
                   f"({MAX_PAYLOAD // 1024} KiB)")
    if mode == "required" and not payload:
        out.append(f"job {parent!r} requires a payload (a file argument, or - for stdin)")
    if mode == "forbidden" and payload:
        out.append(f"job {parent!r} takes no payload (its parameterized.payload is forbidden)")
    return out


def dispatch_child(parent: str, now: float, suffix: int) -> str:
    """A dispatched child's name: ``<parent>/dispatch-<unix seconds>-<8 hex>``; ``suffix``
    is a random 32-bit number the caller draws."""
    return f"{parent}/dispatch-{int(now)}-{suffix & 0xFFFFFFFF:08x}"
