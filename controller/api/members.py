"""The gossip cluster: its members (with network coordinates, and the sources whose gossip
is refused), user events, and the keyring, whose operations go to every member (as
Serf's ``keys``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import grpc

from controller.api.authz import Authorizer, bearer
from controller.api.rpc import Ctx, Endpoint, unary
from controller.channels import Channels
from controller.state import ClusterState
from controller.trust import META_CONTROLLER
from orch import keyring
from orch.errors import ConfigError
from orch.gossip import codec
from orch.gossip.crypto import parse_key
from orch.gossip.transport import GossipNode
from orch.v1 import controller_pb2, controller_pb2_grpc, node_pb2

KEYRING_TIMEOUT = 10.0
"""Seconds each other member has to do a keyring operation."""
SHOWN_DEPTH = 8
"""A node-state value nested deeper than this is shown as a placeholder (gossip refuses
deeper ones: ``GossipConfig.max_state_depth``)."""
SHOWN_CHARS = 4096
"""Characters of one node-state value shown."""


def show_value(v: object) -> str:
    """A node-state value as a member's tag: strings as they are, anything else as text,
    bounded in size and never recursing without bound."""
    if isinstance(v, str):
        return v[:SHOWN_CHARS]
    if codec.depth(v, SHOWN_DEPTH) > SHOWN_DEPTH:
        return f"<nested deeper than {SHOWN_DEPTH}>"
    return str(v)[:SHOWN_CHARS]


class MembersEndpoint(Endpoint):
    def __init__(self, authz: Authorizer, gossip: GossipNode, *, name: str, data_dir: str,
                 state: ClusterState, channels: Channels) -> None:
        super().__init__(authz)
        self.gossip = gossip
        self.name = name
        self.data_dir = data_dir
        self.state = state
        self.channels = channels

    def _controllers(self) -> dict[str, str]:
        """The other controllers: those the store knows (each recorded when it joined or
        led) and those gossip says are alive. A gossip tag proves nothing, but with TLS the
        call reaches only a server whose certificate has the controller role (see
        ``Channels``), and it carries this controller's identity, never the caller's token."""
        known = {m.name: str(m.state["rpc"]) for m in self.gossip.members()
                 if m.state.get("role") == "controller" and isinstance(m.state.get("rpc"), str)
                 and str(m.status) == "alive"}
        known.update({k[len(META_CONTROLLER):]: v for k, v in self.state.meta.items()
                      if k.startswith(META_CONTROLLER)})
        known.pop(self.name, None)
        return known

    @unary
    async def ListMembers(self, req: controller_pb2.ListMembersRequest,
                          ctx: Ctx) -> controller_pb2.ListMembersResponse:
        return controller_pb2.ListMembersResponse(members=self._members(),
                                                  refused=self._refused())

    def _members(self) -> list[controller_pb2.Member]:
        out = []
        for m in sorted(self.gossip.members(), key=lambda m: m.name):
            tags = {k: show_value(v) for k, v in m.state.items()}
            member = controller_pb2.Member(name=m.name, address=f"{m.addr[0]}:{m.addr[1]}",
                                           status=str(m.status), incarnation=m.incarnation,
                                           tags=tags)
            coord = self.gossip.core.coordinate(m.name) if self.gossip.core else None
            if coord is not None:
                member.coordinate.CopyFrom(controller_pb2.Coordinate(
                    vec=coord.vec, error=coord.error, height=coord.height,
                    adjustment=coord.adjustment))
            out.append(member)
        return out

    def _refused(self) -> list[controller_pb2.RefusedPeer]:
        """Sources whose gossip this controller drops (a wrong key, another cluster...)."""
        return [controller_pb2.RefusedPeer(name=r.name, address=r.addr, reason=r.reason,
                                           packets=r.packets, last_time_ns=int(r.last * 1e9),
                                           error=r.error)
                for r in sorted(self.gossip.refused.values(), key=lambda r: -r.last)]

    @unary
    async def FireEvent(self, req: controller_pb2.FireEventRequest,
                        ctx: Ctx) -> controller_pb2.FireEventResponse:
        """Gossip a user event from this controller (any controller may: gossip is not the
        store); ConfigError when the name or payload is unfit."""
        if self.gossip.core is None:
            raise ConfigError("gossip is not running on this controller")
        ltime = self.gossip.core.user_events.clock
        try:
            self.gossip.fire_event(req.name, req.payload, coalesce=not req.no_coalesce)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return controller_pb2.FireEventResponse(ltime=ltime, member=self.name)

    @unary
    async def Keyring(self, req: controller_pb2.KeyringRequest,
                      ctx: Ctx) -> controller_pb2.KeyringResponse:
        """Do a keyring operation here, then (unless ``local``) on every other controller and
        every agent that is not down, concurrently; one result per member."""
        if req.op != controller_pb2.KEYRING_OP_LIST:
            parse_key(req.key)  # one clear error instead of one per member
        if req.op == controller_pb2.KEYRING_OP_UNSPECIFIED:
            raise ConfigError("say which keyring operation: list, install, use or remove")
        out = controller_pb2.KeyringResponse(
            members=[keyring.apply(self.gossip, req, self.data_dir, self.name)])
        if req.local:
            return out
        fwd = controller_pb2.KeyringRequest(op=req.op, key=req.key, local=True)
        # with TLS, this controller calls with its own certificate and the caller's token
        # never travels on; without TLS (loopback, or insecure) there is no other identity
        token = bearer(ctx) if not self.authz.tls_on else ""
        meta = (("authorization", f"Bearer {token}"),) if token else ()

        async def peer(addr: str) -> controller_pb2.MemberKeyring:
            stub = controller_pb2_grpc.ControllerServiceStub(self.channels.to_controller(addr))
            reply = await stub.Keyring(fwd, timeout=KEYRING_TIMEOUT, metadata=meta)
            return reply.members[0]

        async def agent(node: node_pb2.Node) -> controller_pb2.MemberKeyring:
            stub = controller_pb2_grpc.AgentServiceStub(self.channels.to_agent(node.id))
            reply: controller_pb2.MemberKeyring = await stub.Keyring(fwd, timeout=KEYRING_TIMEOUT)
            return reply

        calls: list[tuple[str, Awaitable[controller_pb2.MemberKeyring]]] = []
        for name, addr in self._controllers().items():
            calls.append((name, peer(addr)))
        for node in sorted(self.state.nodes.values(), key=lambda n: n.name):
            if node.status == node_pb2.NODE_STATUS_DOWN:
                out.members.add(member=node.name, error="the node is down: it keeps the keys it "
                                "had (repeat the operation when it is back)")
            else:
                calls.append((node.name, agent(node)))
        results = await asyncio.gather(*(c for _, c in calls), return_exceptions=True)
        for (name, _), r in zip(calls, results, strict=True):
            if isinstance(r, BaseException):
                why = r.details() if isinstance(r, grpc.aio.AioRpcError) else str(r)
                out.members.add(member=name, error=f"unreachable: {why}")
            else:
                out.members.append(r)
        return out
