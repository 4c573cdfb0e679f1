"""Application events over gossip (as Serf's user events): a name and a small payload,
ordered by a Lamport clock, delivered once to every member.

Every member keeps a Lamport clock for events: firing an event stamps it with the clock
and advances it; receiving one advances the clock past the event's time. A member
remembers the (name, payload) pairs it saw for the last ``BUFFER`` clock values and
drops a copy it has seen (gossip delivers each event many times) or one too old to
tell. A member that joins takes its peers' clock as the floor below which it ignores
events, so it does not replay what happened before it came. Delivering one event per
name in a burst (``coalesce``) is the consumer's choice: see ``coalesce.UserEventBatcher``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orch.gossip.messages import UserEvent

MAX_NAME = 128
MAX_PAYLOAD = 512
"""Bytes of payload an event may carry (Serf's limit): events are signals, not data."""
BUFFER = 512
"""Clock values remembered for de-duplication (Serf's event buffer)."""
MAX_PER_TIME = 64
"""Distinct events remembered per clock value: events fired at once on different members
share a clock value, rarely more than a few; more are dropped (counted as refused), so that
a flood of events at one time cannot grow the table."""


@dataclass(slots=True)
class UserEvents:
    clock: int = 0
    """The Lamport time the next event fired here gets."""
    min_time: int = 0
    """Events stamped before this are ignored (they predate this member's join)."""
    delivered: int = 0
    duplicates: int = 0
    stale: int = 0
    refused: int = 0
    """Events (and clocks) refused: beyond ``limit`` or ``window`` above our clock, or one
    too many at one clock value."""
    limit: int = 2**62
    """Largest clock value taken (``GossipConfig.counter_limit``)."""
    window: int = 2**16
    """Largest step our clock takes from what another member says
    (``GossipConfig.counter_window``), except from the member we join through."""
    _seen: dict[int, set[tuple[str, bytes]]] = field(default_factory=dict)

    def fire(self, name: str, payload: bytes, *, coalesce: bool = True,
             origin: str = "") -> UserEvent:
        """A new event from this member (ValueError when the name or payload is unfit)."""
        if not name or len(name) > MAX_NAME or not name.isprintable():
            raise ValueError(f"event name must be 1..{MAX_NAME} printable characters")
        if len(payload) > MAX_PAYLOAD:
            raise ValueError(f"event payload is {len(payload)} bytes; at most {MAX_PAYLOAD}")
        if self.clock > self.limit:
            raise ValueError("the event clock is at its limit")
        ev = UserEvent(self.clock, name, bytes(payload), coalesce, origin)
        self.clock += 1
        self._remember(ev)
        self.delivered += 1
        return ev

    def receive(self, ev: UserEvent) -> bool:
        """True when ``ev`` is new here: deliver it and pass it on."""
        if not self.witness(ev.ltime):
            return False
        if ev.ltime < self.min_time or ev.ltime + BUFFER < self.clock:
            self.stale += 1
            return False
        if len(ev.payload) > MAX_PAYLOAD or not ev.name or len(ev.name) > MAX_NAME:
            self.refused += 1
            return False
        remembered = self._remember(ev)
        if remembered is None:
            self.refused += 1
            return False
        if not remembered:
            self.duplicates += 1
            return False
        self.delivered += 1
        return True

    def witness(self, ltime: int, *, trusted: bool = False) -> bool:
        """Another member's clock: ours moves past it. False (and refused) when it is past
        the limit, or (unless ``trusted``) more than ``window`` ahead of ours."""
        if ltime > self.limit or (not trusted and ltime > self.clock + self.window):
            self.refused += 1
            return False
        if ltime >= self.clock:
            self.clock = ltime + 1
        return True

    def ignore_before(self, ltime: int) -> None:
        """The clock of the member we joined through: events before it are not replayed."""
        if self.witness(ltime, trusted=True):
            self.min_time = max(self.min_time, ltime)

    def _remember(self, ev: UserEvent) -> bool | None:
        """True when new, False when seen, None when its clock value holds too many."""
        seen = self._seen.setdefault(ev.ltime, set())
        key = (ev.name, ev.payload)
        if key in seen:
            return False
        if len(seen) >= MAX_PER_TIME:
            return None
        seen.add(key)
        if len(self._seen) > 2 * BUFFER:
            floor = self.clock - BUFFER
            for t in [t for t in self._seen if t < floor]:
                del self._seen[t]
        return True
