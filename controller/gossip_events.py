"""What the controller does with what gossip tells it, on the leader only (followers hear
the same events and leave them to it):

- a member declared dead or gone starts its node's grace at once, and one seen alive
  again readmits a node that was marked down while its stream stayed open
  (``NodeMonitor``);
- member events are recorded in the event log, coalesced per burst (a suspicion refuted
  within it is no news);
- user events are recorded in the event log (topic ``user``), coalesced by name, each
  with the member that says it fired it and whether gossip vouches for that: with a gossip
  key, only holders of the key can send one (any of them can claim any name); without, any
  host that reaches the gossip port can. What is recorded is bounded (``UserEventLimits``):
  events beyond the rates are counted and dropped, never stored.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from controller.cluster import Cluster
from controller.leadership import LeaderStatus
from controller.nodes import NodeMonitor
from controller.planner import event
from controller.store.base import Changes
from orch.errors import NotLeaderError, StoreError
from orch.gossip.coalesce import Batched, Coalescer, Delivered, UserEventBatcher
from orch.gossip.core import EventKind, MemberEvent
from orch.gossip.messages import UserEvent
from orch.gossip.transport import GossipNode
from orch.ratelimit import Limiter, TokenBucket

log = logging.getLogger("controller")

_RECORDED = {EventKind.SUSPECT: "NodeSuspect", EventKind.ALIVE: "NodeAlive",
             EventKind.DEAD: "NodeMemberDead", EventKind.LEFT: "NodeMemberLeft"}
"""The member events recorded in the event log, and their event types."""


@dataclass(frozen=True, slots=True)
class UserEventLimits:
    """What the event log takes from user events, which any gossip member can send."""

    rate: float = 10.0
    """User events recorded per second, all members together (Serf's users fire a few a
    minute); a burst of ``burst`` more is taken at once."""
    burst: int = 100
    per_origin_rate: float = 1.0
    """User events recorded per second from one origin (the member named as the firer), so
    that one member cannot take the whole rate; bursts of ``per_origin_burst``."""
    per_origin_burst: int = 20
    origins: int = 1024
    """Origins whose rate is tracked; the one heard of longest ago gives way."""
    shown_bytes: int = 512
    """Bytes of an event's name and payload shown in its log entry (the gossip limits)."""


@dataclass(slots=True)
class UserEventGate:
    """Which user events the event log records (pure: the time is passed in)."""

    limits: UserEventLimits = field(default_factory=UserEventLimits)
    dropped: dict[str, int] = field(default_factory=dict)
    """Events not recorded, by reason: rate (all members), origin (one member's rate)."""
    _all: TokenBucket | None = None
    _origins: Limiter | None = None

    def admit(self, origin: str, now: float) -> bool:
        lim = self.limits
        if self._all is None or self._origins is None:
            self._all = TokenBucket(lim.rate, lim.burst, now)
            self._origins = Limiter(lim.per_origin_rate, lim.per_origin_burst, lim.origins)
        if self._origins.take(origin, now):
            self.dropped["origin"] = self.dropped.get("origin", 0) + 1
            return False
        if not self._all.take(now):
            self.dropped["rate"] = self.dropped.get("rate", 0) + 1
            return False
        return True


def describe(e: UserEvent, *, authenticated: bool, shown: int = 512) -> str:
    """A user event's entry in the event log: name, clock, payload, and who says it fired it."""
    payload = e.payload[:shown].decode("utf-8", "backslashreplace")
    origin = e.origin or "an unnamed member"
    how = "gossip authenticated by the cluster key" if authenticated \
        else "unauthenticated gossip"
    return (f"{e.name[:128]} (ltime {e.ltime})" + (f": {payload}" if payload else "")
            + f" [from {origin}, {how}]")


class GossipEvents:
    def __init__(self, leader: LeaderStatus, monitor: NodeMonitor, cluster: Cluster,
                 limits: UserEventLimits | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.leader = leader
        self.monitor = monitor
        self.cluster = cluster
        self.pending: set[asyncio.Future[object]] = set()
        """Writes started for events and not finished yet."""
        self.gate = UserEventGate(limits or UserEventLimits())
        self.authenticated = False
        """The gossip heard is encrypted: only holders of the key send user events."""
        self._clock = clock
        self._dropped_logged = -math.inf
        self._members: Batched[MemberEvent, Delivered] | None = None
        self._user: Batched[UserEvent, UserEvent] | None = None

    def listen(self, gossip: GossipNode) -> None:
        """Start hearing ``gossip``'s member and user events."""
        self.authenticated = gossip.keyring is not None
        gossip.on_event(self.on_member)
        self._members = Batched(Coalescer(), self.record_members)
        gossip.on_event(self._members.push)
        self._user = Batched(UserEventBatcher(), self._record_user_events)
        gossip.on_user_event(self._user.push)

    def close(self) -> None:
        """Stop: batches still held are dropped."""
        for batched in (self._members, self._user):
            if batched is not None:
                batched.close(deliver=False)

    def on_member(self, ev: MemberEvent) -> None:
        """Liveness acts on every event at once; the event log gets them coalesced."""
        if not self.leader.is_leader:
            return
        if ev.kind in (EventKind.DEAD, EventKind.LEFT):
            self.monitor.member_dead(ev.name)
        elif ev.kind in (EventKind.ALIVE, EventKind.JOIN):
            for node in self.monitor.member_alive(ev.name):
                self.spawn(self.monitor.readmit(node))

    def record_members(self, batch: list[Delivered]) -> None:
        """One event per member and burst."""
        if not self.leader.is_leader:
            return
        for d in batch:
            kind = _RECORDED.get(d.event.kind)
            if kind is not None:
                self.spawn(self.monitor.member_event(d.event.name, kind))

    def _record_user_events(self, batch: list[UserEvent]) -> None:
        if not self.leader.is_leader:
            return
        now_ns = int(time.time() * 1e9)
        now = self._clock()
        events = []
        for e in batch:
            if not self.gate.admit(e.origin, now):
                if now - self._dropped_logged >= 60:
                    self._dropped_logged = now
                    log.warning("user events arrive faster than the event log takes them; "
                                "dropped", extra={"origin": e.origin or "unnamed",
                                                  "dropped": sum(self.gate.dropped.values())})
                continue
            events.append(event("user", "UserEvent", e.name[:128], describe(
                e, authenticated=self.authenticated, shown=self.gate.limits.shown_bytes),
                now_ns))
        if events:
            self.spawn(self.cluster.write(Changes(events=events)))

    def spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        """Run a write in the background; its failure is logged."""
        task = asyncio.ensure_future(coro)
        self.pending.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[object]) -> None:
        self.pending.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        e = task.exception()
        if isinstance(e, (NotLeaderError, StoreError)):  # the term ended meanwhile, or etcd is away
            log.warning("a gossip event about a node was not recorded", extra={"error": str(e)})
        else:
            log.error("recording a gossip event about a node failed", exc_info=e)
