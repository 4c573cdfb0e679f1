"""The one authorization gate of the controller's services: who may call what.

Every call of ControllerService and NodeService passes it, in this order, over gRPC and
over HTTP alike (``controller.http`` calls the same servicer with a context that answers
the same questions):

1. The connection's certificate (when TLS is on): the caller must hold a role the method
   admits (``RULES``), from the cluster CA and not removed; a join token's holder may
   only join. An HTTPS request without a certificate is the ``web`` role (``WEB``).
2. The rate limit: a token bucket per client (its token, else its certificate or
   address); past it the call gets RESOURCE_EXHAUSTED.
3. Access tokens (on whenever TLS is, or with ``acl``): ``authorization: Bearer
   <secret>`` must name a live token whose policies allow the method on what it acts on
   (a job's namespace and name, the drivers and privileges a job asks for).

A refused call changes nothing. Denials are logged with who (token name and accessor,
peer) and what (method, target) and counted (``orch_controller_api_denied``). The
table of who may call what is ``RULES``; docs/security.md shows it, and a test calls
every method of every service as every kind of caller against it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from controller.acl import Acl, Token
from controller.trust import PLAIN, Peer
from orch.ratelimit import Limiter
from orch.templates import TemplateProblem, uses
from orch.vocab import namespace_of

if TYPE_CHECKING:
    from controller.state import ClusterState

log = logging.getLogger("api.authz")
Ctx = grpc.aio.ServicerContext[Any, Any]

OPERATORS = frozenset(("cli", "controller", "web"))
"""Roles that may call the operator API (agents may not). ``web`` is no certificate's: it is
an HTTPS request that presented none (a browser, ``curl`` with a token), whose token is
then its only credential (``WEB``); gRPC connections never have it, as gRPC's TLS requires
a certificate."""


WEB = Peer(roles=frozenset(("web",)))
"""Who an HTTPS request without a client certificate is (see ``OPERATORS``)."""


@dataclass(frozen=True, slots=True)
class Rule:
    roles: frozenset[str]
    """Certificate roles admitted; ``join``: the holder of a join token (nothing else)."""
    permission: str
    """What the access token must allow: "" (no token: finding the leader, the first
    bootstrap, the agents' own calls), read, job-write, alloc-exec, secret-read,
    secret-write, node-write, operator or acl."""
    peer: bool = False
    """Another controller may call it with its own certificate and no token (the keyring
    fan-out)."""


def _rules() -> dict[str, Rule]:
    def op(permission: str, *methods: str, peer: bool = False) -> dict[str, Rule]:
        return {f"ControllerService/{m}": Rule(OPERATORS, permission, peer) for m in methods}
    return {
        **op("", "GetLeader", "BootstrapAcl", "SelfToken"),
        **op("read", "GetJob", "ListJobs", "JobHistory", "ListAllocations", "GetAllocation",
             "GetAllocationUsage", "AllocationLogs", "ListNodes", "GetNode", "ListMembers",
             "ListServices", "WatchServices", "Watch", "ListVolumes"),
        **op("job-write", "RegisterJob", "PlanJob", "StopJob", "RevertJob", "ScaleJob",
             "PromoteDeployment", "StopAllocation", "RestartAllocation"),
        **op("job-write", "DispatchJob", "ForcePeriodicJob"),
        **op("alloc-exec", "ExecAllocation"),
        **op("node-write", "DrainNode", "SetNodeEligibility"),
        **op("operator", "FireEvent"),
        **op("operator", "Keyring", peer=True),
        **op("acl", "CreateToken", "ListTokens", "RevokeToken", "GetJoinToken", "RemoveNode",
             "ApplyNamespace", "DeleteNamespace", "PurgeNode", "GarbageCollect", "SaveSnapshot",
             "RestoreSnapshot"),
        **op("read", "ListNamespaces", "ListSecrets"),
        **op("secret-read", "GetSecret"),
        **op("secret-write", "PutSecret", "DeleteSecret"),
        "NodeService/Connect": Rule(frozenset(("agent",)), ""),
        "NodeService/Join": Rule(frozenset(("join",)), ""),
        "NodeService/Renew": Rule(frozenset(("agent", "controller")), ""),
    }


RULES = _rules()
"""``<Service>/<Method>`` -> who may call it."""


def _methods(permission: str) -> frozenset[str]:
    return frozenset(k.split("/")[1] for k, r in RULES.items()
                     if k.startswith("ControllerService/") and r.permission == permission)


ANONYMOUS = _methods("")
"""Callable without a token: finding the leader, making the first token (once), and asking
which token one holds."""
READ = _methods("read")
JOB_WRITE = _methods("job-write")
ALLOC_EXEC = _methods("alloc-exec")
"""Commands in allocations (``namespace:<ns>:alloc-exec``)."""
NODE_WRITE = _methods("node-write")
MANAGEMENT = _methods("acl") | _methods("operator")
SECRETS = _methods("secret-read") | _methods("secret-write")


def action_of(method: str) -> str:
    """The permission a ControllerService method needs (anonymous for none); a method
    nobody classified needs the most."""
    rule = RULES.get(f"ControllerService/{method}")
    if rule is None:
        return "acl"
    return rule.permission or "anonymous"


@dataclass(frozen=True, slots=True)
class Target:
    """What a call acts on, for the token's policies."""

    namespace: str = ""
    """A namespace; ``*`` when the call reaches every namespace (a listing)."""
    job: str = ""
    needs: frozenset[str] = frozenset()
    """Capabilities the request needs besides its action (driver-docker, privileged...)."""

    def __str__(self) -> str:
        what = f"job {self.namespace}/{self.job}" if self.job else (
            f"namespace {self.namespace}" if self.namespace not in ("", "*") else "")
        return what + (f" (needs {', '.join(sorted(self.needs))})" if self.needs else "")


def _job_needs(job: Any) -> frozenset[str]:
    needs = set()
    for g in job.groups:
        if g.network.mode == "host":
            needs.add("host-network")
        for t in g.tasks:
            needs.add(f"driver-{t.driver or 'docker'}")
            if t.privileged:
                needs.add("privileged")
            if t.secrets or any(_reads_secrets(x.data) for x in t.templates):
                needs.add("secret-read")  # else a submitter could print what it may not read
    return frozenset(needs)


def _reads_secrets(data: str) -> bool:
    try:
        return bool(uses(data).secrets)
    except TemplateProblem:
        return False  # the job is refused when it is checked, after this gate


def target_of(method: str, request: Any, state: ClusterState) -> Target:
    """What a ControllerService call acts on (an empty Target when it cannot be told)."""
    if method in ("RegisterJob", "PlanJob"):
        return Target(namespace_of(request.job.namespace), request.job.name,
                      _job_needs(request.job))
    if method in ("DispatchJob", "ForcePeriodicJob"):  # the child runs the parent's tasks
        job = state.job((namespace_of(request.namespace), request.name))
        return Target(namespace_of(request.namespace), request.name,
                      _job_needs(job) if job is not None else frozenset())
    if method in ("StopJob", "RevertJob", "ScaleJob", "GetJob", "JobHistory"):
        return Target(namespace_of(request.namespace), request.name)
    if method == "PromoteDeployment":
        d = state.deployments.get(request.deployment_id)
        return Target(namespace_of(d.namespace), d.job) if d is not None else Target()
    if method == "ExecAllocation":  # judged by its first message (None when none came)
        start = request.start if request is not None and request.HasField("start") else None
        found = state.find_alloc(start.alloc_id) if start is not None else []
        return Target(namespace_of(found[0].namespace), found[0].job) if len(found) == 1 \
            else Target()
    if method in ("StopAllocation", "RestartAllocation", "GetAllocation", "GetAllocationUsage",
                  "AllocationLogs"):
        ref = request.alloc_id if method == "AllocationLogs" else request.id
        found = state.find_alloc(ref)
        return Target(namespace_of(found[0].namespace), found[0].job) if len(found) == 1 \
            else Target()
    if method == "ListVolumes" and request.job:
        return Target(namespace_of(request.namespace), request.job)
    if method in ("ListJobs", "ListAllocations", "ListServices", "WatchServices"):
        return Target(request.namespace or "*")
    if method in ("PutSecret", "GetSecret", "ListSecrets", "DeleteSecret"):
        return Target(namespace_of(request.namespace))
    return Target("*")


def bearer(context: Ctx) -> str:
    """The secret in ``authorization: Bearer <secret>`` ("" when there is none)."""
    for k, v in context.invocation_metadata() or ():
        if k == "authorization":
            value = v.decode() if isinstance(v, bytes) else v
            scheme, _, secret = value.partition(" ")
            return secret.strip() if scheme.lower() == "bearer" else ""
    return ""


class RateLimiter(Limiter):
    """A token bucket per client: ``rate`` calls a second on average, ``burst`` at once.
    The least recently seen clients are forgotten past ``max_clients``."""

    def __init__(self, rate: float, burst: float, max_clients: int = 10_000) -> None:
        super().__init__(rate, burst, max_clients)

    def allow(self, client: str, now: float | None = None) -> float:
        """0 when the call may go ahead, else the seconds until it could."""
        return self.take(client, time.monotonic() if now is None else now)


class Authorizer:
    """The gate. ``identify`` says who a connection's certificate names (None: TLS is off,
    so there is no certificate to ask)."""

    def __init__(self, *, identify: Callable[[Ctx], Peer] | None, acl_on: bool, acl: Acl,
                 state: ClusterState, limiter: RateLimiter) -> None:
        self.identify = identify
        self.acl_on = acl_on
        self.acl, self.state, self.limiter = acl, state, limiter
        self.denied: Counter[tuple[str, str]] = Counter()
        """(reason, method) -> calls refused (exported as orch_controller_api_denied)"""

    @property
    def tls_on(self) -> bool:
        return self.identify is not None

    async def check(self, ctx: Ctx, method: str, request: Any,
                    service: str = "ControllerService") -> tuple[Peer, Token | None]:
        """Who calls and with which token (None when no token was needed); aborts the call
        when a gate refuses it."""
        rule = RULES.get(f"{service}/{method}") or Rule(OPERATORS, "acl")
        peer = self.identify(ctx) if self.identify is not None else PLAIN
        if peer == PLAIN and getattr(ctx, "token_only", False):
            peer = WEB  # the HTTP listener's TLS admitted it without a certificate
        if self.identify is not None:
            await self._certificate(ctx, method, rule, peer)
        secret = bearer(ctx) if service == "ControllerService" else ""
        token = self.acl.resolve(secret) if secret else None
        wait = self.limiter.allow(self._client(ctx, peer, token))
        if wait:
            self.denied["rate", method] += 1
            await ctx.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"too many requests from {self._client(ctx, peer, token)}: at most "
                            f"{self.limiter.rate:g}/s (burst {self.limiter.burst:g}); retry in "
                            f"{wait:.2f}s")
        if not rule.permission or not self.acl_on:
            return peer, token
        if rule.peer and "controller" in peer.roles and token is None:
            return peer, None  # another controller, for itself
        if token is None:
            why = "an access token is needed (orchctl --token-file, ORCH_TOKEN, or orchctl.toml)" \
                if not secret else "the access token is unknown or revoked"
            self._deny(ctx, "unauthenticated", method, None, Target())
            await ctx.abort(grpc.StatusCode.UNAUTHENTICATED, why)
        assert token is not None
        target = target_of(method, request, self.state)
        if token.allows(rule.permission, target.namespace, target.job, target.needs):
            return peer, token
        self._deny(ctx, "forbidden", method, token, target)
        what = f" {target}" if str(target) else ""
        await ctx.abort(grpc.StatusCode.PERMISSION_DENIED,
                        f"token {token.name!r} (policies: {', '.join(token.policies)}) may not "
                        f"call {method}{what}")
        raise AssertionError("not reached: abort raises")

    async def _certificate(self, ctx: Ctx, method: str, rule: Rule, peer: Peer) -> None:
        if rule.roles == {"join"}:
            if peer.joining:
                return
            why = "only a node joining with a join token may call it"
        elif peer.revoked:
            why = f"node {peer.node_id} was removed from this cluster"
        elif peer.roles & rule.roles:
            return
        else:
            have = ", ".join(sorted(peer.roles)) or ("a join token" if peer.joining else
                                                      "no role")
            why = f"a certificate with role {' or '.join(sorted(rule.roles))} is needed " \
                  f"(this one has: {have})"
        self.denied["certificate", method] += 1
        log.warning("refused a peer's certificate", extra={
            "peer": ctx.peer(), "method": method, "roles": ",".join(sorted(peer.roles)) or "none",
            "node_id": peer.node_id, "reason": why})
        await ctx.abort(grpc.StatusCode.PERMISSION_DENIED, why)

    @staticmethod
    def _client(ctx: Ctx, peer: Peer, token: Token | None) -> str:
        if token is not None:
            return f"token:{token.accessor}"
        if peer.node_id:
            return f"node:{peer.node_id}"
        where = ctx.peer() or "unknown"
        host = where.rsplit(":", 1)[0] if where.startswith(("ipv4:", "ipv6:")) else where
        return f"cert:{','.join(sorted(peer.roles))}@{host}" if peer.roles else f"peer:{host}"

    def _deny(self, ctx: Ctx, reason: str, method: str, token: Token | None,
              target: Target) -> None:
        self.denied[reason, method] += 1
        log.warning("denied %s", method, extra={
            "reason": reason, "method": method, "peer": ctx.peer(),
            "token": token.name if token else "anonymous",
            "accessor": token.accessor[:8] if token else "",
            "target": f"{target.namespace}/{target.job}" if target.job else "",
            "needs": ",".join(sorted(target.needs))})
