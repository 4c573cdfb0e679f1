"""Nodes: list, show (with what runs there and its gossip member's status), drain,
eligibility, removal for good, and forgetting a down one (purge)."""

from __future__ import annotations

from collections.abc import Callable

from controller.api.authz import Authorizer
from controller.api.rpc import Ctx, Endpoint, unary
from controller.leadership import LeaderStatus
from controller.nodes import NodeAdmin
from controller.state import RUN, TERMINAL
from orch.gossip.transport import GossipNode
from orch.v1 import controller_pb2, job_pb2, node_pb2


class NodesEndpoint(Endpoint):
    def __init__(self, authz: Authorizer, leader: LeaderStatus, nodes: NodeAdmin,
                 gossip: GossipNode, end_stream: Callable[[str], None]) -> None:
        super().__init__(authz)
        self.leader = leader
        self.nodes = nodes
        self.state = nodes.state
        self.gossip = gossip
        self.end_stream = end_stream

    @unary
    async def ListNodes(self, req: controller_pb2.ListNodesRequest,
                        ctx: Ctx) -> controller_pb2.ListNodesResponse:
        return controller_pb2.ListNodesResponse(
            nodes=sorted(self.state.nodes.values(), key=lambda n: n.name))

    @unary
    async def GetNode(self, req: controller_pb2.GetNodeRequest,
                      ctx: Ctx) -> controller_pb2.NodeStatusReply:
        node = self.nodes.find(req.id)
        allocs = self.state.allocs_on_node(node.id)
        used = job_pb2.Resources()
        for a in allocs:
            if a.desired_status == RUN and a.client_status not in TERMINAL:
                used.cpu_millicores += a.resources.cpu_millicores
                used.memory_mb += a.resources.memory_mb
        member = next((m for m in self.gossip.members() if m.name == node.name), None)
        return controller_pb2.NodeStatusReply(node=node, allocations=allocs, allocated=used,
                                              member_status=str(member.status) if member else "")

    @unary
    async def DrainNode(self, req: controller_pb2.DrainNodeRequest, ctx: Ctx) -> node_pb2.Node:
        self.leader.require()
        return await self.nodes.drain(req.id, enable=req.enable,
                                      deadline=float(req.deadline_seconds),
                                      ignore_system_jobs=req.ignore_system_jobs)

    @unary
    async def SetNodeEligibility(self, req: controller_pb2.SetNodeEligibilityRequest,
                                 ctx: Ctx) -> node_pb2.Node:
        self.leader.require()
        return await self.nodes.set_eligibility(req.id, req.eligible)

    @unary
    async def PurgeNode(self, req: controller_pb2.PurgeNodeRequest, ctx: Ctx) -> node_pb2.Node:
        """Forget a down node now (its id is not refused: it may register again)."""
        self.leader.require()
        return await self.nodes.purge(req.id)

    @unary
    async def RemoveNode(self, req: controller_pb2.RemoveNodeRequest, ctx: Ctx) -> node_pb2.Node:
        """Remove a node for good (its certificate is refused from now on)."""
        self.leader.require()
        node = await self.nodes.remove(req.id)
        self.end_stream(node.id)
        return node
