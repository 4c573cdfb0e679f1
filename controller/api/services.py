"""Services, the catalog: every service with a port and its endpoints (where its running
allocations listen), their health, and what the load balancers send each; listed, or
watched with a blocking index (as Consul's blocking queries).

The list's index is the state's index when the list (names, endpoints and health; not
the load figures, which move all the time) last changed: ``WatchServices`` with the index
a caller holds answers as soon as the list differs, or after its wait with the same list.
"""

from __future__ import annotations

import asyncio
import random
import time

import grpc

from controller.api.authz import Authorizer
from controller.api.rpc import Ctx, Endpoint, unary
from controller.cluster import IndexWatch
from controller.state import RUN, RUNNING, ClusterState
from controller.usage import UsageTable
from orch.jobspec.model import Service
from orch.net import host_of
from orch.v1 import controller_pb2
from orch.vocab import lb_mode

DEFAULT_WAIT = 60.0
"""Seconds a watch waits when it names no wait."""
MAX_WAIT = 300.0
"""The longest wait a watch may ask for (a longer one is cut to it)."""
MAX_WATCHES = 1024
"""Watches waiting at once; past it they are refused (RESOURCE_EXHAUSTED), not queued."""

Shape = tuple[tuple[str, str, str, str, int, str, tuple[tuple[str, str, str, bool], ...]], ...]


class ServicesEndpoint(Endpoint):
    def __init__(self, authz: Authorizer, state: ClusterState, usage: UsageTable,
                 index: IndexWatch | None = None) -> None:
        super().__init__(authz)
        self.state = state
        self.usage = usage
        self.index = index
        self.watches = 0
        self._shapes: dict[tuple[str, str], tuple[Shape, int]] = {}
        """(namespace, name) asked -> the list's shape and the index it last changed at
        (bounded: one entry per filter callers use, cleared past MAX_WATCHES entries)."""

    @unary
    async def ListServices(self, req: controller_pb2.ListServicesRequest,
                           ctx: Ctx) -> controller_pb2.ListServicesResponse:
        services, index = self._listed(req.namespace, req.name)
        return controller_pb2.ListServicesResponse(services=services, index=index)

    @unary
    async def WatchServices(self, req: controller_pb2.WatchServicesRequest,
                            ctx: Ctx) -> controller_pb2.ListServicesResponse:
        services, index = self._listed(req.namespace, req.name)
        if index > req.index or self.index is None:
            return controller_pb2.ListServicesResponse(services=services, index=index)
        if self.watches >= MAX_WATCHES:
            await ctx.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"more than {MAX_WATCHES} watches wait at once: try again later")
        wait = min(MAX_WAIT, req.wait_seconds if req.wait_seconds > 0 else DEFAULT_WAIT)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait + random.uniform(0, wait / 16)  # watchers spread out
        self.watches += 1
        try:
            while index <= req.index:
                left = deadline - loop.time()
                if left <= 0:
                    break
                await self.index.wait_past(self.state.index, left)
                services, index = self._listed(req.namespace, req.name)
        finally:
            self.watches -= 1
        return controller_pb2.ListServicesResponse(services=services, index=index)

    def _listed(self, namespace: str, name: str) -> tuple[list[controller_pb2.ServiceEntry], int]:
        """The services, and the index at which their shape last changed."""
        services = self._services(namespace, name)
        shape: Shape = tuple(
            (s.namespace, s.job, s.group, s.name, s.published_port, s.protocol,
             tuple((e.alloc_id, e.node, e.address, e.healthy) for e in s.endpoints))
            for s in services)
        key = (namespace, name)
        seen = self._shapes.get(key)
        if seen is None or seen[0] != shape:
            if len(self._shapes) >= MAX_WATCHES:
                self._shapes.clear()
            # first seen: the state's index (the list may have changed at any time up to it)
            seen = self._shapes[key] = (shape, max(1, self.state.index))
        return services, seen[1]

    def _services(self, namespace: str, name: str) -> list[controller_pb2.ServiceEntry]:
        state = self.state
        now = time.time()
        entries: dict[tuple[str, str, str, str], controller_pb2.ServiceEntry] = {}
        specs: dict[tuple[str, str, str, str], Service] = {}
        for a in sorted(state.allocs.values(), key=lambda a: (a.namespace, a.job, a.index)):
            if a.desired_status != RUN or a.client_status != RUNNING:
                continue
            if namespace and a.namespace != namespace:
                continue
            group = state.group_spec(a)
            node = state.nodes.get(a.node_id)
            if group is None or node is None:
                continue
            host = host_of(node.address)
            for svc in group.services:
                if name and svc.name != name:
                    continue
                key = (a.namespace, a.job, group.name, svc.name)
                e = entries.get(key)
                if e is None:
                    specs[key] = svc
                    e = entries[key] = controller_pb2.ServiceEntry(
                        name=svc.name, job=a.job, published_port=svc.published_port,
                        protocol=svc.protocol, namespace=a.namespace, group=group.name)
                port = a.ports.get(svc.port)
                if port:
                    f = self.usage.figures(a.id, now)
                    e.endpoints.add(alloc_id=a.id, node=node.name, address=f"{host}:{port}",
                                    healthy=a.checks_healthy if svc.check else True,
                                    active_connections=f.active_connections,
                                    connections_per_second=f.connections_per_second)
        nodes = [n for n in state.nodes.values() if n.attributes.get("lb.mode")]
        kernel = sum(1 for n in nodes if n.attributes.get("lb.mode") == "kernel")
        for key, e in entries.items():
            spec = specs[key]
            e.lb_mode = lb_mode(spec.lb_policy, spec.proxy_protocol, kernel, len(nodes))
        return [entries[k] for k in sorted(entries)]
