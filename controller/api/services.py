"""Services: every published service with its endpoints (where its running allocations
listen), their health, and what the load balancers send each."""

from __future__ import annotations

import time

from controller.api.authz import Authorizer
from controller.api.rpc import Ctx, Endpoint, unary
from controller.state import RUN, RUNNING, ClusterState
from controller.usage import UsageTable
from orch.jobspec.model import Service
from orch.net import host_of
from orch.v1 import controller_pb2
from orch.vocab import lb_mode


class ServicesEndpoint(Endpoint):
    def __init__(self, authz: Authorizer, state: ClusterState, usage: UsageTable) -> None:
        super().__init__(authz)
        self.state = state
        self.usage = usage

    @unary
    async def ListServices(self, req: controller_pb2.ListServicesRequest,
                           ctx: Ctx) -> controller_pb2.ListServicesResponse:
        return controller_pb2.ListServicesResponse(services=self._services(req.name))

    def _services(self, name: str) -> list[controller_pb2.ServiceEntry]:
        state = self.state
        now = time.time()
        entries: dict[tuple[str, str], controller_pb2.ServiceEntry] = {}
        specs: dict[tuple[str, str], Service] = {}
        for a in sorted(state.allocs.values(), key=lambda a: (a.job, a.index)):
            if a.desired_status != RUN or a.client_status != RUNNING:
                continue
            group = state.group_spec(a)
            node = state.nodes.get(a.node_id)
            if group is None or node is None:
                continue
            host = host_of(node.address)
            for svc in group.services:
                if name and svc.name != name:
                    continue
                e = entries.get((a.job, svc.name))
                if e is None:
                    specs[(a.job, svc.name)] = svc
                    e = entries[(a.job, svc.name)] = controller_pb2.ServiceEntry(
                        name=svc.name, job=a.job, published_port=svc.published_port,
                        protocol=svc.protocol)
                port = a.ports.get(svc.port)
                if port:
                    f = self.usage.figures(a.id, now)
                    e.endpoints.add(alloc_id=a.id, node=node.name, address=f"{host}:{port}",
                                    healthy=a.checks_healthy if svc.check else True,
                                    active_connections=f.active_connections,
                                    connections_per_second=f.connections_per_second)
        nodes = [n for n in state.nodes.values() if n.attributes.get("lb.mode")]
        kernel = sum(1 for n in nodes if n.attributes.get("lb.mode") == "kernel")
        for e in entries.values():
            spec = specs[(e.job, e.name)]
            e.lb_mode = lb_mode(spec.lb_policy, spec.proxy_protocol, kernel, len(nodes))
        return list(entries.values())
