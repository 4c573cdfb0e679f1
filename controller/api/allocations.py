"""Allocations: list, show, what they use, stop (a replacement is placed), restart and logs
(both done by the agent that runs the allocation, through this controller)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc

from controller.api.authz import Authorizer
from controller.api.rpc import Ctx, Endpoint, job_ref, streaming, unary
from controller.channels import Channels
from controller.cluster import Cluster
from controller.evaluator import Evaluator
from controller.leadership import LeaderStatus
from controller.nodes import NodeAdmin
from controller.state import RUN, TERMINAL, job_key
from controller.store.base import Changes
from controller.usage import UsageTable
from orch.errors import RequestError
from orch.v1 import controller_pb2, controller_pb2_grpc, node_pb2
from orch.vocab import namespace_of

RESTART_TIMEOUT = 30.0
"""Seconds an agent has to restart an allocation's tasks."""


class AllocationsEndpoint(Endpoint):
    def __init__(self, authz: Authorizer, leader: LeaderStatus, cluster: Cluster,
                 evaluator: Evaluator, nodes: NodeAdmin, channels: Channels,
                 usage: UsageTable) -> None:
        super().__init__(authz)
        self.usage = usage
        self.leader = leader
        self.cluster = cluster
        self.state = cluster.state
        self.evaluator = evaluator
        self.nodes = nodes
        self.channels = channels

    @unary
    async def ListAllocations(self, req: controller_pb2.ListAllocationsRequest,
                              ctx: Ctx) -> controller_pb2.ListAllocationsResponse:
        if req.job:
            allocs = self.state.allocs_of_job(job_ref(req.namespace, req.job))
        elif req.node_id:
            allocs = self.state.allocs_on_node(self.nodes.find(req.node_id).id)
        else:
            allocs = sorted(self.state.allocs.values(), key=lambda a: (a.job, a.group, a.index))
        if req.namespace:
            allocs = [a for a in allocs if namespace_of(a.namespace) == req.namespace]
        if not req.include_stopped:
            allocs = [a for a in allocs if a.desired_status == RUN or a.client_status not in TERMINAL]
        return controller_pb2.ListAllocationsResponse(allocations=allocs)

    @unary
    async def GetAllocation(self, req: controller_pb2.GetAllocationRequest,
                            ctx: Ctx) -> node_pb2.Allocation:
        return self.state.one_alloc(req.id)

    @unary
    async def GetAllocationUsage(self, req: controller_pb2.GetAllocationRequest,
                                 ctx: Ctx) -> controller_pb2.AllocationUsage:
        """What the allocation uses now (the agents' reports, kept in memory only)."""
        a = self.state.one_alloc(req.id)
        f = self.usage.figures(a.id, time.time())
        return controller_pb2.AllocationUsage(
            alloc_id=a.id, reported=f.reported, cpu_cores=f.cpu_cores or 0.0,
            memory_bytes=f.memory_bytes or 0, active_connections=f.active_connections,
            connections_per_second=f.connections_per_second)

    @unary
    async def StopAllocation(self, req: controller_pb2.AllocationRequest,
                             ctx: Ctx) -> node_pb2.Allocation:
        """Stop an allocation; the scheduler places a replacement, as ``nomad alloc stop``."""
        self.leader.require()
        async with self.cluster.lock:
            a = node_pb2.Allocation()
            a.CopyFrom(self.state.one_alloc(req.id))
            if a.desired_status != RUN:
                raise RequestError(f"allocation {a.id[:8]} is already stopped")
            a.desired_status = node_pb2.DESIRED_STATUS_STOP
            a.description = "stopped by an operator"
            await self.cluster.commit(Changes(put_allocs=[a]))
        await self.evaluator.evaluate_now(job_key(a), "alloc-stop")
        return a

    @unary
    async def RestartAllocation(self, req: controller_pb2.AllocationRequest,
                                ctx: Ctx) -> node_pb2.Allocation:
        """Restart an allocation's tasks where they run (the agent does it)."""
        a = self.state.one_alloc(req.id)
        stub = controller_pb2_grpc.AgentServiceStub(self.channels.to_agent(a.node_id))
        try:
            restarted: node_pb2.Allocation = await stub.Restart(
                controller_pb2.AllocationRequest(id=a.id, task=req.task), timeout=RESTART_TIMEOUT)
        except grpc.aio.AioRpcError as e:
            await ctx.abort(e.code(), f"agent on node {a.node_id[:8]}: {e.details()}")
            raise  # not reached: abort raises
        return restarted

    @streaming
    async def AllocationLogs(self, req: controller_pb2.LogsRequest,
                             ctx: Ctx) -> AsyncIterator[controller_pb2.LogChunk]:
        """The task's logs, from the agent that runs it."""
        a = self.state.one_alloc(req.alloc_id)
        fwd = controller_pb2.LogsRequest()
        fwd.CopyFrom(req)
        fwd.alloc_id = a.id
        stub = controller_pb2_grpc.AgentServiceStub(self.channels.to_agent(a.node_id))
        call = stub.Logs(fwd)
        try:
            async for chunk in call:
                yield chunk
        except grpc.aio.AioRpcError as e:
            await ctx.abort(e.code(), f"agent on node {a.node_id[:8]}: {e.details()}")
        finally:
            call.cancel()
