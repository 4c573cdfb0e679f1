"""The routing mesh on one agent: the agent's endpoint table, kept in the load balancer.

The table is built once per change by ``agent.lb.table.EndpointTable`` (which DNS and
templates read too); after each build the mesh takes its published services, adds each
endpoint's distance where ``prefer_nearest`` asks for it, and hands the result whole to
``LoadBalancer.update`` when it differs from the last one applied. A burst of builds
while an update runs costs one more update, with the newest table.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable

from agent.lb.balancer import LoadBalancer
from agent.lb.dataplane import DataPlane
from agent.lb.model import ServiceSpec
from agent.lb.stats import ServiceStats
from agent.lb.table import EndpointTable
from orch.gossip.coordinate import estimate_rtt
from orch.gossip.transport import GossipNode
from orch.v1 import controller_pb2

log = logging.getLogger("lb")


class Mesh:
    def __init__(self, lb: LoadBalancer | DataPlane, gossip: GossipNode,
                 endpoints: EndpointTable) -> None:
        self.lb, self.gossip, self.endpoints = lb, gossip, endpoints
        self.me = endpoints.me
        self.table: dict[str, ServiceSpec] = {}
        """What the load balancer was last given."""
        self.updates = 0
        self.generation = 0
        """The endpoint table's generation the load balancer serves."""
        self._fresh = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.listeners: list[Callable[[dict[str, ServiceSpec]], None]] = []
        """Called with every new table applied (tests, metrics)."""

    def start(self) -> None:
        self.endpoints.listeners.append(self._built)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="mesh")
        self._fresh.set()  # whatever was built before the mesh started

    def _built(self, _: EndpointTable) -> None:
        self._fresh.set()

    async def _run(self) -> None:
        while True:
            await self._fresh.wait()
            self._fresh.clear()
            generation = self.endpoints.generation
            table = self.endpoints.table.services
            if self.lb.cfg.prefer_nearest:
                table = self._with_distances(table)
            if table == self.table:
                self.generation = generation
                continue
            try:
                await self.lb.update(table)
            except Exception:  # the LB logs what it leaves out; this is a bug: retry later
                log.exception("load balancer update failed")
                continue
            self.table = table
            self.generation = generation
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
        with contextlib.suppress(ValueError):
            self.endpoints.listeners.remove(self._built)
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
