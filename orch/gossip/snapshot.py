"""The members this node knew, kept on disk so that a restart rejoins without seeds.

As Serf's snapshotter: an append-only log, one line per change::

    alive <name> <host>:<port>
    gone <name>

replayed on start (the last line about a member wins), and rewritten with only the
members alive when it grows past ``max_bytes``, so it stays small however long the
node runs. A node restarted by systemd joins the members it knew even when its seeds
are gone or were never configured. A damaged line is skipped, not fatal.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import IO

from orch.gossip.core import EventKind, MemberEvent
from orch.gossip.messages import Addr

log = logging.getLogger("gossip")

MAX_BYTES = 128 * 1024


class Snapshot:
    def __init__(self, path: str | Path, *, me: str, max_bytes: int = MAX_BYTES) -> None:
        self.path = Path(path)
        self.me = me
        self.max_bytes = max_bytes
        self.alive: dict[str, Addr] = {}
        self._file: IO[str] | None = None
        self._size = 0

    def load(self) -> dict[str, Addr]:
        """The members alive at the last change recorded (this node left out)."""
        self.alive = {}
        with contextlib.suppress(FileNotFoundError), \
                self.path.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                self._replay(line.split())
        self.alive.pop(self.me, None)
        return dict(self.alive)

    def _replay(self, parts: list[str]) -> None:
        if len(parts) == 3 and parts[0] == "alive":
            host, _, port = parts[2].rpartition(":")
            if host and port.isdigit() and 0 < int(port) < 65536:
                self.alive[parts[1]] = (host, int(port))
        elif len(parts) == 2 and parts[0] == "gone":
            self.alive.pop(parts[1], None)

    def open(self) -> None:
        """Start recording (after ``load``): the file is compacted first."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._compact()

    def record(self, ev: MemberEvent) -> None:
        """Note one membership event (a handler for ``GossipNode.on_event``)."""
        if ev.name == self.me or self._file is None or any(c.isspace() for c in ev.name):
            return
        if ev.kind in (EventKind.JOIN, EventKind.ALIVE, EventKind.UPDATE):
            if self.alive.get(ev.name) == ev.addr:
                return
            self.alive[ev.name] = ev.addr
            self._write(f"alive {ev.name} {ev.addr[0]}:{ev.addr[1]}\n")
        elif ev.kind in (EventKind.DEAD, EventKind.LEFT) and \
                self.alive.pop(ev.name, None) is not None:
            self._write(f"gone {ev.name}\n")

    def _write(self, line: str) -> None:
        assert self._file is not None
        try:
            self._file.write(line)
            self._file.flush()
            self._size += len(line)
            if self._size > self.max_bytes:
                self._compact()
        except OSError as e:  # a full disk must not stop gossip
            log.warning("cannot write the member snapshot", extra={"path": str(self.path),
                                                                   "error": str(e)})

    def _compact(self) -> None:
        """Rewrite the file with the members alive now (atomically), then append to it."""
        if self._file is not None:
            self._file.close()
        tmp = self.path.with_suffix(".tmp")
        body = "".join(f"alive {n} {a[0]}:{a[1]}\n" for n, a in sorted(self.alive.items()))
        with tmp.open("w", encoding="utf-8") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._file = self.path.open("a", encoding="utf-8")
        self._size = len(body)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
