"""The agent's one endpoint table: built from gossip and the controller's expected endpoints
once per change, read by the routing mesh, the DNS server and task templates alike.

Any membership event (a member's node state changed, a member joined, was suspected, died
or left), any change of this agent's own endpoints (``changed``: its own state raises no
event) and any new set of expected endpoints from the controller (``set_expected``) marks
the table stale; one task builds it (``discovery.endpoint_table``: only what the
controller placed) at most every ``settle`` seconds, so that a burst of events costs one
build, and a sweep every ``resync`` seconds builds it anyway. After every build each
listener is called with the owner: the mesh and DNS also depend on what is not in the
table (coordinates, the members alive), so they hear of every build; ``generation``
counts the builds whose table differed from the one before, for readers that want
changes only (templates). The table does not depend on the mesh: DNS and templates read
it with the load balancer off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from agent.lb import discovery
from agent.lb.model import Endpoint
from orch.gossip.core import MemberEvent, MemberInfo

log = logging.getLogger("lb")

SETTLE = 0.02
"""Seconds a burst of changes settles before the table is built (one build per burst)."""
RESYNC = 5.0
"""Seconds between builds when nothing is heard (whatever an event missed is repaired)."""


class Members(Protocol):
    """Where the members come from (a ``GossipNode``)."""

    def members(self) -> Iterable[MemberInfo]: ...

    def on_event(self, handler: Callable[[MemberEvent], None]) -> None: ...


class EndpointTable:
    """The last endpoint table built, what it was built from, and who reads it."""

    def __init__(self, me: str, *, settle: float = SETTLE, resync: float = RESYNC) -> None:
        self.me = me
        self.settle, self.resync = settle, resync
        self.expected: discovery.Expected | None = None
        """What the controller placed (None: not heard from it yet: our own endpoints only)."""
        self.table = discovery.Table({})
        """The last table built (its ``refused``: what that build refused, by reason)."""
        self.members: tuple[MemberInfo, ...] = ()
        """The members it was built from (DNS names the alive ones too)."""
        self.generation = 0
        """Builds whose table (every service with a healthy endpoint) differed from the
        one before."""
        self.builds = 0
        """Builds, changed or not."""
        self.listeners: list[Callable[[EndpointTable], None]] = []
        """Called after every build, in the table's task (nothing that waits: a reader with
        I/O to do wakes its own task)."""
        self._gossip: Members | None = None
        self._stale = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self, gossip: Members) -> None:
        """Build from ``gossip``'s members now (after ``settle``) and after every change."""
        self._gossip = gossip
        gossip.on_event(self._on_event)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="endpoint-table")
        self._stale.set()

    def changed(self) -> None:
        """Something the table depends on changed (this agent's own endpoints): build it
        soon."""
        self._stale.set()

    def set_expected(self, expected: discovery.Expected) -> None:
        """The controller's expected endpoints (replacing the last ones)."""
        self.expected = expected
        self._stale.set()

    def endpoints(self, namespace: str, name: str) -> list[Endpoint]:
        """The healthy endpoints of service ``name`` in ``namespace`` in the last table."""
        return self.table.endpoints(namespace, name)

    def build(self) -> discovery.Table:
        """Build the table now, and tell every listener."""
        members = tuple(self._gossip.members()) if self._gossip is not None else ()
        built = discovery.endpoint_table(members, self.me, self.expected)
        if built.catalog != self.table.catalog:  # services are the published part of it
            self.generation += 1
        self.table, self.members = built, members
        self.builds += 1
        for fn in list(self.listeners):
            try:
                fn(self)
            except Exception:  # a reader's bug: the others still hear of the table
                log.exception("a reader of the endpoint table failed", extra={
                    "reader": getattr(fn, "__qualname__", repr(fn))})
        return built

    def _on_event(self, ev: MemberEvent) -> None:
        self._stale.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stale.wait(), self.resync)
            await asyncio.sleep(self.settle)
            self._stale.clear()
            try:
                self.build()
            except Exception:  # a bug: keep the last table and try again at the next change
                log.exception("building the endpoint table failed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
