"""What the agent has yet to tell the controller about its allocations (pure).

One report per allocation: a newer status replaces the one queued, so that statuses that
follow one another closely go out, and are written by the controller, as one. Two waits
make that happen where it pays:

- a report that an allocation is pending waits up to ``hold`` seconds for the one that
  follows it: most tasks start within a second (a process in milliseconds, a container
  whose image is on the node in well under one); one that takes longer (an image pull) is
  reported pending once the hold ends;
- a report whose next status is due within ``hold`` seconds (the caller says when: the
  health verdict of an allocation whose ``min_healthy_time`` is that short) waits for it,
  so that running and healthy are one report.

A hold runs from the first report of a client status, so progress reports while an
allocation stays pending do not hold it back for ever: the controller learns of every new
client status within ``hold`` (+ ``SETTLE``) seconds. Times are in seconds on any clock
the caller keeps to.
"""

from __future__ import annotations

from collections.abc import Iterable

from orch.v1 import node_pb2

PENDING_HOLD = 1.0
"""Seconds a pending report waits for the next status of its allocation (Nomad's clients
send their allocations' updates every 200 ms; a pending state that lasts longer than a
second is worth telling the operator about)."""
EARLY = 0.001
"""Seconds before its end a hold counts as over (timers may fire a little early)."""
SETTLE = 0.1
"""Seconds a report waits past the time its next status is due (the timer that makes that
status may fire a little late)."""
PENDING = node_pb2.CLIENT_STATUS_PENDING


class ReportQueue:
    def __init__(self, hold: float = PENDING_HOLD) -> None:
        self.hold = hold
        self._reports: dict[str, node_pb2.Allocation] = {}
        """Allocation id -> its newest status not sent yet."""
        self._held: dict[str, tuple[int, float]] = {}
        """Allocation id -> (the client status held, when its report may go), for those
        queued and held."""

    def __len__(self) -> int:
        return len(self._reports)

    def put(self, a: node_pb2.Allocation, now: float, next_in: float | None = None) -> None:
        """Queue ``a``'s newest status (replacing the one queued); ``next_in``: seconds until
        its next status is due, if the caller knows."""
        self._reports[a.id] = a
        if self.hold <= 0:
            release = None
        elif a.client_status == PENDING:
            release = now + self.hold
        elif next_in is not None and next_in <= self.hold:
            release = now + max(0.0, next_in) + SETTLE
        else:
            release = None
        if release is None:
            self._held.pop(a.id, None)
            return
        held = self._held.get(a.id)
        if held is not None and held[0] == a.client_status:
            release = min(release, held[1])  # the hold runs from the status's first report
        self._held[a.id] = (a.client_status, release)

    def catch_up(self, allocs: Iterable[node_pb2.Allocation]) -> None:
        """Queue the status of every allocation the node runs (a new stream: the controller
        may have missed some), unless a newer one is queued; none is held."""
        for a in allocs:
            self._reports.setdefault(a.id, a)

    def ready(self, now: float) -> bool:
        """Whether some report may go now."""
        return len(self._held) < len(self._reports) or any(
            t <= now + EARLY for _, t in self._held.values())

    def next_release(self) -> float | None:
        """When the first held report may go (None: none is held)."""
        return min((t for _, t in self._held.values()), default=None)

    def take(self, now: float) -> list[node_pb2.Allocation]:
        """The reports that may go now, taken out of the queue (held ones stay)."""
        if not self._held:
            out = list(self._reports.values())
            self._reports.clear()
            return out
        out = []
        for alloc_id in list(self._reports):
            held = self._held.get(alloc_id)
            if held is None or held[1] <= now + EARLY:
                out.append(self._reports.pop(alloc_id))
                self._held.pop(alloc_id, None)
        return out
