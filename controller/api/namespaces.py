"""Namespaces: create or change one (with its quota), list them with what they use, remove
an empty one."""

from __future__ import annotations

import logging
import time

from controller.api.authz import Authorizer
from controller.api.rpc import Ctx, Endpoint, unary
from controller.cluster import Cluster
from controller.leadership import LeaderStatus
from controller.namespaces import Namespace, Namespaces
from controller.scheduler.quota import Quota, Usage
from orch.v1 import controller_pb2

log = logging.getLogger("api")


def _quota(q: Quota | Usage) -> controller_pb2.Quota:
    return controller_pb2.Quota(cpu_millicores=q.cpu_millicores, memory_mb=q.memory_mb,
                                allocations=q.allocations)


class NamespacesEndpoint(Endpoint):
    def __init__(self, authz: Authorizer, leader: LeaderStatus, cluster: Cluster,
                 namespaces: Namespaces) -> None:
        super().__init__(authz)
        self.leader = leader
        self.cluster = cluster
        self.namespaces = namespaces

    def _to_proto(self, ns: Namespace) -> controller_pb2.Namespace:
        state = self.cluster.state
        return controller_pb2.Namespace(
            name=ns.name, description=ns.description, quota=_quota(ns.quota),
            create_time_ns=ns.create_time_ns, modify_time_ns=ns.modify_time_ns,
            used=_quota(state.snapshot.usage(ns.name)),
            jobs=sum(1 for key in state.jobs if key[0] == ns.name))

    @unary
    async def ApplyNamespace(self, req: controller_pb2.ApplyNamespaceRequest,
                             ctx: Ctx) -> controller_pb2.Namespace:
        self.leader.require()
        async with self.cluster.lock:
            old = self.namespaces.get(req.name)
            q = old.quota if old is not None else Quota()
            quota = None
            if any(req.HasField(f) for f in ("cpu_millicores", "memory_mb", "allocations")):
                quota = Quota(
                    cpu_millicores=req.cpu_millicores if req.HasField("cpu_millicores")
                    else q.cpu_millicores,
                    memory_mb=req.memory_mb if req.HasField("memory_mb") else q.memory_mb,
                    allocations=req.allocations if req.HasField("allocations")
                    else q.allocations)
            ns, changes = self.namespaces.apply(
                req.name, time.time_ns(), quota=quota,
                description=req.description if req.HasField("description") else None)
            await self.cluster.commit(changes)
        log.info("namespace applied", extra={"namespace": ns.name, "quota": ns.quota.describe()})
        return self._to_proto(ns)

    @unary
    async def ListNamespaces(self, req: controller_pb2.ListNamespacesRequest,
                             ctx: Ctx) -> controller_pb2.ListNamespacesResponse:
        return controller_pb2.ListNamespacesResponse(
            namespaces=[self._to_proto(ns) for ns in self.namespaces.all.values()])

    @unary
    async def DeleteNamespace(self, req: controller_pb2.DeleteNamespaceRequest,
                              ctx: Ctx) -> controller_pb2.Namespace:
        self.leader.require()
        async with self.cluster.lock:
            ns = self.namespaces.require(req.name)
            await self.cluster.commit(self.namespaces.delete(req.name))
        log.info("namespace removed", extra={"namespace": ns.name})
        return self._to_proto(ns)
