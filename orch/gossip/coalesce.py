"""Member events coalesced under churn (as Serf does it), so consumers see one change per
burst, not a storm.

Events are held while they keep coming: a batch is delivered once no event arrived for
``quiescent`` seconds, or ``period`` seconds after its first event, whichever is sooner
(``Window``).
A batch holds only each member's latest status, and only when it differs from the
status last delivered for that member: a suspicion refuted within the batch, or a
member that died and came back, is no news. Node-state updates of a member are
delivered once per batch. Each delivered event carries a sequence number (a logical
clock of this consumer's view) so that consumers can order and de-duplicate them.

User events that ask for it are coalesced by name: a batch holds the newest event of
each name (highest Lamport time); the others are all delivered, in Lamport order
(``UserEventBatcher``).

``Coalescer`` and ``UserEventBatcher`` are pure (time passed in); ``Batched`` drives
either on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from orch.gossip.core import EventKind, MemberEvent
from orch.gossip.messages import UserEvent

_STATUS = {EventKind.JOIN: "alive", EventKind.ALIVE: "alive", EventKind.SUSPECT: "suspect",
           EventKind.DEAD: "dead", EventKind.LEFT: "left"}
"""What each event says of the member's status (JOIN and ALIVE both: it is up)."""


@dataclass(frozen=True, slots=True)
class Delivered:
    seq: int
    """Position in this consumer's sequence of delivered events (1, 2, ...)."""
    event: MemberEvent


@dataclass(slots=True)
class Window:
    """When a batch of events that keep coming is due."""

    period: float = 2.0
    """Longest a batch is held after its first event."""
    quiescent: float = 0.5
    """A batch is delivered once no event came for this long."""
    _first: float | None = None
    _last: float = 0.0

    def touch(self, now: float) -> None:
        if self._first is None:
            self._first = now
        self._last = now

    def deadline(self) -> float | None:
        """When the held batch is due, or None when nothing is held."""
        if self._first is None:
            return None
        return min(self._first + self.period, self._last + self.quiescent)

    def take(self, now: float, force: bool) -> bool:
        """True (and the window empties) when the batch is due, or ``force`` and one is held."""
        due = self.deadline()
        if due is None or (now < due and not force):
            return False
        self._first = None
        return True


@dataclass(slots=True)
class Coalescer:
    window: Window = field(default_factory=Window)
    received: int = 0
    delivered: int = 0
    _status: dict[str, str] = field(default_factory=dict)
    _latest: dict[str, MemberEvent] = field(default_factory=dict)
    _updated: dict[str, MemberEvent] = field(default_factory=dict)

    def add(self, ev: MemberEvent, now: float) -> None:
        self.received += 1
        if ev.kind is EventKind.UPDATE:
            self._updated[ev.name] = ev
        elif ev.kind in _STATUS:
            self._latest[ev.name] = ev
        else:
            return
        self.window.touch(now)

    def deadline(self) -> float | None:
        return self.window.deadline()

    def flush(self, now: float, *, force: bool = False) -> list[Delivered]:
        """The batch, when it is due (or ``force``): oldest change first."""
        if not self.window.take(now, force):
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
        batch.sort(key=lambda e: e.time)
        out = []
        for ev in batch:
            self.delivered += 1
            out.append(Delivered(self.delivered, ev))
        return out


@dataclass(slots=True)
class UserEventBatcher:
    window: Window = field(default_factory=Window)
    received: int = 0
    delivered: int = 0
    _newest: dict[str, UserEvent] = field(default_factory=dict)
    _all: list[UserEvent] = field(default_factory=list)

    def add(self, ev: UserEvent, now: float) -> None:
        self.received += 1
        if ev.coalesce:
            held = self._newest.get(ev.name)
            if held is None or ev.ltime > held.ltime:
                self._newest[ev.name] = ev
        else:
            self._all.append(ev)
        self.window.touch(now)

    def deadline(self) -> float | None:
        return self.window.deadline()

    def flush(self, now: float, *, force: bool = False) -> list[UserEvent]:
        """The batch, when due (or ``force``), in Lamport order."""
        if not self.window.take(now, force):
            return []
        out = sorted([*self._newest.values(), *self._all], key=lambda e: (e.ltime, e.name))
        self._newest.clear()
        self._all.clear()
        self.delivered += len(out)
        return out


E = TypeVar("E")
E_contra = TypeVar("E_contra", contravariant=True)
B = TypeVar("B")


class Batcher(Protocol[E_contra, B]):
    def add(self, ev: E_contra, now: float) -> None: ...
    def deadline(self) -> float | None: ...
    def flush(self, now: float, *, force: bool = False) -> list[B]: ...


class Batched(Generic[E, B]):
    """Feeds ``batcher`` from ``push`` (a gossip handler) and hands each due batch to
    ``handler``, on the running event loop."""

    def __init__(self, batcher: Batcher[E, B], handler: Callable[[list[B]], None]) -> None:
        self.batcher = batcher
        self.handler = handler
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None

    def push(self, ev: E) -> None:
        self.batcher.add(ev, self._loop.time())
        self._arm()

    def _arm(self) -> None:
        due = self.batcher.deadline()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if due is not None:
            self._timer = self._loop.call_at(due, self._fire)

    def _fire(self) -> None:
        self._timer = None
        batch = self.batcher.flush(self._loop.time())
        if batch:
            self.handler(batch)
        self._arm()

    def close(self, *, deliver: bool = True) -> None:
        """Stop; deliver what is held first unless told not to."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch = self.batcher.flush(self._loop.time(), force=True)
        if batch and deliver:
            self.handler(batch)
