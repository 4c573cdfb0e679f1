"""Every ControllerService RPC as an HTTP route: method, path, and how the request is filled.

A route's path parameters (``{name}``) and query parameters fill the request message's
fields of the same name (its proto name or its JSON name); a JSON body fills the rest, in
protobuf's JSON mapping; ``fixed`` fields are set by the route itself (``/v1/events/stream``
follows). Nothing here is hand-written per message: the request is built from the RPC's
descriptor (``controller.http.request``), so a field added to a proto is served at once.

RPCs that stream from the client take their stream from one HTTP request:
``RestoreSnapshot`` the body, read in pieces (``body="raw"``); ``ExecAllocation`` its first
message, ``start``, from the body and the path (``first="start"``): a command without a
terminal or input, whose output and exit code stream back (a terminal, and input as it
comes, are ``orchctl alloc exec``'s, over gRPC).

NodeService (the agents' stream, joining, renewing) and AgentService are not served over
HTTP: they belong to members, which speak gRPC with their certificates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from orch.v1 import controller_pb2

SERVICE = controller_pb2.DESCRIPTOR.services_by_name["ControllerService"]


@dataclass(frozen=True, slots=True)
class Route:
    rpc: str
    """The ControllerService method it calls."""
    method: str
    """GET (reads), POST (writes and actions) or DELETE."""
    path: str
    """``/v1/job/{name}``: braces name request fields."""
    summary: str
    fixed: dict[str, Any] = field(default_factory=dict)
    """Request fields the route sets (``follow`` for a stream, ``rotate``)."""
    body: str = "json"
    """``json``: the request message in protobuf's JSON mapping (may be empty); ``job``: a
    job file (YAML or JSON) or ``{"job": ...}``; ``none``: no body; ``raw``: bytes that
    stream to the RPC as they arrive (a client-streaming RPC of ``data`` chunks)."""
    first: str = ""
    """A client-streaming RPC whose stream is one message: the request's field that the
    HTTP request fills (``start``); the RPC gets that one message."""
    sse: bool = False
    """A stream served as server-sent events whatever the client accepts."""

    @property
    def params(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile("^" + re.sub(r"{(\w+)}", r"(?P<\1>[^/]+)", self.path) + "$")

    @property
    def streaming(self) -> bool:
        return bool(SERVICE.methods_by_name[self.rpc].server_streaming)

    @property
    def client_streaming(self) -> bool:
        return bool(SERVICE.methods_by_name[self.rpc].client_streaming)


def _r(rpc: str, method: str, path: str, summary: str, **kw: Any) -> Route:
    return Route(rpc, method, path, summary, **kw)


ROUTES: tuple[Route, ...] = (
    _r("ListJobs", "GET", "/v1/jobs", "Every job (filters: namespace, prefix)", body="none"),
    _r("RegisterJob", "POST", "/v1/jobs", "Run a job: the body is a job file (YAML or JSON)",
       body="job"),
    _r("PlanJob", "POST", "/v1/jobs/plan", "What running a job file would change (dry run)",
       body="job"),
    _r("GetJob", "GET", "/v1/job/{name}", "One job: its groups, allocations and deployment",
       body="none"),
    _r("StopJob", "DELETE", "/v1/job/{name}", "Stop a job (purge=true forgets it)", body="none"),
    _r("JobHistory", "GET", "/v1/job/{name}/versions", "The job's versions and their diffs",
       body="none"),
    _r("RevertJob", "POST", "/v1/job/{name}/revert", "Run an earlier version again"),
    _r("ScaleJob", "POST", "/v1/job/{name}/scale", "Change one group's count"),
    _r("PromoteDeployment", "POST", "/v1/deployment/{deployment_id}/promote",
       "Promote a deployment's canaries"),
    _r("ListAllocations", "GET", "/v1/allocations",
       "Allocations (filters: job, node_id, namespace, include_stopped)", body="none"),
    _r("GetAllocation", "GET", "/v1/allocation/{id}", "One allocation (a unique id prefix will do)",
       body="none"),
    _r("GetAllocationUsage", "GET", "/v1/allocation/{id}/usage",
       "What an allocation uses now: CPU, memory, the load balancers' connections",
       body="none"),
    _r("RestartAllocation", "POST", "/v1/allocation/{id}/restart",
       "Restart an allocation's tasks where they run"),
    _r("StopAllocation", "POST", "/v1/allocation/{id}/stop",
       "Stop an allocation (a replacement is placed)"),
    _r("AllocationLogs", "GET", "/v1/allocation/{alloc_id}/logs",
       "A task's logs (follow=true keeps the stream open); text/plain, or server-sent events",
       body="none"),
    _r("ListNodes", "GET", "/v1/nodes", "Every node", body="none"),
    _r("GetNode", "GET", "/v1/node/{id}", "One node, what runs there, its gossip status",
       body="none"),
    _r("DrainNode", "POST", "/v1/node/{id}/drain", "Drain a node (enable=false cancels)"),
    _r("SetNodeEligibility", "POST", "/v1/node/{id}/eligibility",
       "Whether the scheduler may place work on a node"),
    _r("RemoveNode", "DELETE", "/v1/node/{id}", "Remove a node for good", body="none"),
    _r("ListMembers", "GET", "/v1/members", "The gossip members, with network coordinates",
       body="none"),
    _r("ListServices", "GET", "/v1/services", "Services, their endpoints and health",
       body="none"),
    _r("WatchServices", "GET", "/v1/services/watch",
       "Services, once they differ from the list at index (the catalog's blocking query)",
       body="none"),
    _r("GetLeader", "GET", "/v1/leader", "Who leads, and every controller", body="none"),
    _r("Watch", "GET", "/v1/events",
       "Committed events (since_index, tail, filters); one JSON object a line", body="none"),
    _r("Watch", "GET", "/v1/events/stream", "The event stream, live, as server-sent events",
       fixed={"follow": True}, body="none", sse=True),
    _r("BootstrapAcl", "POST", "/v1/acl/bootstrap", "Make the first management token (once)"),
    _r("CreateToken", "POST", "/v1/acl/tokens", "Make an access token"),
    _r("ListTokens", "GET", "/v1/acl/tokens", "Every access token (no secrets)", body="none"),
    _r("SelfToken", "GET", "/v1/acl/token/self", "The token this request carries",
       body="none"),
    _r("RevokeToken", "DELETE", "/v1/acl/token/{accessor}", "Revoke a token", body="none"),
    _r("Keyring", "GET", "/v1/keyring", "Every member's gossip keys",
       fixed={"op": "KEYRING_OP_LIST"}, body="none"),
    _r("Keyring", "POST", "/v1/keyring", "Install, use or remove a gossip key on every member"),
    _r("FireEvent", "POST", "/v1/event/fire", "Gossip a user event to every member"),
    _r("GetJoinToken", "GET", "/v1/cluster/join-token/{role}", "A role's current join token",
       fixed={"rotate": False}, body="none"),
    _r("GetJoinToken", "POST", "/v1/cluster/join-token/{role}/rotate",
       "A new join token for a role (the old one stops working at once)",
       fixed={"rotate": True}, body="none"),
    _r("DispatchJob", "POST", "/v1/job/{name}/dispatch",
       "Run a parameterized job with its meta and payload (a child job)"),
    _r("ForcePeriodicJob", "POST", "/v1/job/{name}/periodic/force",
       "Launch a periodic job's child now, out of schedule", body="none"),
    _r("ListNamespaces", "GET", "/v1/namespaces",
       "Every namespace, with its quota and what it uses", body="none"),
    _r("ApplyNamespace", "POST", "/v1/namespace/{name}",
       "Create a namespace or change its description and quota"),
    _r("DeleteNamespace", "DELETE", "/v1/namespace/{name}",
       "Remove an empty namespace", body="none"),
    _r("ListSecrets", "GET", "/v1/secrets",
       "A namespace's secrets: versions, sizes, users (never values)", body="none"),
    _r("GetSecret", "GET", "/v1/secret/{name}",
       "A secret's value (base64 in JSON; version=N for an older one)", body="none"),
    _r("PutSecret", "POST", "/v1/secret/{name}",
       "A new version of a secret (value in base64; cas=N: only if N is the latest)"),
    _r("DeleteSecret", "DELETE", "/v1/secret/{name}",
       "Remove a secret and every version", body="none"),
    _r("ListVolumes", "GET", "/v1/volumes",
       "Every node's host volumes and the Docker volumes allocations mount", body="none"),
    _r("PurgeNode", "POST", "/v1/node/{id}/purge",
       "Forget a down node now (it may join again)", body="none"),
    _r("GarbageCollect", "POST", "/v1/system/gc",
       "Collect dead jobs, terminal allocations, old versions and evaluations now", body="none"),
    _r("SaveSnapshot", "GET", "/v1/operator/snapshot",
       "A snapshot of the store (application/octet-stream)", body="none"),
    _r("RestoreSnapshot", "POST", "/v1/operator/snapshot",
       "Restore a snapshot: the body is the file GET /v1/operator/snapshot gave", body="raw"),
    _r("ExecAllocation", "POST", "/v1/allocation/{alloc_id}/exec",
       "Run a command in a task (body: task, command), no terminal and no input: its output "
       "and exit code, streamed", first="start"),
)
"""Every route of ``/v1``; a test fails when an RPC of ControllerService has none."""

RESERVED = frozenset(("index", "wait", "format", "per_page", "next_token"))
"""Query parameters that are not request fields: blocking queries, the stream format, and
paging through a list."""


def listed_field(rpc: str) -> str:
    """The list a reply holds (``nodes`` of ListNodesResponse), when it holds exactly one list
    of messages: such replies can be read a page at a time."""
    out = SERVICE.methods_by_name[rpc].output_type
    lists = [f for f in out.fields if f.is_repeated and f.message_type is not None
             and not f.message_type.GetOptions().map_entry]
    return lists[0].name if len(lists) == 1 else ""


def primary(rpc: str) -> Route:
    """The first route that calls ``rpc``."""
    return next(r for r in ROUTES if r.rpc == rpc)


def unrouted() -> list[str]:
    """ControllerService RPCs without a route."""
    routed = {r.rpc for r in ROUTES}
    return [m.name for m in SERVICE.methods if m.name not in routed]


def match(method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    """The route for ``method path`` and its path parameters (None: no such route)."""
    for r in _COMPILED:
        if r[0].method == method:
            m = r[1].match(path)
            if m is not None:
                return r[0], m.groupdict()
    return None


def allowed_methods(path: str) -> list[str]:
    """The methods some route serves at ``path`` (for 405's Allow header)."""
    return sorted({r.method for r, p in _COMPILED if p.match(path)})


_COMPILED = [(r, r.pattern) for r in ROUTES]
