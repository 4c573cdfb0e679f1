"""What the agent has yet to tell the controller about its allocations (pure).

One report per allocation: a newer status replaces the one queued (a pending report and
the running one that follows it go out as one, and the controller writes the
allocation's start once). A report that an allocation is pending waits up to ``hold``
seconds for the one that follows it: most tasks start within a second (a process in
milliseconds, a container whose image is on the node in well under one), and one that
takes longer (an image pull) is reported pending once the hold ends. The hold runs from
the allocation's first pending report, so progress reports while it stays pending do not
hold it back for ever. Times are in seconds on any clock the caller keeps to.
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
PENDING = node_pb2.CLIENT_STATUS_PENDING


class ReportQueue:
    def __init__(self, hold: float = PENDING_HOLD) -> None:
        self.hold = hold
        self._reports: dict[str, node_pb2.Allocation] = {}
        """Allocation id -> its newest status not sent yet."""
        self._held: dict[str, float] = {}
        """Allocation id -> when its pending report may go (those queued and held)."""

    def __len__(self) -> int:
        return len(self._reports)

    def put(self, a: node_pb2.Allocation, now: float) -> None:
        """Queue ``a``'s newest status (replacing the one queued)."""
        self._reports[a.id] = a
        if a.client_status == PENDING and self.hold > 0:
            self._held.setdefault(a.id, now + self.hold)
        else:
            self._held.pop(a.id, None)

    def catch_up(self, allocs: Iterable[node_pb2.Allocation]) -> None:
        """Queue the status of every allocation the node runs (a new stream: the controller
        may have missed some), unless a newer one is queued; none is held."""
        for a in allocs:
            self._reports.setdefault(a.id, a)

    def ready(self, now: float) -> bool:
        """Whether some report may go now."""
        return len(self._held) < len(self._reports) or any(
            t <= now + EARLY for t in self._held.values())

    def next_release(self) -> float | None:
        """When the first held report may go (None: none is held)."""
        return min(self._held.values(), default=None)

    def take(self, now: float) -> list[node_pb2.Allocation]:
        """The reports that may go now, taken out of the queue (held ones stay)."""
        if not self._held:
            out = list(self._reports.values())
            self._reports.clear()
            return out
        out = []
        for alloc_id in list(self._reports):
            release = self._held.get(alloc_id)
            if release is None or release <= now + EARLY:
                out.append(self._reports.pop(alloc_id))
                self._held.pop(alloc_id, None)
        return out
