"""Member events coalesced under churn (as Serf does it), so consumers see one change per
burst, not a storm.

Events are held while they keep coming: a batch is delivered once no event arrived for
``quiescent`` seconds, or ``period`` seconds after its first event, whichever is sooner.
A batch holds only each member's latest status, and only when it differs from the
status last delivered for that member: a suspicion refuted within the batch, or a
member that died and came back, is no news. Node-state updates of a member are
delivered once per batch. Each delivered event carries a sequence number (a logical
clock of this consumer's view) so that consumers can order and de-duplicate them.

``Coalescer`` is pure (time passed in); ``CoalescedEvents`` drives it on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.gossip.core import EventKind, MemberEvent

if TYPE_CHECKING:
    from agent.gossip.transport import GossipNode

_STATUS = {EventKind.JOIN: "alive", EventKind.ALIVE: "alive", EventKind.SUSPECT: "suspect",
           EventKind.DEAD: "dead", EventKind.LEFT: "left"}
"""What each event says of the member's status (JOIN and ALIVE both: it is up)."""


@dataclass(frozen=True, slots=True)
class Delivered:
    seq: int
    """Position in this consumer's sequence of delivered events (1, 2, ...)."""
    event: MemberEvent


@dataclass(slots=True)
class Coalescer:
    period: float = 2.0
    """Longest a batch is held after its first event."""
    quiescent: float = 0.5
    """A batch is delivered once no event came for this long."""
    received: int = 0
    delivered: int = 0
    _status: dict[str, str] = field(default_factory=dict)
    _latest: dict[str, MemberEvent] = field(default_factory=dict)
    _updated: dict[str, MemberEvent] = field(default_factory=dict)
    _first: float | None = None
    _last: float = 0.0

    def add(self, ev: MemberEvent, now: float) -> None:
        self.received += 1
        if ev.kind is EventKind.UPDATE:
            self._updated[ev.name] = ev
        elif ev.kind in _STATUS:
            self._latest[ev.name] = ev
        else:
            return
        if self._first is None:
            self._first = now
        self._last = now

    def deadline(self) -> float | None:
        """When the held batch is due, or None when nothing is held."""
        if self._first is None:
            return None
        return min(self._first + self.period, self._last + self.quiescent)

    def flush(self, now: float, *, force: bool = False) -> list[Delivered]:
        """The batch, when it is due (or ``force``): oldest change first."""
        due = self.deadline()
        if due is None or (now < due and not force):
            return []
        batch = []
        for name, ev in self._latest.items():
            status = _STATUS[ev.kind]
            if self._status.get(name) != status:
                self._status[name] = status
                batch.append(ev)
        for name, ev in self._updated.items():
            if self._status.get(name) in (None, "alive", "suspect"):
                batch.append(ev)
        self._latest.clear()
        self._updated.clear()
        self._first = None
        batch.sort(key=lambda e: e.time)
        out = []
        for ev in batch:
            self.delivered += 1
            out.append(Delivered(self.delivered, ev))
        return out


class CoalescedEvents:
    """A gossip member's events, coalesced, handed to ``handler`` one batch at a time."""

    def __init__(self, gossip: GossipNode, handler: Callable[[list[Delivered]], None], *,
                 period: float = 2.0, quiescent: float = 0.5) -> None:
        self.coalescer = Coalescer(period, quiescent)
        self.handler = handler
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        gossip.on_event(self._on_event)

    def _on_event(self, ev: MemberEvent) -> None:
        self.coalescer.add(ev, self._loop.time())
        self._arm()

    def _arm(self) -> None:
        due = self.coalescer.deadline()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if due is not None:
            self._timer = self._loop.call_at(due, self._fire)

    def _fire(self) -> None:
        self._timer = None
        batch = self.coalescer.flush(self._loop.time())
        if batch:
            self.handler(batch)
        self._arm()

    def close(self, *, deliver: bool = True) -> None:
        """Stop; deliver what is held first unless told not to."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch = self.coalescer.flush(self._loop.time(), force=True)
        if batch and deliver:
            self.handler(batch)
