"""Secrets of a namespace: put a new version, read one, list them (never their values),
remove one. Values are sealed in the store; only ``GetSecret`` and the tasks that name a
secret see them."""

from __future__ import annotations

import logging
import time

from controller.api.authz import Authorizer
from controller.api.rpc import Ctx, Endpoint, unary
from controller.cluster import Cluster
from controller.leadership import LeaderStatus
from controller.namespaces import Namespaces
from controller.planner import event
from controller.secrets import Secret, Secrets
from orch.v1 import controller_pb2
from orch.vocab import namespace_of

log = logging.getLogger("api")


class SecretsEndpoint(Endpoint):
    def __init__(self, authz: Authorizer, leader: LeaderStatus, cluster: Cluster,
                 secrets: Secrets, namespaces: Namespaces) -> None:
        super().__init__(authz)
        self.leader = leader
        self.cluster = cluster
        self.secrets = secrets
        self.namespaces = namespaces

    def _info(self, s: Secret, *, used: bool = True) -> controller_pb2.SecretInfo:
        return controller_pb2.SecretInfo(
            namespace=s.namespace, name=s.name, version=s.latest.version,
            create_time_ns=s.create_time_ns,
            versions=[controller_pb2.SecretVersion(version=v.version,
                                                   create_time_ns=v.create_time_ns, size=v.size)
                      for v in s.versions],
            used_by=self.secrets.used_by(s.namespace, s.name) if used else [])

    @unary
    async def PutSecret(self, req: controller_pb2.PutSecretRequest,
                        ctx: Ctx) -> controller_pb2.SecretInfo:
        self.leader.require()
        ns = namespace_of(req.namespace)
        now_ns = time.time_ns()
        async with self.cluster.lock:
            self.namespaces.require(ns)
            secret, changes = self.secrets.put(ns, req.name, req.value, now_ns, req.cas)
            changes.events.append(event("secret", "SecretPut", f"{ns}/{req.name}",
                                        f"secret {ns}/{req.name} version "
                                        f"{secret.latest.version}", now_ns))
            await self.cluster.commit(changes)
        log.info("secret put", extra={"namespace": ns, "secret": req.name,
                                      "version": secret.latest.version, "peer": ctx.peer()})
        return self._info(secret)

    @unary
    async def GetSecret(self, req: controller_pb2.GetSecretRequest,
                        ctx: Ctx) -> controller_pb2.SecretValue:
        ns = namespace_of(req.namespace)
        version, value = self.secrets.value(ns, req.name, req.version)
        log.info("secret read", extra={"namespace": ns, "secret": req.name, "version": version,
                                       "peer": ctx.peer()})
        return controller_pb2.SecretValue(namespace=ns, name=req.name, version=version,
                                          value=value)

    @unary
    async def ListSecrets(self, req: controller_pb2.ListSecretsRequest,
                          ctx: Ctx) -> controller_pb2.ListSecretsResponse:
        ns = namespace_of(req.namespace)
        return controller_pb2.ListSecretsResponse(
            secrets=[self._info(s) for s in self.secrets.listing(ns, req.prefix)])

    @unary
    async def DeleteSecret(self, req: controller_pb2.DeleteSecretRequest,
                           ctx: Ctx) -> controller_pb2.SecretInfo:
        self.leader.require()
        ns = namespace_of(req.namespace)
        now_ns = time.time_ns()
        async with self.cluster.lock:
            secret, changes = self.secrets.delete(ns, req.name)
            changes.events.append(event("secret", "SecretDeleted", f"{ns}/{req.name}",
                                        f"secret {ns}/{req.name} removed", now_ns))
            await self.cluster.commit(changes)
        log.info("secret removed", extra={"namespace": ns, "secret": req.name,
                                          "peer": ctx.peer()})
        return self._info(secret, used=False)
