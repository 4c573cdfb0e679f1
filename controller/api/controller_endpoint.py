"""ControllerService: what orchctl calls. Reads come from memory; writes go through the
leader's single write path and wait for their evaluation, so that ``job run`` can say
what happened."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from controller.acl import Token
from controller.api.authz import bearer
from controller.api.errors import streaming, unary
from controller.jobs import job_status, promote
from controller.state import RUN, RUNNING, TERMINAL, job_key
from controller.store.base import Changes, JobKey
from orch.errors import NotFoundError
from orch.v1 import controller_pb2, controller_pb2_grpc, job_pb2, node_pb2
from orch.vocab import namespace_of

if TYPE_CHECKING:
    from controller.server import Controller

Ctx = grpc.aio.ServicerContext[Any, Any]
log = logging.getLogger("api")


def _key(namespace: str, name: str) -> JobKey:
    if not name:
        raise ValueError("a job name is needed")
    return (namespace_of(namespace), name)


def _token_pb(t: Token) -> controller_pb2.AclToken:
    return controller_pb2.AclToken(accessor=t.accessor, name=t.name, policies=list(t.policies),
                                   create_time_ns=t.create_time_ns, revoked=t.revoked)


class ControllerEndpoint(controller_pb2_grpc.ControllerServiceServicer):
    def __init__(self, ctl: Controller) -> None:
        self.ctl = ctl
        self.state = ctl.cluster.state

    async def authorize(self, ctx: Ctx, method: str, request: object) -> None:
        """mTLS role, rate limit and access token (see controller.api.authz)."""
        await self.ctl.authz.check(ctx, method, request)

    # --- jobs ----------------------------------------------------------------------------------

    @unary
    async def RegisterJob(self, req: controller_pb2.RegisterJobRequest,
                          ctx: Ctx) -> controller_pb2.RegisterJobResponse:
        self.ctl.require_leader()
        job, changed, ev = await self.ctl.jobs.register(req.job, enforce_version=req.enforce_version)
        dep = self.state.latest_deployment(job_key(job))
        return controller_pb2.RegisterJobResponse(
            version=job.version, changed=changed, evaluation_id=ev.id, plan=ev.plan,
            deployment_id=dep.id if dep is not None and dep.job_version == job.version else "")

    @unary
    async def PlanJob(self, req: controller_pb2.PlanJobRequest,
                      ctx: Ctx) -> controller_pb2.PlanJobResponse:
        return self.ctl.jobs.plan(req.job)

    @unary
    async def GetJob(self, req: controller_pb2.GetJobRequest,
                     ctx: Ctx) -> controller_pb2.JobStatusReply:
        key = _key(req.namespace, req.name)
        reply = self.ctl.jobs.status(key)
        for g in reply.groups:
            g.autoscaler = self.ctl.autoscaler.verdict(key, g.group)
        return reply

    @unary
    async def ListJobs(self, req: controller_pb2.ListJobsRequest,
                       ctx: Ctx) -> controller_pb2.ListJobsResponse:
        out = controller_pb2.ListJobsResponse()
        for key, versions in sorted(self.state.jobs.items()):
            if (req.namespace and key[0] != req.namespace) or not key[1].startswith(req.prefix):
                continue
            job = versions[-1]
            allocs = self.state.allocs_of_job(key)
            out.jobs.add(
                name=job.name, namespace=key[0], type=job.type or job_pb2.JOB_TYPE_SERVICE,
                priority=job.priority or 50, status=job_status(allocs, job), version=job.version,
                submit_time_ns=job.submit_time_ns,
                running=sum(1 for a in allocs if a.desired_status == RUN
                            and a.client_status == RUNNING),
                desired=0 if job.stop else sum(g.count for g in self.state.model(job).groups))
        return out

    @unary
    async def StopJob(self, req: controller_pb2.StopJobRequest,
                      ctx: Ctx) -> controller_pb2.StopJobResponse:
        self.ctl.require_leader()
        version, ev = await self.ctl.jobs.stop(_key(req.namespace, req.name), purge=req.purge)
        return controller_pb2.StopJobResponse(version=version, evaluation_id=ev.id)

    @unary
    async def JobHistory(self, req: controller_pb2.JobHistoryRequest,
                         ctx: Ctx) -> controller_pb2.JobHistoryResponse:
        return self.ctl.jobs.history(_key(req.namespace, req.name))

    @unary
    async def RevertJob(self, req: controller_pb2.RevertJobRequest,
                        ctx: Ctx) -> controller_pb2.RegisterJobResponse:
        self.ctl.require_leader()
        job, changed, ev = await self.ctl.jobs.revert(_key(req.namespace, req.name), req.version)
        return controller_pb2.RegisterJobResponse(version=job.version, changed=changed,
                                                  evaluation_id=ev.id, plan=ev.plan)

    @unary
    async def ScaleJob(self, req: controller_pb2.ScaleJobRequest,
                       ctx: Ctx) -> controller_pb2.RegisterJobResponse:
        self.ctl.require_leader()
        job, changed, ev = await self.ctl.jobs.scale(_key(req.namespace, req.name), req.group,
                                                     req.count, req.reason)
        dep = self.state.latest_deployment(job_key(job))
        return controller_pb2.RegisterJobResponse(
            version=job.version, changed=changed, evaluation_id=ev.id, plan=ev.plan,
            deployment_id=dep.id if dep is not None and dep.job_version == job.version else "")

    @unary
    async def PromoteDeployment(self, req: controller_pb2.PromoteDeploymentRequest,
                                ctx: Ctx) -> controller_pb2.Deployment:
        self.ctl.require_leader()
        return await promote(self.ctl.cluster, self.ctl.evaluator, req.deployment_id)

    # --- allocations ---------------------------------------------------------------------------

    @unary
    async def ListAllocations(self, req: controller_pb2.ListAllocationsRequest,
                              ctx: Ctx) -> controller_pb2.ListAllocationsResponse:
        if req.job:
            allocs = self.state.allocs_of_job(_key(req.namespace, req.job))
        elif req.node_id:
            allocs = self.state.allocs_on_node(self.ctl.nodes.find(req.node_id).id)
        else:
            allocs = sorted(self.state.allocs.values(), key=lambda a: (a.job, a.group, a.index))
        if not req.include_stopped:
            allocs = [a for a in allocs if a.desired_status == RUN or a.client_status not in TERMINAL]
        return controller_pb2.ListAllocationsResponse(allocations=allocs)

    def _alloc(self, ref: str) -> node_pb2.Allocation:
        found = self.state.find_alloc(ref)
        if not found:
            raise NotFoundError(f"no allocation {ref!r}")
        if len(found) > 1:
            raise ValueError(f"{ref!r} matches {len(found)} allocations: "
                             + ", ".join(a.id[:8] for a in found[:5]) + "; give more of the id")
        return found[0]

    @unary
    async def GetAllocation(self, req: controller_pb2.GetAllocationRequest,
                            ctx: Ctx) -> node_pb2.Allocation:
        return self._alloc(req.id)

    @unary
    async def StopAllocation(self, req: controller_pb2.AllocationRequest,
                             ctx: Ctx) -> node_pb2.Allocation:
        """Stop an allocation; the scheduler places a replacement, as ``nomad alloc stop``."""
        self.ctl.require_leader()
        async with self.ctl.cluster.lock:
            a = node_pb2.Allocation()
            a.CopyFrom(self._alloc(req.id))
            if a.desired_status != RUN:
                raise ValueError(f"allocation {a.id[:8]} is already stopped")
            a.desired_status = node_pb2.DESIRED_STATUS_STOP
            a.description = "stopped by an operator"
            await self.ctl.cluster.commit(Changes(put_allocs=[a]))
        await self.ctl.evaluator.evaluate_now(job_key(a), "alloc-stop")
        return a

    @unary
    async def RestartAllocation(self, req: controller_pb2.AllocationRequest,
                                ctx: Ctx) -> node_pb2.Allocation:
        """Restart an allocation's tasks where they run (the agent does it)."""
        a = self._alloc(req.id)
        stub = controller_pb2_grpc.AgentServiceStub(await self.ctl.agent_channel(a.node_id))
        restarted: node_pb2.Allocation = await stub.Restart(
            controller_pb2.AllocationRequest(id=a.id, task=req.task), timeout=30)
        return restarted

    @streaming
    async def AllocationLogs(self, req: controller_pb2.LogsRequest,
                             ctx: Ctx) -> AsyncIterator[controller_pb2.LogChunk]:
        """The task's logs, from the agent that runs it."""
        a = self._alloc(req.alloc_id)
        fwd = controller_pb2.LogsRequest()
        fwd.CopyFrom(req)
        fwd.alloc_id = a.id
        stub = controller_pb2_grpc.AgentServiceStub(await self.ctl.agent_channel(a.node_id))
        call = stub.Logs(fwd)
        try:
            async for chunk in call:
                yield chunk
        except grpc.aio.AioRpcError as e:
            await ctx.abort(e.code(), f"agent on node {a.node_id[:8]}: {e.details()}")
        finally:
            call.cancel()

    # --- nodes ---------------------------------------------------------------------------------

    @unary
    async def ListNodes(self, req: controller_pb2.ListNodesRequest,
                        ctx: Ctx) -> controller_pb2.ListNodesResponse:
        return controller_pb2.ListNodesResponse(
            nodes=sorted(self.state.nodes.values(), key=lambda n: n.name))

    @unary
    async def GetNode(self, req: controller_pb2.GetNodeRequest,
                      ctx: Ctx) -> controller_pb2.NodeStatusReply:
        node = self.ctl.nodes.find(req.id)
        allocs = self.state.allocs_on_node(node.id)
        used = job_pb2.Resources()
        for a in allocs:
            if a.desired_status == RUN and a.client_status not in TERMINAL:
                used.cpu_millicores += a.resources.cpu_millicores
                used.memory_mb += a.resources.memory_mb
        member = self.ctl.member_status(node.name)
        return controller_pb2.NodeStatusReply(node=node, allocations=allocs, allocated=used,
                                              member_status=member)

    @unary
    async def DrainNode(self, req: controller_pb2.DrainNodeRequest, ctx: Ctx) -> node_pb2.Node:
        self.ctl.require_leader()
        return await self.ctl.nodes.drain(req.id, enable=req.enable,
                                          deadline=float(req.deadline_seconds),
                                          ignore_system_jobs=req.ignore_system_jobs)

    @unary
    async def SetNodeEligibility(self, req: controller_pb2.SetNodeEligibilityRequest,
                                 ctx: Ctx) -> node_pb2.Node:
        self.ctl.require_leader()
        return await self.ctl.nodes.set_eligibility(req.id, req.eligible)

    # --- the cluster ---------------------------------------------------------------------------

    @unary
    async def ListMembers(self, req: controller_pb2.ListMembersRequest,
                          ctx: Ctx) -> controller_pb2.ListMembersResponse:
        return controller_pb2.ListMembersResponse(members=self.ctl.members(),
                                                  refused=self.ctl.refused_peers())

    @unary
    async def ListServices(self, req: controller_pb2.ListServicesRequest,
                           ctx: Ctx) -> controller_pb2.ListServicesResponse:
        return controller_pb2.ListServicesResponse(services=self.ctl.services(req.name))

    @unary
    async def GetLeader(self, req: controller_pb2.GetLeaderRequest,
                        ctx: Ctx) -> controller_pb2.LeaderInfo:
        return self.ctl.leader_info()

    @streaming
    async def Watch(self, req: controller_pb2.WatchRequest,
                    ctx: Ctx) -> AsyncIterator[controller_pb2.Event]:
        """Committed events (after ``since_index`` when given), then new ones as they come."""
        node_ids: set[str] = set()
        if req.node:
            node_ids = {n.id for n in self.state.find_node(req.node)} or {req.node}

        def wanted(ev: controller_pb2.Event) -> bool:
            return ((not req.topics or ev.topic in req.topics)
                    and (not req.types or ev.type in req.types)
                    and (not req.job or ev.key == req.job or ev.job.name == req.job
                         or ev.allocation.job == req.job or ev.deployment.job == req.job)
                    and (not node_ids or ev.node.id in node_ids
                         or ev.allocation.node_id in node_ids))
        bus = self.ctl.cluster.events
        async with bus.subscribe() as q:
            last = req.since_index
            if req.since_index:
                replay = await self.ctl.cluster.store.events_since(req.since_index, 10_000)
            else:
                replay = list(bus.recent)[-req.tail:] if req.tail > 0 else []
            for ev in replay:
                last = max(last, ev.index)
                if wanted(ev):
                    yield ev
            if not req.follow:
                return
            while True:
                item = await q.get()
                if item is None:
                    await ctx.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    "this watcher fell too far behind; watch again with "
                                    f"--since {last}")
                    return
                if item.index <= last:
                    continue
                last = item.index
                if wanted(item):
                    yield item

    # --- access tokens -------------------------------------------------------------------------

    @unary
    async def BootstrapAcl(self, req: controller_pb2.BootstrapAclRequest,
                           ctx: Ctx) -> controller_pb2.AclTokenSecret:
        self.ctl.require_leader()
        async with self.ctl.cluster.lock:
            token, secret, changes = self.ctl.acl.bootstrap()
            await self.ctl.cluster.commit(changes)
        log.warning("ACL bootstrapped", extra={"accessor": token.accessor[:8], "peer": ctx.peer()})
        return controller_pb2.AclTokenSecret(token=_token_pb(token), secret=secret)

    @unary
    async def CreateToken(self, req: controller_pb2.CreateTokenRequest,
                          ctx: Ctx) -> controller_pb2.AclTokenSecret:
        self.ctl.require_leader()
        token, secret, changes = self.ctl.acl.create(req.name, list(req.policies))
        await self.ctl.cluster.write(changes)
        log.info("token created", extra={"accessor": token.accessor[:8], "token": token.name,
                                         "policies": ",".join(token.policies)})
        return controller_pb2.AclTokenSecret(token=_token_pb(token), secret=secret)

    @unary
    async def ListTokens(self, req: controller_pb2.ListTokensRequest,
                         ctx: Ctx) -> controller_pb2.ListTokensResponse:
        tokens = sorted(self.ctl.acl.tokens.values(), key=lambda t: (t.create_time_ns, t.accessor))
        return controller_pb2.ListTokensResponse(tokens=[_token_pb(t) for t in tokens])

    @unary
    async def RevokeToken(self, req: controller_pb2.RevokeTokenRequest,
                          ctx: Ctx) -> controller_pb2.AclToken:
        self.ctl.require_leader()
        async with self.ctl.cluster.lock:
            token, changes = self.ctl.acl.revoke(req.accessor)
            await self.ctl.cluster.commit(changes)
        log.info("token revoked", extra={"accessor": token.accessor[:8], "token": token.name})
        return _token_pb(token)

    @unary
    async def SelfToken(self, req: controller_pb2.SelfTokenRequest,
                        ctx: Ctx) -> controller_pb2.AclToken:
        token = self.ctl.acl.resolve(bearer(ctx)) if bearer(ctx) else None
        if token is None:
            raise NotFoundError("no token was sent, or it is unknown or revoked")
        return _token_pb(token)

    # --- the gossip keyring --------------------------------------------------------------------

    @unary
    async def FireEvent(self, req: controller_pb2.FireEventRequest,
                        ctx: Ctx) -> controller_pb2.FireEventResponse:
        """Gossip a user event to every member, from this controller."""
        return self.ctl.fire_event(req)

    async def Keyring(self, req: controller_pb2.KeyringRequest,
                      ctx: Ctx) -> controller_pb2.KeyringResponse:
        """Apply a keyring operation on every controller and agent (Serf's ``keys``)."""
        return await self.ctl.keyring(req, bearer(ctx))
