"""``/ui``: the web UI. Server-rendered pages (Jinja2, escaped by default), enhanced by htmx.

Every page is a client of the API: it calls the very ControllerService servicer gRPC and
``/v1`` serve, with the session's token, through the same gate; so a page shows what the
token may read, and an action the token may not take is refused with the gate's own
sentence. Pages read without JavaScript (links and forms, POST then redirect); with it,
htmx refreshes a deployment's progress, and server-sent events append log lines and
events as they come. Lists are paged and filtered on the server (``PER_PAGE``), never
sent whole.

Login is by token (a form POST; the token stays on the server, see
``controller.http.sessions``); every form that acts carries the session's CSRF token, and
a POST whose Origin is another site is refused.
"""

from __future__ import annotations

import html
import math
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

import jinja2
from aiohttp import web
from google.protobuf.message import Message

from controller.acl import Acl
from controller.api.authz import Authorizer, action_of
from controller.cluster import Cluster
from controller.http.api import MAX_STREAMS, HttpApi, Stream, context_of
from controller.http.context import HttpAbort
from controller.http.sessions import COOKIE, Session, Sessions, csrf_ok
from orch.errors import JobSpecError
from orch.gossip.coordinate import Coordinate, estimate_rtt
from orch.jobspec import parse_job
from orch.jobspec.durations import format_duration
from orch.v1 import controller_pb2, node_pb2
from orch.vocab import CLIENT_STATUS, DESIRED_STATUS, JOB_STATUS, JOB_TYPE, NODE_STATUS, namespace_of

HERE = Path(__file__).parent
PER_PAGE = 50
"""Rows a list shows at once (``per_page`` asks for up to ``MAX_PER_PAGE``)."""
MAX_PER_PAGE = 500
SERVICES_PER_PAGE = 20
ENDPOINTS_SHOWN = 10
"""Endpoints the list of services shows for each (one service's page shows them all, paged)."""
OVERVIEW_ROWS = 15
"""Nodes and members the overview lists (the rest are a link away)."""
RTT_MEMBERS = 12
"""Members in the overview's map of round-trip times (the first by name, with coordinates)."""
LOG_TAIL = 200
"""Lines a log view starts with."""
MAX_LOG_PAGE = 1024 * 1024
"""Bytes the page of logs without JavaScript shows at most (the end of the log)."""
T = TypeVar("T")


class Refused(Exception):
    """A call the UI made was refused or failed: the status and the gate's sentence."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Pager:
    page: int
    pages: int
    total: int
    per_page: int
    base: str
    """The list's URL with its filters (a ``page`` parameter is added)."""

    def url(self, page: int) -> str:
        sep = "&" if "?" in self.base else "?"
        return f"{self.base}{sep}page={page}"


def paginate(items: Sequence[T], request: web.Request, path: str = "",
             per_page: int = PER_PAGE) -> tuple[Sequence[T], Pager]:
    """One page of ``items`` (``page``, ``per_page`` from the query) and its pager (its
    links to ``path``, by default the request's)."""
    try:
        per = min(max(int(request.query.get("per_page", per_page)), 1), MAX_PER_PAGE)
        page = max(int(request.query.get("page", 1)), 1)
    except ValueError:
        per, page = per_page, 1
    pages = max(1, math.ceil(len(items) / per))
    page = min(page, pages)
    keep = [(k, v) for k, v in request.query.items() if k != "page" and v]
    base = (path or request.path) + ("?" + urlencode(keep) if keep else "")
    return items[(page - 1) * per:page * per], Pager(page, pages, len(items), per, base)


def ago(ns: int) -> str:
    if not ns:
        return "-"
    secs = max(0.0, time.time() - ns / 1e9)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{int(secs // size)}{unit} ago"
    return f"{int(secs)}s ago"


def size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def rtt_map(members: Iterable[controller_pb2.Member],
            limit: int = RTT_MEMBERS) -> tuple[list[str], list[list[float | None]]]:
    """Names and estimated round-trip times (milliseconds) between the first ``limit``
    members that have a network coordinate."""
    with_coords = [m for m in members if m.HasField("coordinate") and m.coordinate.vec][:limit]
    coords = [Coordinate(tuple(m.coordinate.vec), m.coordinate.error, m.coordinate.height,
                         m.coordinate.adjustment) for m in with_coords]
    grid: list[list[float | None]] = [
        [None if i == j else 1000 * estimate_rtt(a, b) for j, b in enumerate(coords)]
        for i, a in enumerate(coords)]
    return [m.name for m in with_coords], grid


def log_lines(data: bytes) -> bytes:
    """Log bytes as a server-sent event's data lines (HTML-escaped: they go into a page)."""
    text = html.escape(data.decode("utf-8", "replace"))
    # a bare CR ends a line in an event stream too: it must not start a field of its own
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return b"".join(f"data: {line}\n".encode() for line in lines)


class WebUi:
    def __init__(self, api: HttpApi, cluster: Cluster, acl: Acl, authz: Authorizer, *,
                 secure: bool) -> None:
        self.api = api
        self.cluster = cluster
        self.acl = acl
        self.authz = authz
        self.secure = secure
        self.sessions = Sessions(os.urandom)
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
            trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
        self.env.filters.update(
            ago=ago, short=lambda s: str(s)[:8], size=size, duration=format_duration,
            client=CLIENT_STATUS.word, desired=DESIRED_STATUS.word, node_status=NODE_STATUS.word,
            job_status=JOB_STATUS.word, job_type=JOB_TYPE.word, ns=namespace_of)

    def routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/ui", self._to_ui)
        r.add_static("/ui/static/", HERE / "static", show_index=False, follow_symlinks=False)
        r.add_get("/ui/login", self.login)
        r.add_post("/ui/login", self.do_login)
        pages: tuple[tuple[str, Any], ...] = (
                ("/ui/", self.overview), ("/ui/nodes", self.nodes),
                ("/ui/node/{id}", self.node), ("/ui/jobs", self.jobs), ("/ui/jobs/new", self.new_job),
                ("/ui/job/{ns}/{name}", self.job), ("/ui/job/{ns}/{name}/live", self.job_live),
                ("/ui/allocations", self.allocations), ("/ui/allocation/{id}", self.allocation),
                ("/ui/allocation/{id}/logs", self.logs_page),
                ("/ui/allocation/{id}/logs/stream", self.logs_stream),
                ("/ui/services", self.services), ("/ui/events", self.events),
                ("/ui/events/stream", self.events_stream))
        for path, handler in pages:
            r.add_get(path, self._page(handler))
        actions: tuple[tuple[str, Any], ...] = (
                ("/ui/logout", self.do_logout),
                ("/ui/jobs/new", self.do_new_job), ("/ui/node/{id}/{action}", self.do_node),
                ("/ui/job/{ns}/{name}/{action}", self.do_job),
                ("/ui/allocation/{id}/{action}", self.do_allocation))
        for path, handler in actions:
            r.add_post(path, self._action(handler))

    # --- plumbing -----------------------------------------------------------------------------

    async def _to_ui(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/ui/")

    def _session(self, request: web.Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE, ""), time.monotonic())

    def _page(self, handler: Callable[[web.Request, Session], Awaitable[web.StreamResponse]]
              ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def page(request: web.Request) -> web.StreamResponse:
            session = self._session(request)
            if session is None:
                return self._to_login(request)
            try:
                return await handler(request, session)
            except Refused as e:
                if e.status == 401:
                    self.sessions.drop_secret(session.secret)
                    return self._to_login(request, e.message)
                return self.render(request, session, "error.html", code=e.status,
                                   status=e.status, message=e.message)
        return page

    def _action(self, handler: Callable[[web.Request, Session, dict[str, str]],
                                        Awaitable[web.StreamResponse]]
                ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def action(request: web.Request) -> web.StreamResponse:
            refused = _other_origin(request)
            if refused is not None:
                return refused
            form = {k: str(v) for k, v in (await request.post()).items()}
            session = self._session(request)
            if session is None:
                return self._to_login(request)
            if not csrf_ok(session, form.get("csrf", "")):
                return web.Response(status=403, text="refused: the form's CSRF token is missing "
                                    "or stale (reload the page and try again)")
            try:
                return await handler(request, session, form)
            except Refused as e:
                if e.status == 401:
                    self.sessions.drop_secret(session.secret)
                    return self._to_login(request, e.message)
                session.say("error", e.message)
                raise web.HTTPSeeOther(_back(request)) from None
        return action

    def _to_login(self, request: web.Request, why: str = "") -> web.Response:
        if request.headers.get("HX-Request"):  # htmx: a fragment cannot redirect the page
            return web.Response(status=200, headers={"HX-Redirect": "/ui/login"})
        if why:
            raise web.HTTPSeeOther("/ui/login?" + urlencode({"why": why}))
        raise web.HTTPSeeOther("/ui/login")

    async def call(self, request: web.Request, session: Session, rpc: str,
                   msg: Message) -> Any:
        """One RPC through the gate, with the session's token; Refused when it fails."""
        ctx = context_of(request, session.secret, tls=self.secure)
        try:
            return await self.api.call(rpc, msg, ctx)
        except HttpAbort as e:
            if e.leader():
                where = self.api.http_of(e.leader())
                url = f"{'https' if self.secure else 'http'}://{where}/ui/" if where else ""
                raise Refused(503, "this controller is not the leader: "
                              + (f"the leader's UI is {url}" if url else
                                 f"the leader is {e.leader()}")) from None
            raise Refused(e.status, _sentence(e)) from None

    def can(self, session: Session, rpc: str, namespace: str = "", job: str = "") -> bool:
        """Whether the session's token may call ``rpc`` (on that job): to mark what it may not
        do. The gate decides all the same."""
        if not self.authz.acl_on:
            return True
        token = self.acl.resolve(session.secret) if session.secret else None
        permission = action_of(rpc)
        if permission == "anonymous":
            return True
        return token is not None and token.allows(permission, namespace, job)

    def render(self, request: web.Request, session: Session | None, template: str,
               code: int = 200, **values: Any) -> web.Response:
        body = self.env.get_template(template).render(
            session=session, flash=session.take_flash() if session else [],
            csrf=session.csrf if session else "",
            path=request.path, can=(lambda *a: self.can(session, *a)) if session else None,
            acl_on=self.authz.acl_on, **values)
        return web.Response(status=code, body=body.encode(), content_type="text/html",
                            charset="utf-8")

    # --- login --------------------------------------------------------------------------------

    async def login(self, request: web.Request) -> web.Response:
        return self.render(request, None, "login.html", why=request.query.get("why", ""))

    async def do_login(self, request: web.Request) -> web.StreamResponse:
        """Check the token through the gate (SelfToken: rate-limited as any call), then keep
        it in a new session; the browser gets the session's id only."""
        refused = _other_origin(request)
        if refused is not None:
            return refused
        form = {k: str(v) for k, v in (await request.post()).items()}
        secret = form.get("token", "").strip()
        name = "anonymous"
        if self.authz.acl_on:
            if not secret:
                return self.render(request, None, "login.html", code=401,
                                   why="type an access token (orchctl acl token create)")
            ctx = context_of(request, secret, tls=self.secure)
            try:
                token = await self.api.call("SelfToken", controller_pb2.SelfTokenRequest(), ctx)
            except HttpAbort as e:
                why = "that token is unknown or revoked" if e.status == 404 else _sentence(e)
                return self.render(request, None, "login.html", code=401, why=why)
            name = token.name  # type: ignore[attr-defined]
        session = self.sessions.create(secret, name, time.monotonic())
        resp = web.HTTPSeeOther("/ui/")
        resp.set_cookie(COOKIE, session.id, httponly=True, secure=self.secure, samesite="Strict",
                        path="/ui")
        raise resp

    async def do_logout(self, request: web.Request, session: Session,
                        form: dict[str, str]) -> web.StreamResponse:
        self.sessions.drop(session.id)
        resp = web.HTTPSeeOther("/ui/login")
        resp.del_cookie(COOKIE, path="/ui")
        raise resp

    # --- the cluster --------------------------------------------------------------------------

    async def overview(self, request: web.Request, session: Session) -> web.Response:
        leader = await self.call(request, session, "GetLeader", controller_pb2.GetLeaderRequest())
        nodes = (await self.call(request, session, "ListNodes",
                                 controller_pb2.ListNodesRequest())).nodes
        members = await self.call(request, session, "ListMembers",
                                  controller_pb2.ListMembersRequest())
        jobs = (await self.call(request, session, "ListJobs",
                                controller_pb2.ListJobsRequest())).jobs
        node_counts = Counter(NODE_STATUS.word(n.status) for n in nodes)
        draining = sum(1 for n in nodes if n.HasField("drain"))
        ineligible = sum(1 for n in nodes if not n.eligible)
        member_counts = Counter(m.status for m in members.members)
        names, grid = rtt_map(members.members)
        return self.render(
            request, session, "overview.html", leader=leader, nodes=nodes[:OVERVIEW_ROWS],
            node_total=len(nodes), node_counts=sorted(node_counts.items()), draining=draining,
            ineligible=ineligible, members=members.members[:OVERVIEW_ROWS],
            member_total=len(members.members), member_counts=sorted(member_counts.items()),
            refused=members.refused[:OVERVIEW_ROWS], rtt_names=names, rtt=grid,
            job_total=len(jobs), job_counts=sorted(Counter(JOB_STATUS.word(j.status)
                                                           for j in jobs).items()),
            index=self.cluster.state.index)

    async def nodes(self, request: web.Request, session: Session) -> web.Response:
        nodes = list((await self.call(request, session, "ListNodes",
                                      controller_pb2.ListNodesRequest())).nodes)
        q, status = request.query.get("q", ""), request.query.get("status", "")
        if q:
            nodes = [n for n in nodes if q in n.name or n.id.startswith(q)]
        if status:
            nodes = [n for n in nodes if NODE_STATUS.word(n.status) == status]
        page, pager = paginate(nodes, request)
        return self.render(request, session, "nodes.html", nodes=page, pager=pager, q=q,
                           status=status, statuses=NODE_STATUS.words)

    async def node(self, request: web.Request, session: Session) -> web.Response:
        reply = await self.call(request, session, "GetNode",
                                controller_pb2.GetNodeRequest(id=request.match_info["id"]))
        allocs, pager = paginate(list(reply.allocations), request)
        return self.render(request, session, "node.html", r=reply, node=reply.node,
                           allocs=allocs, pager=pager)

    async def do_node(self, request: web.Request, session: Session,
                      form: dict[str, str]) -> web.StreamResponse:
        node_id, action = request.match_info["id"], request.match_info["action"]
        if action == "drain":
            enable = form.get("enable", "true") == "true"
            deadline = int(form.get("deadline_seconds") or 0)
            node = await self.call(request, session, "DrainNode", controller_pb2.DrainNodeRequest(
                id=node_id, enable=enable, deadline_seconds=deadline))
            session.say("ok", f"node {node.name}: " + ("draining" if enable else "drain cancelled"))
        elif action == "eligibility":
            eligible = form.get("eligible", "true") == "true"
            node = await self.call(request, session, "SetNodeEligibility",
                                   controller_pb2.SetNodeEligibilityRequest(id=node_id,
                                                                            eligible=eligible))
            session.say("ok", f"node {node.name}: " + ("eligible" if eligible else "ineligible"))
        else:
            raise web.HTTPNotFound()
        raise web.HTTPSeeOther(f"/ui/node/{node_id}")

    async def services(self, request: web.Request, session: Session) -> web.Response:
        """Every service, 20 a page, each with its first endpoints; one service (``name``)
        with all its endpoints, a page at a time."""
        name = request.query.get("name", "")
        services = list((await self.call(request, session, "ListServices",
                                         controller_pb2.ListServicesRequest(name=name))).services)
        if name and len(services) == 1:
            endpoints, pager = paginate(list(services[0].endpoints), request)
            shown = {0: endpoints}
            page: Sequence[controller_pb2.ServiceEntry] = services
        else:
            page, pager = paginate(services, request, per_page=SERVICES_PER_PAGE)
            shown = {i: list(s.endpoints[:ENDPOINTS_SHOWN]) for i, s in enumerate(page)}
        return self.render(request, session, "services.html", services=page, shown=shown,
                           pager=pager, name=name)

    # --- jobs ---------------------------------------------------------------------------------

    async def jobs(self, request: web.Request, session: Session) -> web.Response:
        ns, prefix, status = (request.query.get(k, "") for k in ("namespace", "prefix", "status"))
        jobs = list((await self.call(request, session, "ListJobs", controller_pb2.ListJobsRequest(
            namespace=ns, prefix=prefix))).jobs)
        if status:
            jobs = [j for j in jobs if JOB_STATUS.word(j.status) == status]
        page, pager = paginate(jobs, request)
        return self.render(request, session, "jobs.html", jobs=page, pager=pager, namespace=ns,
                           prefix=prefix, status=status, statuses=JOB_STATUS.words)

    async def _job(self, request: web.Request, session: Session) -> controller_pb2.JobStatusReply:
        ns, name = request.match_info["ns"], request.match_info["name"]
        reply: controller_pb2.JobStatusReply = await self.call(
            request, session, "GetJob", controller_pb2.GetJobRequest(name=name, namespace=ns))
        return reply

    async def _job_values(self, request: web.Request, session: Session) -> dict[str, Any]:
        """What the job's page and its live part show: GetJob through the gate."""
        reply = await self._job(request, session)
        ns, name = request.match_info["ns"], request.match_info["name"]
        group = request.query.get("group", "")
        allocs = [a for a in reply.allocations if not group or a.group == group]
        page, pager = paginate(allocs, request, path=f"/ui/job/{ns}/{name}")
        return dict(r=reply, job=reply.job, ns=ns, name=name, allocs=page, pager=pager,
                    group=group, query=f"?{request.query_string}" if request.query_string else "",
                    dep=reply.latest_deployment if reply.HasField("latest_deployment") else None)

    async def job(self, request: web.Request, session: Session) -> web.Response:
        values = await self._job_values(request, session)
        history = await self.call(request, session, "JobHistory", controller_pb2.JobHistoryRequest(
            name=values["name"], namespace=values["ns"]))
        return self.render(request, session, "job.html", versions=list(history.versions),
                           **values)

    async def job_live(self, request: web.Request, session: Session) -> web.Response:
        """The job's groups, deployment and allocations: a fragment htmx polls while a
        deployment runs (it stops asking once the deployment is over)."""
        return self.render(request, session, "_job_live.html",
                           **await self._job_values(request, session))

    async def do_job(self, request: web.Request, session: Session,
                     form: dict[str, str]) -> web.StreamResponse:
        ns, name, action = (request.match_info[k] for k in ("ns", "name", "action"))
        back = f"/ui/job/{ns}/{name}"
        if action == "stop":
            r = await self.call(request, session, "StopJob", controller_pb2.StopJobRequest(
                name=name, namespace=ns, purge=form.get("purge") == "true"))
            session.say("ok", f"job {name} stopped (version {r.version})")
            if form.get("purge") == "true":
                raise web.HTTPSeeOther("/ui/jobs")
        elif action == "scale":
            try:
                count = int(form.get("count", ""))
            except ValueError:
                raise Refused(400, "the count must be a whole number") from None
            r = await self.call(request, session, "ScaleJob", controller_pb2.ScaleJobRequest(
                name=name, namespace=ns, group=form.get("group", ""), count=count,
                reason=form.get("reason", "") or "scaled from the web UI"))
            session.say("ok", f"group {form.get('group')} scaled to {count}: version {r.version}")
        elif action == "revert":
            try:
                version = int(form.get("version", ""))
            except ValueError:
                raise Refused(400, "say which version to revert to") from None
            r = await self.call(request, session, "RevertJob", controller_pb2.RevertJobRequest(
                name=name, namespace=ns, version=version))
            session.say("ok", f"reverted to version {version}: now version {r.version}")
        elif action == "promote":
            d = await self.call(request, session, "PromoteDeployment",
                                controller_pb2.PromoteDeploymentRequest(
                                    deployment_id=form.get("deployment_id", "")))
            session.say("ok", f"deployment {d.id[:8]} promoted")
        else:
            raise web.HTTPNotFound()
        raise web.HTTPSeeOther(back)

    async def new_job(self, request: web.Request, session: Session) -> web.Response:
        return self.render(request, session, "job_new.html", text="", plan=None, problems=[],
                           diff=None)

    async def do_new_job(self, request: web.Request, session: Session,
                         form: dict[str, str]) -> web.StreamResponse:
        text = form.get("jobfile", "")
        try:
            job = parse_job(text, source="job file")
        except JobSpecError as e:
            return self.render(request, session, "job_new.html", code=400, text=text,
                               plan=None, diff=None, problems=[p.render() for p in e.problems])
        try:
            if form.get("do") == "run":
                r = await self.call(request, session, "RegisterJob",
                                    controller_pb2.RegisterJobRequest(job=job))
                session.say("ok", f"job {job.name} registered: version {r.version}"
                            + ("" if r.changed else " (unchanged)"))
                raise web.HTTPSeeOther(f"/ui/job/{namespace_of(job.namespace)}/{job.name}")
            plan = await self.call(request, session, "PlanJob",
                                   controller_pb2.PlanJobRequest(job=job))
        except Refused as e:  # the job file stays in the form
            if e.status == 401:
                raise
            return self.render(request, session, "job_new.html", code=e.status, text=text,
                               plan=None, diff=None, problems=[e.message],
                               heading="The controller did not take it:")
        return self.render(request, session, "job_new.html", text=text, plan=plan.plan,
                           diff=plan.diff, current=plan.current_version, problems=[])

    # --- allocations --------------------------------------------------------------------------

    async def allocations(self, request: web.Request, session: Session) -> web.Response:
        job, node, status = (request.query.get(k, "") for k in ("job", "node", "status"))
        reply = await self.call(request, session, "ListAllocations",
                                controller_pb2.ListAllocationsRequest(
                                    job=job, node_id=node, namespace=request.query.get("namespace", ""),
                                    include_stopped=request.query.get("stopped") == "true"))
        allocs = list(reply.allocations)
        if status:
            allocs = [a for a in allocs if CLIENT_STATUS.word(a.client_status) == status]
        page, pager = paginate(allocs, request)
        return self.render(request, session, "allocations.html", allocs=page, pager=pager,
                           job=job, node=node, status=status, statuses=CLIENT_STATUS.words,
                           stopped=request.query.get("stopped") == "true")

    async def allocation(self, request: web.Request, session: Session) -> web.Response:
        a: node_pb2.Allocation = await self.call(
            request, session, "GetAllocation",
            controller_pb2.GetAllocationRequest(id=request.match_info["id"]))
        task = request.query.get("task") or (sorted(a.tasks)[0] if a.tasks else "")
        events = sorted(((name, ev) for name, t in a.tasks.items() for ev in t.events),
                        key=lambda x: -x[1].time_ns)
        node = self.cluster.state.nodes.get(a.node_id)
        return self.render(request, session, "allocation.html", a=a, task=task, events=events,
                           usage=await self.call(request, session, "GetAllocationUsage",
                                                 controller_pb2.GetAllocationRequest(id=a.id)),
                           node_name=node.name if node else a.node_id[:8],
                           stderr=request.query.get("stderr") == "true")

    async def do_allocation(self, request: web.Request, session: Session,
                            form: dict[str, str]) -> web.StreamResponse:
        alloc_id, action = request.match_info["id"], request.match_info["action"]
        rpc = {"stop": "StopAllocation", "restart": "RestartAllocation"}.get(action)
        if rpc is None:
            raise web.HTTPNotFound()
        a = await self.call(request, session, rpc, controller_pb2.AllocationRequest(
            id=alloc_id, task=form.get("task", "")))
        name = a.name or (a.id or alloc_id)[:8]  # the agent's answer to a restart names no more
        session.say("ok", f"allocation {name}: {'stopped' if action == 'stop' else 'restarted'}")
        raise web.HTTPSeeOther(f"/ui/allocation/{alloc_id}")

    def _logs_request(self, request: web.Request, follow: bool) -> controller_pb2.LogsRequest:
        return controller_pb2.LogsRequest(
            alloc_id=request.match_info["id"], task=request.query.get("task", ""),
            stderr=request.query.get("stderr") == "true", follow=follow)

    async def logs_page(self, request: web.Request, session: Session) -> web.StreamResponse:
        """The end of a task's log as text (for reading without JavaScript)."""
        msg = self._logs_request(request, follow=False)
        msg.offset = -MAX_LOG_PAGE
        stream = await self._open(request, session, "AllocationLogs", msg)
        out = bytearray()
        try:
            while len(out) < MAX_LOG_PAGE:
                try:
                    chunk = await stream.next()
                except StopAsyncIteration:
                    break
                except HttpAbort as e:
                    out += f"\n[the log ended: {e.details}]\n".encode()
                    break
                if chunk is not None:
                    out += chunk.data  # type: ignore[attr-defined]
        finally:
            await stream.close()
        return web.Response(body=bytes(out[-MAX_LOG_PAGE:]), content_type="text/plain",
                            charset="utf-8")

    async def _open(self, request: web.Request, session: Session, rpc: str,
                    msg: Message) -> Stream:
        ctx = context_of(request, session.secret, tls=self.secure)
        try:
            return await Stream.open(self.api.servicer, rpc, msg, ctx)
        except HttpAbort as e:
            raise Refused(e.status, _sentence(e)) from None

    async def logs_stream(self, request: web.Request, session: Session) -> web.StreamResponse:
        """A task's log as it grows, as server-sent events of HTML-escaped text; the event
        id is the log offset, so a reconnecting browser resumes where it was."""
        msg = self._logs_request(request, follow=True)
        last = request.headers.get("Last-Event-ID", "")
        if last.isdigit():
            msg.offset = int(last)
        else:
            msg.tail_lines = LOG_TAIL
        return await self._sse(request, session, "AllocationLogs", msg, lambda c: (
            f"id: {c.offset + len(c.data)}\n".encode() + log_lines(c.data) + b"\n"))

    async def _sse(self, request: web.Request, session: Session, rpc: str, msg: Message,
                   frame: Callable[[Any], bytes]) -> web.StreamResponse:
        if self.api.streams >= MAX_STREAMS:
            return web.Response(status=429, text="too many streams open; retry later")
        stream = await self._open(request, session, rpc, msg)
        self.api.streams += 1
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "X-Accel-Buffering": "no"})
        try:
            await resp.prepare(request)
            while True:
                try:
                    item = await stream.next(15.0)
                except (StopAsyncIteration, HttpAbort):
                    break
                await resp.write(b": keepalive\n\n" if item is None else frame(item))
            return resp
        except ConnectionError:  # the browser went away (or reconnects: Last-Event-ID)
            return resp
        finally:
            self.api.streams -= 1
            await stream.close()

    # --- events -------------------------------------------------------------------------------

    async def events(self, request: web.Request, session: Session) -> web.StreamResponse:
        topics = [t for t in request.query.get("topic", "").split(",") if t]
        msg = controller_pb2.WatchRequest(topics=topics, job=request.query.get("job", ""),
                                          tail=PER_PAGE)
        stream = await self._open(request, session, "Watch", msg)
        events: list[controller_pb2.Event] = []
        try:
            while True:
                try:
                    ev = await stream.next()
                except (StopAsyncIteration, HttpAbort):
                    break
                if ev is not None:
                    events.append(ev)  # type: ignore[arg-type]
        finally:
            await stream.close()
        last = max((e.index for e in events), default=self.cluster.state.index)
        stream_url = "/ui/events/stream?" + urlencode({"since": last, **{
            k: request.query[k] for k in ("topic", "job") if request.query.get(k)}})
        return self.render(request, session, "events.html", events=list(reversed(events)),
                           stream_url=stream_url, topic=request.query.get("topic", ""),
                           job=request.query.get("job", ""))

    async def events_stream(self, request: web.Request, session: Session) -> web.StreamResponse:
        """New events as server-sent events, each a table row (id: its index)."""
        last = request.headers.get("Last-Event-ID", "") or request.query.get("since", "")
        msg = controller_pb2.WatchRequest(
            topics=[t for t in request.query.get("topic", "").split(",") if t],
            job=request.query.get("job", ""), follow=True,
            since_index=int(last) if last.isdigit() else 0)
        row = self.env.get_template("_event.html")

        def frame(ev: controller_pb2.Event) -> bytes:
            text = row.render(ev=ev).replace("\r", " ").replace("\n", " ")
            return f"id: {ev.index}\ndata: {text}\n\n".encode()
        return await self._sse(request, session, "Watch", msg, frame)


def _back(request: web.Request) -> str:
    """The UI page a refused form came from (its Referer's path: never another site)."""
    ref = urlsplit(request.headers.get("Referer", ""))
    path = ref.path + (f"?{ref.query}" if ref.query else "")
    ok = ref.netloc in ("", request.host) and path.startswith("/ui/") and "//" not in path
    return path if ok else "/ui/"


def _other_origin(request: web.Request) -> web.Response | None:
    """A refusal for a POST sent from another site's page (None: same origin, or a client
    that sends no Origin, such as a form without JavaScript in an old browser)."""
    origin = request.headers.get("Origin")
    if origin and origin != f"{request.scheme}://{request.host}":
        return web.Response(status=403, text="refused: this form came from another site")
    return None


def _sentence(e: HttpAbort) -> str:
    """What a refused or failed call says to a person."""
    if e.code.name == "PERMISSION_DENIED":
        return f"refused: {e.details}"
    return e.details
