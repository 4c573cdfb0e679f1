"""Jobs: register (a new version when the spec changed), plan, stop, purge, revert, history."""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Mapping

from controller import children
from controller.cluster import Cluster
from controller.evaluator import Evaluator
from controller.planner import event, plan_summary
from controller.scheduler import diff_groups, schedule
from controller.secrets import Secrets
from controller.state import (
    COMPLETE,
    FAILED,
    LOST,
    PENDING,
    RUN,
    RUNNING,
    TERMINAL,
    ClusterState,
    job_key,
)
from controller.store.base import Changes, JobKey
from orch.errors import ConflictError, NotFoundError, RequestError
from orch.jobspec import check_job
from orch.jobspec.dispatch import dispatch_child, dispatch_problems
from orch.jobspec.model import Job, job_from_proto
from orch.v1 import controller_pb2, job_pb2, node_pb2
from orch.vocab import namespace_of

NS = 1_000_000_000


def _spec_of(job: job_pb2.Job) -> Job:
    """What decides whether two submissions are the same job (not version, time, status)."""
    return dataclasses.replace(job_from_proto(job), version=0, stop=False)


def job_diff(old: job_pb2.Job | None, new: job_pb2.Job) -> controller_pb2.JobDiff:
    """Field by field, group by group: what changes from ``old`` to ``new``."""
    out = controller_pb2.JobDiff(kind="added" if old is None else "none")
    if old is None:
        return out
    a, b = job_from_proto(old), job_from_proto(new)
    for field in ("type", "priority", "datacenters", "region", "meta", "constraints",
                  "affinities", "spreads"):
        if getattr(a, field) != getattr(b, field):
            out.fields.add(path=field, old=str(getattr(a, field)), new=str(getattr(b, field)))
    ga, gb = {g.name: g for g in a.groups}, {g.name: g for g in b.groups}
    for name in list(ga) + [n for n in gb if n not in ga]:
        if name not in gb:
            out.fields.add(path=f"groups[{name}]", old="(group)", new="")
            continue
        for ch in diff_groups(ga.get(name), gb[name]):
            out.fields.add(path=f"groups[{name}].{ch.path}",
                           old="" if ch.old is None else str(ch.old),
                           new="" if ch.new is None else str(ch.new))
    if out.fields:
        out.kind = "edited"
    return out


def published_port_claims(state: ClusterState, pb: job_pb2.Job) -> list[str]:
    """The published ports of ``pb`` that another job already claims, each as a sentence
    naming that job (every node's load balancer listens on a published port for one
    service only)."""
    key = job_key(pb)
    wanted = {s.published_port: (g.name, s.name) for g in pb.groups for s in g.services
              if s.published_port}
    if not wanted:
        return []
    problems = []
    for other_key, versions in sorted(state.jobs.items()):
        if other_key == key or not versions or versions[-1].stop:
            continue
        for g in versions[-1].groups:
            for svc in g.services:
                mine = wanted.get(svc.published_port)
                if mine is not None:
                    problems.append(
                        f"groups[{mine[0]}].services[{mine[1]}]: published port "
                        f"{svc.published_port} is already published by job {other_key[1]!r} "
                        f"in namespace {other_key[0]!r} (group {g.name!r}, service "
                        f"{svc.name!r}); choose another port, or stop that job first")
    return problems


def job_status(allocs: list[node_pb2.Allocation], job: job_pb2.Job) -> job_pb2.JobStatus.ValueType:
    """dead when stopped or every allocation finished; running when one runs; else pending.
    A periodic or parameterized parent that is not stopped is running (it makes children)."""
    if job.stop:
        return job_pb2.JOB_STATUS_DEAD
    if children.is_parent(job):
        return job_pb2.JOB_STATUS_RUNNING
    wanted = [a for a in allocs if a.desired_status == RUN]
    if any(a.client_status == RUNNING for a in wanted):
        return job_pb2.JOB_STATUS_RUNNING
    if wanted and all(a.client_status in TERMINAL for a in wanted):
        return job_pb2.JOB_STATUS_DEAD
    return job_pb2.JOB_STATUS_PENDING


class Jobs:
    def __init__(self, cluster: Cluster, evaluator: Evaluator,
                 clock: Callable[[], float] = time.time, secrets: Secrets | None = None,
                 rng: random.Random | None = None) -> None:
        self.cluster = cluster
        self.state = cluster.state
        self.evaluator = evaluator
        self.clock = clock
        self.secrets = secrets
        self.rng = rng or random.SystemRandom()
        """Draws the suffix of dispatched children's names."""

    def _check_refs(self, key: JobKey, pb: job_pb2.Job) -> None:
        """The job's namespace exists (for a new job) and every secret it reads does."""
        if self.state.job(key) is None:
            self.evaluator.namespaces.require(key[0])
        if self.secrets is None:
            return
        model = job_from_proto(pb)
        missing = sorted({n for g in model.groups for t in g.tasks for n in t.secret_names
                          if self.secrets.get(key[0], n) is None})
        if missing:
            raise NotFoundError(
                f"job {key[1]!r} reads secret(s) {', '.join(map(repr, missing))} that namespace "
                f"{key[0]!r} does not hold (orchctl -n {key[0]} secret put NAME -f FILE)")

    def get(self, key: JobKey) -> job_pb2.Job:
        job = self.state.job(key)
        if job is None:
            raise NotFoundError(f"job {key[1]!r} not found in namespace {key[0]!r}")
        return job

    async def register(self, pb: job_pb2.Job, *, enforce_version: int = 0,
                       reason: str = "job-register", note: str = "") -> tuple[
            job_pb2.Job, bool, controller_pb2.Evaluation]:
        """Store a new version when the spec changed, then evaluate it.

        Returns the current version, whether it is new, and the evaluation."""
        check_job(pb)
        key = job_key(pb)
        now_ns = int(self.clock() * NS)
        async with self.cluster.lock:
            self._check_refs(key, pb)
            cur = self.state.job(key)
            if enforce_version and (cur.version if cur else 0) != enforce_version:
                raise ConflictError(f"job {key[1]!r} is at version {cur.version if cur else 0}, "
                                    f"not {enforce_version}")
            changed = cur is None or cur.stop or _spec_of(cur) != _spec_of(pb)
            claims = published_port_claims(self.state, pb) if changed else []
            if claims:
                raise RequestError("; ".join(claims))
            if changed:
                new = job_pb2.Job()
                new.CopyFrom(pb)
                new.namespace = key[0]
                new.version = cur.version + 1 if cur is not None else 1
                new.submit_time_ns = now_ns
                new.stop = False
                new.stable = False
                new.status = job_pb2.JOB_STATUS_PENDING
                kind = "JobScaled" if reason == "job-scale" else "JobRegistered"
                what = f"job {key[1]} version {new.version}" + (f" ({note})" if note else "")
                changes = Changes(put_jobs=[new], events=[event(
                    "job", kind, key[1], what, now_ns, job=new)])
                if new.HasField("periodic"):
                    # a new version launches the slots after its registration, none before
                    mark = children.launch_key(key)
                    last = max(children.last_slot(self.state, new) if mark in self.state.meta
                               else 0.0, now_ns / NS)
                    changes.meta[mark] = f"{last:.3f}"
                await self.cluster.commit(changes)
                cur = new
        assert cur is not None
        ev = await self.evaluator.evaluate_now(key, reason)
        return cur, changed, ev

    def plan(self, pb: job_pb2.Job) -> controller_pb2.PlanJobResponse:
        """What registering ``pb`` would do, without doing it."""
        check_job(pb)
        claims = published_port_claims(self.state, pb)
        if claims:
            raise RequestError("; ".join(claims))
        key = job_key(pb)
        self._check_refs(key, pb)
        cur = self.state.job(key)
        model = job_from_proto(pb)
        version = cur.version if cur is not None and _spec_of(cur) == _spec_of(pb) and not cur.stop \
            else (cur.version + 1 if cur is not None else 1)
        model = dataclasses.replace(model, version=version, namespace=key[0], stop=False)
        plan = schedule(model, self.state.snapshot, self.clock(), seed=self.state.seed(),
                        config=self.evaluator.scheduler,
                        quota=self.evaluator.namespaces.quota(key[0]))
        return controller_pb2.PlanJobResponse(
            current_version=cur.version if cur is not None else 0,
            diff=job_diff(cur, pb), plan=plan_summary(plan))

    async def stop(self, key: JobKey, *, purge: bool) -> tuple[int, controller_pb2.Evaluation]:
        now_ns = int(self.clock() * NS)
        async with self.cluster.lock:
            cur = self.get(key)
            kids = [job_key(c) for c in children.children_of(self.state, key)]
            if purge:  # a parent's children go with it (their allocations are stopped)
                changes = Changes(purge_jobs=[key, *kids], events=[event(
                    "job", "JobPurged", key[1], f"job {key[1]} purged"
                    + (f" with its {len(kids)} children" if kids else ""), now_ns)])
                if children.launch_key(key) in self.state.meta:
                    changes.delete_meta.append(children.launch_key(key))
                version = cur.version
            else:
                stopped = job_pb2.Job()
                stopped.CopyFrom(cur)
                stopped.stop = True
                stopped.stable = False
                stopped.version = cur.version + 1
                stopped.submit_time_ns = now_ns
                stopped.status = job_pb2.JOB_STATUS_DEAD
                version = stopped.version
                changes = Changes(put_jobs=[stopped], events=[event(
                    "job", "JobStopped", key[1], f"job {key[1]} stopped", now_ns, job=stopped)])
            if not cur.stop or purge:
                await self.cluster.commit(changes)
        if purge:
            for kid in kids:
                self.evaluator.enqueue(kid, "job-stop")
        ev = await self.evaluator.evaluate_now(key, "job-stop")
        return version, ev

    async def dispatch(self, key: JobKey, meta: Mapping[str, str], payload: bytes) -> tuple[
            job_pb2.Job, controller_pb2.Evaluation]:
        """A child of the parameterized job ``key`` with these inputs, registered and
        evaluated; RequestError (nothing changed) when the inputs do not fit the job."""
        now = self.clock()
        async with self.cluster.lock:
            parent = self.get(key)
            if not parent.HasField("parameterized"):
                raise RequestError(f"job {key[1]!r} is not parameterized: only a job with a "
                                   "parameterized block can be dispatched (run it with "
                                   "`orchctl job run`)")
            if parent.stop:
                raise RequestError(f"job {key[1]!r} is stopped; run it again before "
                                   "dispatching it")
            problems = dispatch_problems(key[1], parent.parameterized, meta, payload)
            if problems:
                raise RequestError(f"cannot dispatch job {key[1]!r}: " + "; ".join(problems))
            self.refuse_past_limit(key)
            name = dispatch_child(key[1], now, self.rng.getrandbits(32))
            if self.state.job((key[0], name)) is not None:
                raise ConflictError(f"job {name!r} exists already; dispatch again")
            child = children.make_child(parent, name, int(now * NS), meta=dict(meta),
                                        payload=payload)
            await self.cluster.commit(Changes(put_jobs=[child], events=[event(
                "job", "JobDispatched", name, f"job {key[1]} dispatched as {name}",
                int(now * NS), job=children.shown(child))]))
        ev = await self.evaluator.evaluate_now(job_key(child), "job-dispatch")
        return child, ev

    def refuse_past_limit(self, key: JobKey) -> None:
        """RequestError when ``key`` has as many unfinished children as it may."""
        active = [c for c in children.children_of(self.state, key)
                  if not children.finished(self.state, c)]
        if len(active) >= children.MAX_ACTIVE_CHILDREN:
            raise RequestError(f"job {key[1]!r} has {len(active)} unfinished children, the most "
                               f"it may have ({children.MAX_ACTIVE_CHILDREN}); wait for some to "
                               "finish or stop them")

    async def scale(self, key: JobKey, group: str, count: int, reason: str = "") -> tuple[
            job_pb2.Job, bool, controller_pb2.Evaluation]:
        """A new version with one group's count changed and nothing else."""
        cur = self.get(key)
        if cur.stop:
            raise RequestError(f"job {key[1]!r} is stopped; run it before scaling it")
        if count < 0:
            raise RequestError(f"count must be >= 0, got {count}")
        pb = job_pb2.Job()
        pb.CopyFrom(cur)
        found = [g for g in pb.groups if g.name == group]
        if not found:
            raise NotFoundError(f"job {key[1]!r} has no group {group!r} (it has "
                                f"{', '.join(g.name for g in pb.groups)})")
        found[0].count = count
        note = f"scaled {group} to {count}" + (f": {reason}" if reason else "")
        return await self.register(pb, reason="job-scale", note=note)

    async def revert(self, key: JobKey, version: int) -> tuple[job_pb2.Job, bool,
                                                               controller_pb2.Evaluation]:
        target = self.state.job_version(key, version)
        if target is None:
            self.get(key)
            raise NotFoundError(f"job {key[1]!r} has no version {version}")
        pb = job_pb2.Job()
        pb.CopyFrom(target)
        return await self.register(pb, reason="job-revert")

    def history(self, key: JobKey) -> controller_pb2.JobHistoryResponse:
        self.get(key)
        versions = self.state.jobs.get(key, [])
        out = controller_pb2.JobHistoryResponse()
        prev = None
        for v in versions:
            out.versions.add(version=v.version, submit_time_ns=v.submit_time_ns, stable=v.stable,
                             diff=job_diff(prev, v), job=v)
            prev = v
        out.versions.reverse()
        return out

    def status(self, key: JobKey) -> controller_pb2.JobStatusReply:
        job = self.get(key)
        allocs = self.state.allocs_of_job(key)
        shown = job_pb2.Job()
        shown.CopyFrom(job)
        shown.status = job_status(allocs, job)
        reply = controller_pb2.JobStatusReply(job=shown, allocations=allocs)
        shown.payload = b""
        for child in reversed(children.children_of(self.state, key)):
            mine = self.state.allocs_of_job(job_key(child))
            reply.children.add(
                name=child.name, status=job_status(mine, child), launch_time_ns=child.submit_time_ns,
                running=sum(1 for a in mine if a.desired_status == RUN and a.client_status == RUNNING),
                desired=0 if child.stop else sum(g.count for g in self.state.model(child).groups))
        dep = self.state.latest_deployment(key)
        if dep is not None:
            reply.latest_deployment.CopyFrom(dep)
        last_eval = next((e for e in reversed(self.state.evaluations)
                          if (namespace_of(e.namespace), e.job) == key), None)
        failures = {f.group: f.explanation for f in last_eval.plan.failures} if last_eval else {}
        model = self.state.model(job)
        for g in model.groups:
            mine = [a for a in allocs if a.group == g.name]
            live = [a for a in mine if a.desired_status == RUN]
            s = reply.groups.add(group=g.name, desired=0 if job.stop or model.is_parent else g.count,
                                 placed=len(live))
            for a in live:
                s.running += a.client_status == RUNNING
                s.pending += a.client_status == PENDING
                s.healthy += a.healthy
            for a in mine:
                s.failed += a.client_status == FAILED
                s.complete += a.client_status == COMPLETE
                s.lost += a.client_status == LOST
            s.unplaced_reason = failures.get(g.name, "")
        return reply

    async def promote(self, dep_id: str) -> controller_pb2.Deployment:
        """Promote a deployment's canaries: they take over their index and the rollout goes on."""
        now_ns = int(self.clock() * NS)
        state = self.state
        async with self.cluster.lock:
            found = [d for i, d in state.deployments.items() if i.startswith(dep_id)] if dep_id else []
            if len(found) != 1:
                raise NotFoundError(f"no deployment {dep_id!r}" if not found
                                    else f"{dep_id!r} matches {len(found)} deployments")
            dep = controller_pb2.Deployment()
            dep.CopyFrom(found[0])
            if dep.status not in ("running", "paused"):
                raise RequestError(f"deployment {dep.id[:8]} is {dep.status}; nothing to promote")
            key = (namespace_of(dep.namespace), dep.job)
            canaries = [a for a in state.allocs_of_job(key)
                        if a.canary and a.deployment_id == dep.id and a.desired_status == RUN]
            unhealthy = [a.name for a in canaries if not a.healthy]
            if unhealthy:
                raise RequestError(f"canaries not healthy yet: {', '.join(unhealthy)}")
            changes = Changes()
            for g in dep.groups:
                g.promoted = True
            dep.status, dep.description, dep.modify_time_ns = "running", "canaries promoted", now_ns
            changes.put_deployments.append(dep)
            for a in canaries:
                b = node_pb2.Allocation()
                b.CopyFrom(a)
                b.canary = False
                b.modify_time_ns = now_ns
                changes.put_allocs.append(b)
            changes.events.append(event("deployment", "DeploymentPromoted", dep.id,
                                        f"deployment of {dep.job} version {dep.job_version} promoted",
                                        now_ns, deployment=dep))
            await self.cluster.commit(changes)
        self.evaluator.enqueue(key, "deployment-promote")
        return dep
