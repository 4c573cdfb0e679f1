"""orchctl job run | plan | status | stop | history | revert | scale | promote | logs |
dispatch | periodic force"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import time
from pathlib import Path

from orch.errors import JobSpecError
from orch.jobspec import load_job_file
from orch.jobspec.dispatch import MAX_PAYLOAD
from orch.jobspec.durations import parse_duration
from orch.v1 import controller_pb2, job_pb2, node_pb2
from orch.vocab import CLIENT_STATUS, DESIRED_STATUS, JOB_STATUS, JOB_TYPE, namespace_of
from orchctl import joblogs
from orchctl.client import CHANGES, FAILED, OK, UNPLACED, USAGE, CliError, fail
from orchctl.commands import Ctx
from orchctl.output import ago, block, out, short, table, to_json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    job = sub.add_parser("job", help="run, plan, inspect and stop jobs")
    verbs = job.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = verbs.add_parser("run", help="submit a job file and follow its deployment")
    p.add_argument("file")
    p.add_argument("--detach", action="store_true", help="return once the job is scheduled")
    p.add_argument("--check-index", type=int, default=0,
                   help="only if the job is at this version (0: any)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to follow the rollout")
    p.set_defaults(fn=run)
    p = verbs.add_parser("plan", help="what running a job file would change (dry run); exit 0: "
                         "no change, 4: changes, 3: could not place everything")
    p.add_argument("file")
    p.set_defaults(fn=plan)
    p = verbs.add_parser("status", help="one job in detail, or every job")
    p.add_argument("name", nargs="?")
    p.add_argument("-A", "--all-namespaces", action="store_true",
                   help="list the jobs of every namespace")
    p.set_defaults(fn=status)
    p = verbs.add_parser("stop", help="stop a job (its allocations stop)")
    p.add_argument("name")
    p.add_argument("--purge", action="store_true", help="also forget the job and its history")
    p.set_defaults(fn=stop)
    p = verbs.add_parser("history", help="the job's versions and what changed in each")
    p.add_argument("name")
    p.add_argument("-p", "--full", action="store_true", help="show every field that changed")
    p.set_defaults(fn=history)
    p = verbs.add_parser("revert", help="run an earlier version again (as a new version)")
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.set_defaults(fn=revert)
    p = verbs.add_parser("scale", help="change one group's count (a new version, nothing else)")
    p.add_argument("name")
    p.add_argument("group")
    p.add_argument("count", type=int)
    p.add_argument("--reason", default="", help="recorded with the new version")
    p.add_argument("--detach", action="store_true", help="return once the job is scheduled")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to follow the rollout")
    p.set_defaults(fn=scale)
    p = verbs.add_parser("promote", help="promote the canaries of the job's deployment")
    p.add_argument("name")
    p.set_defaults(fn=promote)
    p = verbs.add_parser("dispatch", help="run a parameterized job with inputs (a child job)")
    p.add_argument("name")
    # the rest is read by _dispatch_args: argparse does not take a positional after options
    p.add_argument("rest", nargs=argparse.REMAINDER, metavar="[--meta KEY=VALUE ...] [PAYLOAD|-]",
                   help=f"meta values (ORCH_META_<KEY> in the tasks' environment; repeatable) "
                        f"and a file whose content the tasks find in local/payload, or - for "
                        f"stdin (at most {MAX_PAYLOAD // 1024} KiB)")
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                   help="a meta value; repeatable")
    p.set_defaults(fn=dispatch)
    p = verbs.add_parser("periodic", help="periodic jobs: force a launch now")
    pverbs = p.add_subparsers(dest="periodic_verb", required=True, metavar="VERB")
    p = pverbs.add_parser("force", help="launch a child of a periodic job now, out of schedule")
    p.add_argument("name")
    p.set_defaults(fn=periodic_force)
    _register_logs(verbs)


def _register_logs(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = verbs.add_parser("logs", help="every allocation's output, each line prefixed with its "
                                      "allocation and task",
                         description="Every allocation's output, line by line, each prefixed "
                                     "with its allocation and task; with -f, allocations that "
                                     "start while it runs join in.")
    p.add_argument("name")
    p.add_argument("--group", default="", help="only this group's allocations")
    p.add_argument("--task", default="", help="only this task")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep reading, and follow allocations that start")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--since", default="", metavar="WHEN",
                      help="only what was written in the last WHEN (30s, 10m, 2h), or since "
                           "the time WHEN (2024-05-01T10:00:00Z)")
    when.add_argument("--tail", type=int, default=0, metavar="N",
                      help="start N lines from the end of each stream")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--stderr", action="store_true", help="standard error instead of output")
    which.add_argument("--all", action="store_true",
                       help="standard output and error (each to its own stream)")
    p.set_defaults(fn=logs)


def since(text: str, now_ns: int | None = None) -> int:
    """``--since``: a duration back from now (``10m``), or a time (RFC 3339, ``Z`` or an
    offset; without one, local time), as unix nanoseconds."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    try:
        return now_ns - parse_duration(text)
    except ValueError as e:
        why = str(e)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"--since: {why}; or a time such as 2024-05-01T10:00:00Z", USAGE) \
            from None
    return int(when.timestamp() * 1e9) if when.tzinfo is None else \
        int((when - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)).total_seconds() * 1e9)


async def logs(ctx: Ctx, args: argparse.Namespace) -> int:
    since_ns = since(args.since) if args.since else 0
    if args.tail < 0:
        raise CliError("--tail must be >= 0", USAGE)
    opts = joblogs.Options(job=args.name, namespace=ctx.namespace,
                           group=args.group, task=args.task, follow=args.follow,
                           since_ns=since_ns, tail=args.tail,
                           streams=(False, True) if args.all else (args.stderr,))
    reader = joblogs.JobLogs(ctx.stub, opts, joblogs.Printer(json=ctx.json),
                             lambda e: fail(e, ctx.address))
    try:
        await reader.run()
    finally:
        await reader.close()
    return OK


def _load(ctx: Ctx, path: str) -> job_pb2.Job:
    """The job in a file, in the namespace the file or the command names."""
    try:
        job = load_job_file(path)
    except JobSpecError as e:
        raise CliError(str(e), FAILED) from None
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror}", FAILED) from None
    job.namespace = ctx.job_namespace(job.namespace)
    return job


def _show_plan(p: controller_pb2.PlanSummary) -> None:
    rows = [(c.kind, c.alloc_name, c.node, c.reason) for c in p.changes]
    if rows:
        out(table(("Change", "Allocation", "Node", "Why"), rows))
    for f in p.failures:
        out(f"! {f.explanation}")
    if not rows and not p.failures:
        out("no changes: the job runs as specified")


async def run(ctx: Ctx, args: argparse.Namespace) -> int:
    job = _load(ctx, args.file)
    resp = await ctx.call(ctx.stub.RegisterJob(controller_pb2.RegisterJobRequest(
        job=job, enforce_version=args.check_index)))
    if ctx.json and args.detach:
        out(to_json(resp))
        return UNPLACED if resp.plan.failures else OK
    if not ctx.json:
        what = f"version {resp.version}" + ("" if resp.changed else " (unchanged)")
        out(f"==> job {job.name!r} registered: {what}, evaluation {short(resp.evaluation_id)}")
        _show_plan(resp.plan)
    if resp.plan.failures:
        if ctx.json:
            out(to_json(resp))
        return UNPLACED
    if job.HasField("periodic") or job.HasField("parameterized"):
        if ctx.json:
            out(to_json(resp))
        else:  # a parent is never placed: there is nothing to follow
            how = "launches a child at each slot of its schedule" if job.HasField("periodic") \
                else f"runs when dispatched: orchctl job dispatch {job.name}"
            out(f"==> job {job.name!r} {how}; see: orchctl job status {job.name}")
        return OK
    if args.detach:
        return OK
    code = await _follow(ctx, job.namespace, job.name, resp, args.timeout)
    if ctx.json:
        status = await ctx.call(ctx.stub.GetJob(controller_pb2.GetJobRequest(
            name=job.name, namespace=job.namespace)))
        out(to_json({"registration": resp, "status": status}))
    return code


async def _follow(ctx: Ctx, namespace: str, name: str, resp: controller_pb2.RegisterJobResponse,
                  within: float) -> int:
    """Show the rollout until it succeeds or fails (or, without a deployment, until every
    allocation runs)."""
    deadline = time.monotonic() + within
    last = ""
    while time.monotonic() < deadline:
        st = await ctx.call(ctx.stub.GetJob(controller_pb2.GetJobRequest(name=name,
                                                                          namespace=namespace)))
        dep = st.latest_deployment if st.HasField("latest_deployment") else None
        if dep is not None and dep.job_version == resp.version:
            line = "  ".join(f"{g.group}: {g.healthy}/{g.desired} healthy" for g in dep.groups)
            line = f"deployment {short(dep.id)} {dep.status}: {line}"
            if line != last and not ctx.json:
                out(f"    {time.strftime('%H:%M:%S')}  {line}")
                last = line
            if dep.status == "successful":
                if not ctx.json:
                    out(f"==> deployment {short(dep.id)} successful")
                return OK
            if dep.status in ("failed", "cancelled"):
                if not ctx.json:
                    out(f"==> deployment {short(dep.id)} {dep.status}: {dep.description}")
                return FAILED
            if dep.status == "paused" and not ctx.json:
                out(f"==> {dep.description}")
                return OK
        else:
            live = [a for a in st.allocations if a.desired_status == node_pb2.DESIRED_STATUS_RUN]
            running = sum(1 for a in live if a.client_status in (
                node_pb2.CLIENT_STATUS_RUNNING, node_pb2.CLIENT_STATUS_COMPLETE))
            failed = sum(1 for a in live if a.client_status == node_pb2.CLIENT_STATUS_FAILED)
            line = f"allocations: {running}/{len(live)} running" + (f", {failed} failed" if failed
                                                                    else "")
            if line != last and not ctx.json:
                out(f"    {time.strftime('%H:%M:%S')}  {line}")
                last = line
            if live and running == len(live):
                return OK
            if failed:
                return FAILED
        await asyncio.sleep(0.5)
    if not ctx.json:
        out(f"==> still rolling out after {within:g}s; see: orchctl job status {name}")
    return FAILED


async def plan(ctx: Ctx, args: argparse.Namespace) -> int:
    job = _load(ctx, args.file)
    resp = await ctx.call(ctx.stub.PlanJob(controller_pb2.PlanJobRequest(job=job)))
    if ctx.json:
        out(to_json(resp))
    else:
        head = "new job" if not resp.current_version else f"current version {resp.current_version}"
        out(f"+/- job {job.name!r} ({head})")
        for f in resp.diff.fields:
            old, new = f.old or "(none)", f.new or "(none)"
            out(f"    {f.path}: {old} => {new}")
        out("")
        _show_plan(resp.plan)
    if resp.plan.failures:
        return UNPLACED
    return CHANGES if resp.plan.changes_anything else OK


async def status(ctx: Ctx, args: argparse.Namespace) -> int:
    if not args.name:
        resp = await ctx.call(ctx.stub.ListJobs(controller_pb2.ListJobsRequest(
            namespace="" if args.all_namespaces else ctx.namespace)))
        if ctx.json:
            out(to_json(list(resp.jobs)))
            return OK
        every = args.all_namespaces
        out(table((*(("Namespace",) if every else ()), "Name", "Type", "Priority", "Status",
                   "Version", "Running", "Submitted", "Next launch"),
                  [(*((namespace_of(j.namespace),) if every else ()), j.name,
                    JOB_TYPE.word(j.type) + (f"/{j.kind}" if j.kind else ""), j.priority,
                    JOB_STATUS.word(j.status), j.version, f"{j.running}/{j.desired}",
                    ago(j.submit_time_ns), _next(j.next_launch_ns)) for j in resp.jobs]))
        return OK
    st = await ctx.call(ctx.stub.GetJob(controller_pb2.GetJobRequest(
        name=args.name, namespace=ctx.namespace)))
    if ctx.json:
        out(to_json(st))
        return OK
    j = st.job
    kind = "periodic" if j.HasField("periodic") else (
        "parameterized" if j.HasField("parameterized") else "")
    head: list[tuple[str, object]] = [
        ("Name", j.name), ("Namespace", namespace_of(j.namespace)),
        ("Type", JOB_TYPE.word(j.type) + (f"/{kind}" if kind else "")),
        ("Priority", j.priority or 50), ("Status", JOB_STATUS.word(j.status)),
        ("Version", j.version), ("Stable", j.stable), ("Submitted", ago(j.submit_time_ns))]
    if j.parent:
        head.append(("Parent", j.parent))
    if j.HasField("periodic"):
        head += [("Cron", j.periodic.cron), ("Time zone", j.periodic.time_zone or "UTC"),
                 ("Prohibit overlap", j.periodic.prohibit_overlap),
                 ("Next launch", _next(st.next_launch_ns))]
    if j.HasField("parameterized"):
        pz = j.parameterized
        head += [("Meta required", ", ".join(pz.meta_required)),
                 ("Meta optional", ", ".join(pz.meta_optional)),
                 ("Payload", pz.payload or "optional")]
    out(block(head))
    if kind:
        out("\nChildren")
        out(table(("ID", "Status", "Running", "Launched"),
                  [(c.name, JOB_STATUS.word(c.status), f"{c.running}/{c.desired}",
                    ago(c.launch_time_ns)) for c in st.children]))
        return OK
    out("\nSummary")
    out(table(("Group", "Desired", "Placed", "Running", "Healthy", "Pending", "Failed", "Complete",
               "Lost"), [(g.group, g.desired, g.placed, g.running, g.healthy, g.pending, g.failed,
                          g.complete, g.lost) for g in st.groups]))
    for g in st.groups:
        if g.unplaced_reason:
            out(f"! {g.unplaced_reason}")
        if g.autoscaler:
            out(f"  autoscaler ({g.group}): {g.autoscaler}")
    if st.HasField("latest_deployment"):
        d = st.latest_deployment
        out("\nLatest deployment")
        out(block([("ID", short(d.id)), ("Version", d.job_version), ("Status", d.status),
                   ("Description", d.description)]))
        out(table(("Group", "Desired", "Canaries", "Promoted", "Placed", "Healthy", "Unhealthy"),
                  [(g.group, g.desired, g.desired_canaries, g.promoted, g.placed, g.healthy,
                    g.unhealthy) for g in d.groups]))
    out("\nAllocations")
    rows = [(short(a.id), a.node_id[:8], a.group, a.job_version,
             DESIRED_STATUS.word(a.desired_status),
             CLIENT_STATUS.word(a.client_status),
             a.healthy, ago(a.create_time_ns)) for a in st.allocations]
    out(table(("ID", "Node", "Group", "Version", "Desired", "Status", "Healthy", "Created"), rows))
    return OK


async def stop(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = await ctx.call(ctx.stub.StopJob(controller_pb2.StopJobRequest(
        name=args.name, namespace=ctx.namespace, purge=args.purge)))
    if ctx.json:
        out(to_json(resp))
    else:
        out(f"==> job {args.name!r} {'purged' if args.purge else 'stopped'} "
            f"(version {resp.version}, evaluation {short(resp.evaluation_id)})")
    return OK


async def history(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = await ctx.call(ctx.stub.JobHistory(controller_pb2.JobHistoryRequest(
        name=args.name, namespace=ctx.namespace)))
    if ctx.json:
        out(to_json(list(resp.versions)))
        return OK
    for v in resp.versions:
        changes = [f for f in v.diff.fields]
        summary = {"added": "first version", "none": "no change"}.get(v.diff.kind,
                                                                     f"{len(changes)} changes")
        state = "stopped" if v.job.stop else ("stable" if v.stable else "")
        out(f"Version {v.version}  {ago(v.submit_time_ns)}  {summary}  {state}".rstrip())
        for f in changes if args.full else changes[:5]:
            out(f"    {f.path}: {f.old or '(none)'} => {f.new or '(none)'}")
        if not args.full and len(changes) > 5:
            out(f"    ... {len(changes) - 5} more (use -p)")
    return OK


async def revert(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = await ctx.call(ctx.stub.RevertJob(controller_pb2.RevertJobRequest(
        name=args.name, namespace=ctx.namespace, version=args.version)))
    if ctx.json:
        out(to_json(resp))
    else:
        out(f"==> job {args.name!r} reverted to version {args.version}: now version "
            f"{resp.version}")
        _show_plan(resp.plan)
    return UNPLACED if resp.plan.failures else OK


async def scale(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = await ctx.call(ctx.stub.ScaleJob(controller_pb2.ScaleJobRequest(
        name=args.name, namespace=ctx.namespace, group=args.group, count=args.count,
        reason=args.reason)))
    if not ctx.json:
        out(f"==> job {args.name!r} group {args.group!r} scaled to {args.count}: version "
            f"{resp.version}")
        _show_plan(resp.plan)
    if resp.plan.failures:
        if ctx.json:
            out(to_json(resp))
        return UNPLACED
    if args.detach:
        if ctx.json:
            out(to_json(resp))
        return OK
    code = await _follow(ctx, ctx.namespace, args.name, resp, args.timeout)
    if ctx.json:
        out(to_json(resp))
    return code


async def promote(ctx: Ctx, args: argparse.Namespace) -> int:
    st = await ctx.call(ctx.stub.GetJob(controller_pb2.GetJobRequest(
        name=args.name, namespace=ctx.namespace)))
    if not st.HasField("latest_deployment"):
        raise CliError(f"job {args.name!r} has no deployment to promote")
    dep = await ctx.call(ctx.stub.PromoteDeployment(controller_pb2.PromoteDeploymentRequest(
        deployment_id=st.latest_deployment.id)))
    if ctx.json:
        out(to_json(dep))
    else:
        out(f"==> deployment {short(dep.id)} promoted")
    return OK


def _next(ns: int) -> str:
    """``in 42s (2024-05-01 03:00:00 UTC)``; ``-`` when there is none."""
    if not ns:
        return "-"
    secs = max(0, round(ns / 1e9 - time.time()))
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ns / 1e9))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"in {secs // size}{unit} ({when})"
    return f"in {secs}s ({when})"


def _meta(items: list[str]) -> dict[str, str]:
    meta: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--meta {item!r}: write KEY=VALUE", FAILED)
        meta[key] = value
    return meta


def _payload(source: str) -> bytes:
    """The payload a file (or stdin, ``-``) holds; at most MAX_PAYLOAD bytes are read, so a
    larger one is refused without reading it all."""
    if not source:
        return b""
    try:
        if source == "-":
            data = sys.stdin.buffer.read(MAX_PAYLOAD + 1)
        else:
            with Path(source).open("rb") as f:
                data = f.read(MAX_PAYLOAD + 1)
    except OSError as e:
        raise CliError(f"cannot read the payload {source}: {e.strerror}", FAILED) from None
    if len(data) > MAX_PAYLOAD:
        where = "stdin" if source == "-" else source
        raise CliError(f"the payload ({where}) is larger than {MAX_PAYLOAD // 1024} KiB, the "
                       "most a dispatch carries: pass a reference to the data instead", FAILED)
    return data


async def dispatch(ctx: Ctx, args: argparse.Namespace) -> int:
    rest = argparse.ArgumentParser(prog=f"orchctl job dispatch {args.name}")
    rest.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    rest.add_argument("payload", nargs="?", default="")
    more = rest.parse_intermixed_args(args.rest)
    req = controller_pb2.DispatchJobRequest(name=args.name, namespace=ctx.namespace,
                                            meta=_meta(args.meta + more.meta),
                                            payload=_payload(more.payload))
    resp = await ctx.call(ctx.stub.DispatchJob(req))
    if ctx.json:
        out(to_json(resp))
    else:
        out(f"==> job {args.name!r} dispatched as {resp.job!r}, evaluation "
            f"{short(resp.evaluation_id)}")
        _show_plan(resp.plan)
    return UNPLACED if resp.plan.failures else OK


async def periodic_force(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = await ctx.call(ctx.stub.ForcePeriodicJob(controller_pb2.ForcePeriodicJobRequest(
        name=args.name, namespace=ctx.namespace)))
    if ctx.json:
        out(to_json(resp))
    else:
        out(f"==> job {args.name!r} launched as {resp.job!r}, evaluation "
            f"{short(resp.evaluation_id)}")
        _show_plan(resp.plan)
    return UNPLACED if resp.plan.failures else OK
