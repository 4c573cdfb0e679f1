"""Jobs and their deployments: register, plan, status, list, stop, history, revert, scale,
promote; dispatch a parameterized job, force a periodic one. Writes go through the leader's
single write path and wait for their evaluation, so that ``orchctl job run`` can say what
happened."""

from __future__ import annotations

from controller import children
from controller.api.authz import Authorizer
from controller.api.rpc import Ctx, Endpoint, job_ref, unary
from controller.jobs import Jobs, job_status
from controller.leadership import LeaderStatus
from controller.periodic import Launcher
from controller.scaling import Autoscaler
from controller.state import RUN, RUNNING, job_key
from orch.v1 import controller_pb2, job_pb2

NS = 1_000_000_000


class JobsEndpoint(Endpoint):
    def __init__(self, authz: Authorizer, leader: LeaderStatus, jobs: Jobs,
                 autoscaler: Autoscaler, launcher: Launcher) -> None:
        super().__init__(authz)
        self.leader = leader
        self.jobs = jobs
        self.state = jobs.state
        self.autoscaler = autoscaler
        self.launcher = launcher

    def _registered(self, job: job_pb2.Job, changed: bool,
                    ev: controller_pb2.Evaluation) -> controller_pb2.RegisterJobResponse:
        dep = self.state.latest_deployment(job_key(job))
        return controller_pb2.RegisterJobResponse(
            version=job.version, changed=changed, evaluation_id=ev.id, plan=ev.plan,
            deployment_id=dep.id if dep is not None and dep.job_version == job.version else "")

    @unary
    async def RegisterJob(self, req: controller_pb2.RegisterJobRequest,
                          ctx: Ctx) -> controller_pb2.RegisterJobResponse:
        self.leader.require()
        job, changed, ev = await self.jobs.register(req.job, enforce_version=req.enforce_version)
        return self._registered(job, changed, ev)

    @unary
    async def PlanJob(self, req: controller_pb2.PlanJobRequest,
                      ctx: Ctx) -> controller_pb2.PlanJobResponse:
        return self.jobs.plan(req.job)

    @unary
    async def GetJob(self, req: controller_pb2.GetJobRequest,
                     ctx: Ctx) -> controller_pb2.JobStatusReply:
        key = job_ref(req.namespace, req.name)
        reply = self.jobs.status(key)
        for g in reply.groups:
            g.autoscaler = self.autoscaler.verdict(key, g.group)
        reply.next_launch_ns = (self.launcher.next_launch(reply.job) or 0) * NS
        return reply

    @unary
    async def ListJobs(self, req: controller_pb2.ListJobsRequest,
                       ctx: Ctx) -> controller_pb2.ListJobsResponse:
        out = controller_pb2.ListJobsResponse()
        kids: dict[tuple[str, str], int] = {}
        for key, versions in self.state.jobs.items():
            if versions and versions[-1].parent:
                kids[key[0], versions[-1].parent] = kids.get((key[0], versions[-1].parent), 0) + 1
        for key, versions in sorted(self.state.jobs.items()):
            if (req.namespace and key[0] != req.namespace) or not key[1].startswith(req.prefix):
                continue
            job = versions[-1]
            allocs = self.state.allocs_of_job(key)
            parent = children.is_parent(job)
            out.jobs.add(
                name=job.name, namespace=key[0], type=job.type or job_pb2.JOB_TYPE_SERVICE,
                priority=job.priority or 50, status=job_status(allocs, job), version=job.version,
                submit_time_ns=job.submit_time_ns,
                running=sum(1 for a in allocs if a.desired_status == RUN
                            and a.client_status == RUNNING),
                desired=0 if job.stop or parent else sum(
                    g.count for g in self.state.model(job).groups),
                kind=children.kind_of(job), parent=job.parent, children=kids.get(key, 0),
                next_launch_ns=(self.launcher.next_launch(job) or 0) * NS)
        return out

    @unary
    async def DispatchJob(self, req: controller_pb2.DispatchJobRequest,
                          ctx: Ctx) -> controller_pb2.DispatchJobResponse:
        self.leader.require()
        child, ev = await self.jobs.dispatch(job_ref(req.namespace, req.name), dict(req.meta),
                                             req.payload)
        return controller_pb2.DispatchJobResponse(job=child.name, evaluation_id=ev.id,
                                                  plan=ev.plan)

    @unary
    async def ForcePeriodicJob(self, req: controller_pb2.ForcePeriodicJobRequest,
                               ctx: Ctx) -> controller_pb2.DispatchJobResponse:
        self.leader.require()
        child = await self.launcher.force(job_ref(req.namespace, req.name))
        ev = await self.jobs.evaluator.evaluate_now(job_key(child), "periodic-force")
        return controller_pb2.DispatchJobResponse(job=child.name, evaluation_id=ev.id,
                                                  plan=ev.plan)

    @unary
    async def StopJob(self, req: controller_pb2.StopJobRequest,
                      ctx: Ctx) -> controller_pb2.StopJobResponse:
        self.leader.require()
        version, ev = await self.jobs.stop(job_ref(req.namespace, req.name), purge=req.purge)
        return controller_pb2.StopJobResponse(version=version, evaluation_id=ev.id)

    @unary
    async def JobHistory(self, req: controller_pb2.JobHistoryRequest,
                         ctx: Ctx) -> controller_pb2.JobHistoryResponse:
        return self.jobs.history(job_ref(req.namespace, req.name))

    @unary
    async def RevertJob(self, req: controller_pb2.RevertJobRequest,
                        ctx: Ctx) -> controller_pb2.RegisterJobResponse:
        self.leader.require()
        job, changed, ev = await self.jobs.revert(job_ref(req.namespace, req.name), req.version)
        return controller_pb2.RegisterJobResponse(version=job.version, changed=changed,
                                                  evaluation_id=ev.id, plan=ev.plan)

    @unary
    async def ScaleJob(self, req: controller_pb2.ScaleJobRequest,
                       ctx: Ctx) -> controller_pb2.RegisterJobResponse:
        self.leader.require()
        job, changed, ev = await self.jobs.scale(job_ref(req.namespace, req.name), req.group,
                                                 req.count, req.reason)
        return self._registered(job, changed, ev)

    @unary
    async def PromoteDeployment(self, req: controller_pb2.PromoteDeploymentRequest,
                                ctx: Ctx) -> controller_pb2.Deployment:
        self.leader.require()
        return await self.jobs.promote(req.deployment_id)
