"""What the controller does with what gossip tells it, on the leader only (followers hear
the same events and leave them to it):

- a member declared dead or gone starts its node's grace at once, and one seen alive
  again readmits a node that was marked down while its stream stayed open
  (``NodeMonitor``);
- member events are recorded in the event log, coalesced per burst (a suspicion refuted
  within it is no news);
- user events are recorded in the event log (topic ``user``), coalesced by name.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
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

log = logging.getLogger("controller")

_RECORDED = {EventKind.SUSPECT: "NodeSuspect", EventKind.ALIVE: "NodeAlive",
             EventKind.DEAD: "NodeMemberDead", EventKind.LEFT: "NodeMemberLeft"}
"""The member events recorded in the event log, and their event types."""


class GossipEvents:
    def __init__(self, leader: LeaderStatus, monitor: NodeMonitor, cluster: Cluster) -> None:
        self.leader = leader
        self.monitor = monitor
        self.cluster = cluster
        self.pending: set[asyncio.Future[object]] = set()
        """Writes started for events and not finished yet."""
        self._members: Batched[MemberEvent, Delivered] | None = None
        self._user: Batched[UserEvent, UserEvent] | None = None

    def listen(self, gossip: GossipNode) -> None:
        """Start hearing ``gossip``'s member and user events."""
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
        events = []
        for e in batch:
            shown = e.payload.decode("utf-8", "backslashreplace")
            events.append(event("user", "UserEvent", e.name, f"{e.name} (ltime {e.ltime})"
                                + (f": {shown}" if shown else ""), now_ns))
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
