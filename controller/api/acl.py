"""Access tokens (bootstrap the first, once; create, list, revoke, "who am I") and the
cluster's join tokens (print, rotate)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from controller.acl import Acl, Token
from controller.api.authz import Authorizer, bearer
from controller.api.rpc import Ctx, Endpoint, unary
from controller.cluster import Cluster
from controller.leadership import LeaderStatus
from controller.trust import Trust
from orch import pki
from orch.errors import NotFoundError, RequestError
from orch.v1 import controller_pb2

log = logging.getLogger("api")


def token_to_proto(t: Token) -> controller_pb2.AclToken:
    return controller_pb2.AclToken(accessor=t.accessor, name=t.name, policies=list(t.policies),
                                   create_time_ns=t.create_time_ns, revoked=t.revoked)


class AclEndpoint(Endpoint):
    def __init__(self, authz: Authorizer, leader: LeaderStatus, acl: Acl,
                 cluster: Cluster, trust: Trust | None,
                 rotated: Callable[[], None] = lambda: None) -> None:
        super().__init__(authz)
        self.rotated = rotated
        self.leader = leader
        self.acl = acl
        self.cluster = cluster
        self.trust = trust

    @unary
    async def BootstrapAcl(self, req: controller_pb2.BootstrapAclRequest,
                           ctx: Ctx) -> controller_pb2.AclTokenSecret:
        if not self.authz.acl_on:
            raise RequestError("access tokens are off on this cluster (start the controllers "
                               "with acl = true, or with TLS, which turns them on)")
        self.leader.require()
        async with self.cluster.lock:
            token, secret, changes = self.acl.bootstrap()
            await self.cluster.commit(changes)
        log.warning("ACL bootstrapped", extra={"accessor": token.accessor[:8], "peer": ctx.peer()})
        return controller_pb2.AclTokenSecret(token=token_to_proto(token), secret=secret)

    @unary
    async def CreateToken(self, req: controller_pb2.CreateTokenRequest,
                          ctx: Ctx) -> controller_pb2.AclTokenSecret:
        self.leader.require()
        token, secret, changes = self.acl.create(req.name, list(req.policies))
        await self.cluster.write(changes)
        log.info("token created", extra={"accessor": token.accessor[:8], "token": token.name,
                                         "policies": ",".join(token.policies)})
        return controller_pb2.AclTokenSecret(token=token_to_proto(token), secret=secret)

    @unary
    async def ListTokens(self, req: controller_pb2.ListTokensRequest,
                         ctx: Ctx) -> controller_pb2.ListTokensResponse:
        tokens = sorted(self.acl.tokens.values(), key=lambda t: (t.create_time_ns, t.accessor))
        return controller_pb2.ListTokensResponse(tokens=[token_to_proto(t) for t in tokens])

    @unary
    async def RevokeToken(self, req: controller_pb2.RevokeTokenRequest,
                          ctx: Ctx) -> controller_pb2.AclToken:
        self.leader.require()
        async with self.cluster.lock:
            token, changes = self.acl.revoke(req.accessor)
            await self.cluster.commit(changes)
        log.info("token revoked", extra={"accessor": token.accessor[:8], "token": token.name})
        return token_to_proto(token)

    @unary
    async def SelfToken(self, req: controller_pb2.SelfTokenRequest,
                        ctx: Ctx) -> controller_pb2.AclToken:
        secret = bearer(ctx)
        token = self.acl.resolve(secret) if secret else None
        if token is None:
            raise NotFoundError("no token was sent, or it is unknown or revoked")
        return token_to_proto(token)

    @unary
    async def GetJoinToken(self, req: controller_pb2.JoinTokenRequest,
                           ctx: Ctx) -> controller_pb2.JoinTokenResponse:
        """The current join token of a role; with ``rotate``, a new one (the old stops
        working at once)."""
        if self.trust is None:
            raise RequestError("this controller serves without TLS: there are no join tokens "
                               "(start the cluster with --bootstrap)")
        if req.role not in pki.JOIN_ROLES:
            raise RequestError(f"a join token is for an agent or a controller, not {req.role!r}")
        if req.rotate:
            self.leader.require()
            await self.cluster.write(Trust.new_secrets(self.cluster.state.meta, (req.role,)))
            log.warning("join token rotated", extra={"role": req.role, "peer": ctx.peer()})
            self.rotated()
        return controller_pb2.JoinTokenResponse(token=str(self.trust.token(req.role)))
