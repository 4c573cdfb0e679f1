"""The members this node knew, kept on disk so that a restart rejoins without seeds.

As Serf's snapshotter: an append-only log, one line per change::

    alive <name> <host>:<port>
    gone <name>

replayed on start (the last line about a member wins). Every event appends one line
(written, not synced: a crash loses at most the last lines, and a restart only needs some
of the members). When the file has grown to twice its size after the last compaction (and
past ``max_bytes``), it is compacted in the background: a thread writes the members alive
then to a new file and syncs it, and the next event swaps it in (with the lines appended
meanwhile), so no event ever waits for a rewrite or a sync, whatever the cluster's size.
A node restarted by systemd joins the members it knew even when its seeds are gone or were
never configured. A damaged line is skipped, not fatal; the reader keeps at most
``max_members`` members and reads lines of at most ``MAX_LINE`` bytes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

from orch.gossip.core import EventKind, MemberEvent
from orch.gossip.messages import Addr

log = logging.getLogger("gossip")

MAX_BYTES = 128 * 1024
"""Size below which the file is never compacted."""
MAX_LINE = 600
"""Longest line read (a name of 256 characters and an address of 255, with the words)."""
MAX_MEMBERS = 16_384
"""Members kept from the file (``GossipConfig.max_members``)."""

Runner = Callable[[Callable[[], None]], None]
"""Runs a function in the background (a thread; in tests, at once)."""


def _thread(fn: Callable[[], None]) -> None:
    threading.Thread(target=fn, name="snapshot-compaction", daemon=True).start()


class Snapshot:
    def __init__(self, path: str | Path, *, me: str, max_bytes: int = MAX_BYTES,
                 max_members: int = MAX_MEMBERS, background: Runner = _thread) -> None:
        self.path = Path(path)
        self.me = me
        self.max_bytes = max_bytes
        self.max_members = max_members
        self.alive: dict[str, Addr] = {}
        self.compactions = 0
        self._background = background
        self._file: IO[str] | None = None
        self._size = 0
        self._base = 0
        """The file's size after the last compaction."""
        self._since: list[str] | None = None
        """Lines appended while a compaction runs (None: none runs)."""
        self._compacted = 0
        """The size of the compacted body being written."""
        self._done = threading.Event()
        self._failed: str | None = None

    def load(self) -> dict[str, Addr]:
        """The members alive at the last change recorded (this node left out)."""
        self.alive = {}
        with contextlib.suppress(FileNotFoundError), self.path.open("rb") as f:
            while line := f.readline(MAX_LINE + 1):
                if len(line) > MAX_LINE:  # too long to be ours: skip to the next line
                    while line and not line.endswith(b"\n"):
                        line = f.readline(MAX_LINE + 1)
                    continue
                self.replay(line.decode("utf-8", "replace"))
        self.alive.pop(self.me, None)
        return dict(self.alive)

    def replay(self, line: str) -> None:
        """Apply one line of the file (a damaged one does nothing)."""
        parts = line.split()
        if len(parts) == 3 and parts[0] == "alive" and len(parts[1]) <= 256:
            host, _, port = parts[2].rpartition(":")
            if host and len(host) <= 255 and port.isdigit() and 0 < int(port) < 65536 and \
                    (parts[1] in self.alive or len(self.alive) < self.max_members):
                self.alive[parts[1]] = (host, int(port))
        elif len(parts) == 2 and parts[0] == "gone":
            self.alive.pop(parts[1], None)

    def open(self) -> None:
        """Start recording (after ``load``): the file is compacted first."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = _body(self.alive)
        _write_synced(self._tmp, body)
        os.replace(self._tmp, self.path)
        self._file = self.path.open("a", encoding="utf-8")
        self._size = self._base = len(body)

    @property
    def _tmp(self) -> Path:
        return self.path.with_suffix(".tmp")

    def record(self, ev: MemberEvent) -> None:
        """Note one membership event (a handler for ``GossipNode.on_event``)."""
        if ev.name == self.me or self._file is None or any(c.isspace() for c in ev.name):
            return
        if self._done.is_set():
            self._swap()
        if ev.kind in (EventKind.JOIN, EventKind.ALIVE, EventKind.UPDATE):
            if self.alive.get(ev.name) == ev.addr or (
                    ev.name not in self.alive and len(self.alive) >= self.max_members):
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
        except OSError as e:  # a full disk must not stop gossip
            log.warning("cannot write the member snapshot", extra={"path": str(self.path),
                                                                   "error": str(e)})
            return
        self._size += len(line)
        if self._since is not None:
            self._since.append(line)
        elif self._size > max(2 * self._base, self.max_bytes):
            self._compact()

    def _compact(self) -> None:
        """Write the members alive now to a new file in the background; ``_swap`` takes it."""
        self._since = []
        self._done.clear()
        self._failed = None
        body = _body(self.alive)
        self._compacted = len(body)
        tmp = self._tmp

        def work() -> None:
            try:
                _write_synced(tmp, body)
            except OSError as e:
                self._failed = str(e)
            self._done.set()

        self._background(work)

    def _swap(self) -> None:
        """The compacted file is written: add what was appended meanwhile, and use it."""
        self._done.clear()
        since, self._since = self._since or [], None
        if self._failed is not None:
            log.warning("cannot compact the member snapshot", extra={
                "path": str(self.path), "error": self._failed})
            self._base = self._size  # try again when it has doubled
            return
        try:
            with self._tmp.open("a", encoding="utf-8") as f:
                f.write("".join(since))
            size = self._tmp.stat().st_size
            os.replace(self._tmp, self.path)
        except OSError as e:
            log.warning("cannot compact the member snapshot", extra={"path": str(self.path),
                                                                     "error": str(e)})
            self._base = self._size
            return
        if self._file is not None:
            self._file.close()
        self._file = self.path.open("a", encoding="utf-8")
        # what was appended meanwhile counts towards the next compaction (a burst of events
        # during one is compacted by the next, once the file has doubled again)
        self._size, self._base = size, self._compacted
        self.compactions += 1

    def close(self) -> None:
        if self._since is not None:  # a compaction runs: let it finish, and take it
            self._done.wait(10.0)
            if self._done.is_set():
                self._swap()
        if self._file is not None:
            self._file.close()
            self._file = None


def _body(alive: dict[str, Addr]) -> str:
    return "".join(f"alive {n} {a[0]}:{a[1]}\n" for n, a in sorted(alive.items()))


def _write_synced(path: Path, body: str) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
