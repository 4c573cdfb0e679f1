"""Daemon logs: JSON lines with stable keys for machines, a short line for terminals.

Every record carries ``ts``, ``level``, ``component`` and ``msg``; fields passed
with ``extra={...}`` (``node``, ``member``, ``job``, ``alloc``, ...) are added as
keys of their own, so ``jq 'select(.member == "agent-3")'`` works.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, TextIO

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime"}


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra`` fields of a record, in the order they were given."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (RFC 3339, UTC), level, component, msg, extras."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out: dict[str, Any] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "component": record.name,
            "msg": record.getMessage(),
        }
        out.update(record_fields(record))
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


class HumanFormatter(logging.Formatter):
    """``12:00:01.123 INFO  gossip  member dead  member=agent-3 incarnation=2``."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created))
        extras = " ".join(f"{k}={v}" for k, v in record_fields(record).items())
        line = (f"{ts}.{int(record.msecs):03d} {record.levelname:<5} {record.name:<8} "
                f"{record.getMessage()}")
        if extras:
            line += f"  {extras}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}
"""syslog priorities of the levels (debug, info, warning, err, crit)."""


class JournalFormatter(logging.Formatter):
    """Another format behind a ``<priority>`` prefix, which journald reads as the level when
    a service logs to its stream (``SyslogLevelPrefix=``, on by default)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        return f"<{prio}>{self.inner.format(record)}"


def setup(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure the root logger once per process.

    ``fmt`` is ``json``, ``human`` or ``auto``: human on a terminal, JSON otherwise. Under
    systemd (its journal on stderr: ``JOURNAL_STREAM`` is set) every line also starts with
    its syslog priority, so ``journalctl -p warning`` works.
    """
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "human" if stream.isatty() else "json"
    if fmt not in ("json", "human"):
        raise ValueError(f"log format must be json, human or auto, got {fmt!r}")
    handler = logging.StreamHandler(stream)
    inner: logging.Formatter = JsonFormatter() if fmt == "json" else HumanFormatter()
    handler.setFormatter(JournalFormatter(inner) if os.environ.get("JOURNAL_STREAM") else inner)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
