"""Who leads, and every controller gossip knows (with whether it answers)."""

from __future__ import annotations

from controller.api.authz import Authorizer
from controller.api.rpc import Ctx, Endpoint, unary
from controller.leadership import LeaderStatus
from orch.gossip.transport import GossipNode
from orch.v1 import controller_pb2


class LeaderEndpoint(Endpoint):
    def __init__(self, authz: Authorizer, leader: LeaderStatus, gossip: GossipNode) -> None:
        super().__init__(authz)
        self.leader = leader
        self.gossip = gossip

    @unary
    async def GetLeader(self, req: controller_pb2.GetLeaderRequest,
                        ctx: Ctx) -> controller_pb2.LeaderInfo:
        me, leading = self.leader.name, self.leader.is_leader
        name, address = self.leader.leader()
        controllers = {me: controller_pb2.ControllerInfo(
            name=me, address=self.leader.address, leader=leading, status="alive")}
        for m in self.gossip.members():
            rpc = m.state.get("rpc")
            if m.state.get("role") == "controller" and m.name not in controllers:
                controllers[m.name] = controller_pb2.ControllerInfo(
                    name=m.name, address=rpc if isinstance(rpc, str) else "",
                    leader=m.name == name, status=str(m.status))
        return controller_pb2.LeaderInfo(leader=name, address=address, is_self=leading,
                                         controllers=sorted(controllers.values(),
                                                            key=lambda c: c.name))
