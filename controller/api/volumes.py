"""Volumes: every node's host volumes and the Docker volumes allocations mount."""

from __future__ import annotations

from controller.api.authz import Authorizer
from controller.api.rpc import Ctx, Endpoint, job_ref, unary
from controller.nodes import NodeAdmin
from controller.volumes import volume_entries
from orch.v1 import controller_pb2


class VolumesEndpoint(Endpoint):
    def __init__(self, authz: Authorizer, nodes: NodeAdmin) -> None:
        super().__init__(authz)
        self.nodes = nodes
        self.state = nodes.state

    @unary
    async def ListVolumes(self, req: controller_pb2.ListVolumesRequest,
                          ctx: Ctx) -> controller_pb2.ListVolumesResponse:
        nodes = self.state.nodes
        if req.node:
            node = self.nodes.find(req.node)
            nodes = {node.id: node}
        if req.job:
            allocs = self.state.allocs_of_job(job_ref(req.namespace, req.job))
        else:
            allocs = list(self.state.allocs.values())
        allocs = [a for a in allocs if a.node_id in nodes]
        return controller_pb2.ListVolumesResponse(volumes=volume_entries(
            nodes, allocs, self.state.group_spec, with_unused=not req.job))
