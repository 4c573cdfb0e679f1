"""The routing mesh on one agent: gossip's endpoint table, kept in the load balancer.

Any membership event (a member's node state changed, a member joined, was suspected,
died or left), any change of this agent's own endpoints and any new set of expected
endpoints from the controller (``set_expected``) marks the table stale; one task rebuilds
it from gossip, keeping only what the controller placed (``discovery.endpoint_table``),
and hands it whole to ``LoadBalancer.update``, at most every ``settle`` seconds, so that a
burst of events costs one update. A sweep every ``resync`` seconds rebuilds it anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable

from agent.lb import discovery
from agent.lb.balancer import LoadBalancer
from agent.lb.dataplane import DataPlane
from agent.lb.model import ServiceSpec
from agent.lb.stats import ServiceStats
from orch.gossip.coordinate import estimate_rtt
from orch.gossip.core import MemberEvent
from orch.gossip.transport import GossipNode
from orch.v1 import controller_pb2

log = logging.getLogger("lb")


class Mesh:
    def __init__(self, lb: LoadBalancer | DataPlane, gossip: GossipNode, me: str, *, settle: float = 0.02,
                 resync: float = 5.0) -> None:
        self.lb, self.gossip, self.me = lb, gossip, me
        self.settle, self.resync = settle, resync
        self.table: dict[str, ServiceSpec] = {}
        self.updates = 0
        self.expected: discovery.Expected | None = None
        """What the controller placed (None: not heard from it yet: our own endpoints only)."""
        self.refused: dict[str, int] = dict.fromkeys(discovery.REASONS, 0)
        """Endpoints published in gossip and refused in the last table built, by reason."""
        self._stale = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.listeners: list[Callable[[dict[str, ServiceSpec]], None]] = []
        """Called with every new table (tests, metrics)."""

    def start(self) -> None:
        self.gossip.on_event(self._on_event)
        self._task = asyncio.get_running_loop().create_task(self._run())
        self.changed()

    def changed(self) -> None:
        """Something the table depends on changed: rebuild it soon."""
        self._stale.set()

    def set_expected(self, expected: discovery.Expected) -> None:
        """The controller's expected endpoints (replacing the last ones)."""
        self.expected = expected
        self._stale.set()

    def _on_event(self, ev: MemberEvent) -> None:
        self._stale.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stale.wait(), self.resync)
            await asyncio.sleep(self.settle)
            self._stale.clear()
            built = discovery.endpoint_table(self.gossip.members(), self.me, self.expected)
            self.refused = built.refused
            table = built.services
            if self.lb.cfg.prefer_nearest:
                table = self._with_distances(table)
            if table == self.table:
                continue
            try:
                await self.lb.update(table)
            except Exception:  # the LB logs what it leaves out; this is a bug: retry later
                log.exception("load balancer update failed")
                continue
            self.table = table
            self.updates += 1
            log.debug("endpoint table", extra={
                "services": len(table), "endpoints": sum(len(s.endpoints) for s in table.values())})
            for fn in self.listeners:
                fn(table)

    def _with_distances(self, table: dict[str, ServiceSpec]) -> dict[str, ServiceSpec]:
        """The table with each endpoint's estimated RTT (rounded to 0.1 ms, so that the
        coordinates' drift does not rebuild the table at every sweep)."""
        core = self.gossip.core
        me = core.coordinate(self.me) if core is not None else None
        if core is None or me is None:
            return table

        def rtt(node: str) -> float | None:
            if node == self.me:
                return 0.0
            c = core.coordinate(node)
            return round(estimate_rtt(me, c), 4) if c is not None else None

        return {name: dataclasses.replace(svc, endpoints=tuple(
            dataclasses.replace(ep, rtt=rtt(ep.node)) for ep in svc.endpoints))
            for name, svc in table.items()}

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.lb.close()

    def stats(self) -> dict[str, ServiceStats]:
        return self.lb.stats()

    def endpoint_loads(self) -> list[controller_pb2.EndpointLoad]:
        """What this node's load balancer sends to each endpoint (for the autoscaler)."""
        loads: dict[str, controller_pb2.EndpointLoad] = {}
        for svc in self.lb.stats().values():
            for ep in svc.endpoint_details:
                load = loads.setdefault(ep.alloc_id, controller_pb2.EndpointLoad(
                    alloc_id=ep.alloc_id))
                load.active_connections += ep.active
                load.connections_total += ep.total
        return list(loads.values())
