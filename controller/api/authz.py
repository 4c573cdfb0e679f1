"""Who may call what on the operator API: certificate roles, access tokens, rate limits.

Every call passes three gates, in this order:

1. mTLS (when on): the client certificate must carry the ``cli`` or ``controller`` role.
2. The rate limit: a token bucket per client (its token, else its certificate or address);
   past it the call gets RESOURCE_EXHAUSTED.
3. Access tokens (when ``acl`` is on): ``authorization: Bearer <secret>`` must name a live
   token whose policies allow the method on its target (a job's namespace and name).

Denials are logged with who (token name and accessor, peer) and what (method, target).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from typing import TYPE_CHECKING, Any

import grpc

from controller.acl import Acl, Token
from orch.tls import peer_roles, require_role
from orch.vocab import namespace_of

if TYPE_CHECKING:
    from controller.state import ClusterState

log = logging.getLogger("api.authz")
Ctx = grpc.aio.ServicerContext[Any, Any]

ANONYMOUS = frozenset({"GetLeader", "BootstrapAcl"})
"""Callable without a token: finding the leader, and making the first token (once)."""
READ = frozenset({"GetJob", "ListJobs", "JobHistory", "ListAllocations", "GetAllocation",
                  "AllocationLogs", "ListNodes", "GetNode", "ListMembers", "ListServices",
                  "Watch", "SelfToken"})
JOB_WRITE = frozenset({"RegisterJob", "PlanJob", "StopJob", "RevertJob", "ScaleJob",
                       "PromoteDeployment", "StopAllocation", "RestartAllocation"})
NODE_WRITE = frozenset({"DrainNode", "SetNodeEligibility"})
MANAGEMENT = frozenset({"CreateToken", "ListTokens", "RevokeToken", "Keyring", "FireEvent"})


def action_of(method: str) -> str:
    """The permission a method needs: anonymous, read, job-write, node-write or acl."""
    for action, methods in (("anonymous", ANONYMOUS), ("read", READ), ("job-write", JOB_WRITE),
                            ("node-write", NODE_WRITE), ("acl", MANAGEMENT)):
        if method in methods:
            return action
    return "acl"  # a method nobody classified needs the most


def target_of(method: str, request: Any, state: ClusterState) -> tuple[str, str]:
    """The (namespace, job name) a job-write acts on ("", "" when it cannot be told)."""
    if method in ("RegisterJob", "PlanJob"):
        return namespace_of(request.job.namespace), request.job.name
    if method in ("StopJob", "RevertJob", "ScaleJob"):
        return namespace_of(request.namespace), request.name
    if method == "PromoteDeployment":
        d = state.deployments.get(request.deployment_id)
        return (namespace_of(d.namespace), d.job) if d is not None else ("", "")
    if method in ("StopAllocation", "RestartAllocation"):
        found = state.find_alloc(request.id)
        return (namespace_of(found[0].namespace), found[0].job) if len(found) == 1 else ("", "")
    return "", ""


def bearer(context: Ctx) -> str:
    """The secret in ``authorization: Bearer <secret>`` ("" when there is none)."""
    for k, v in context.invocation_metadata() or ():
        if k == "authorization":
            value = v.decode() if isinstance(v, bytes) else v
            scheme, _, secret = value.partition(" ")
            return secret.strip() if scheme.lower() == "bearer" else ""
    return ""


class RateLimiter:
    """A token bucket per client: ``rate`` calls a second on average, ``burst`` at once.
    The least recently seen clients are forgotten past ``max_clients``."""

    def __init__(self, rate: float, burst: float, max_clients: int = 10_000) -> None:
        self.rate, self.burst, self.max_clients = rate, burst, max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, client: str, now: float | None = None) -> float:
        """0 when the call may go ahead, else the seconds until it could."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
        self._buckets[client] = (tokens - 1 if not wait else tokens, now)
        if len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait


class Authorizer:
    """The three gates for ControllerService."""

    ROLES = frozenset(("cli", "controller"))
    """Certificate roles that may call the operator API (agents may not)."""

    def __init__(self, *, tls_on: bool, acl_on: bool, acl: Acl, state: ClusterState,
                 limiter: RateLimiter) -> None:
        self.tls_on, self.acl_on = tls_on, acl_on
        self.acl, self.state, self.limiter = acl, state, limiter
        self.denied: Counter[tuple[str, str]] = Counter()
        """(reason, method) -> calls refused (exported as orch_controller_api_denied)"""

    async def check(self, ctx: Ctx, method: str, request: Any) -> Token | None:
        """The caller's token (None when ACLs are off or the method is anonymous); aborts
        the call when a gate refuses it."""
        await require_role(ctx, self.ROLES, self.tls_on)
        secret = bearer(ctx)
        token = self.acl.resolve(secret) if secret else None
        client = f"token:{token.accessor}" if token is not None else self._client(ctx)
        wait = self.limiter.allow(client)
        if wait:
            self.denied["rate", method] += 1
            await ctx.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"too many requests from {client}: at most {self.limiter.rate:g}/s "
                            f"(burst {self.limiter.burst:g}); retry in {wait:.2f}s")
        action = action_of(method)
        if not self.acl_on or action == "anonymous":
            return token
        if token is None:
            why = "an access token is needed (orchctl --token or ORCH_TOKEN)" if not secret \
                else "the access token is unknown or revoked"
            self._deny(ctx, "unauthenticated", method, None, ("", ""))
            await ctx.abort(grpc.StatusCode.UNAUTHENTICATED, why)
        assert token is not None
        target = target_of(method, request, self.state) if action == "job-write" else ("", "")
        if token.allows(action, *target):
            return token
        self._deny(ctx, "forbidden", method, token, target)
        what = f" job {target[0]}/{target[1]}" if target[1] else ""
        await ctx.abort(grpc.StatusCode.PERMISSION_DENIED,
                        f"token {token.name!r} (policies: {', '.join(token.policies)}) may not "
                        f"call {method}{what}")
        return None  # not reached: abort raises

    @staticmethod
    def _client(ctx: Ctx) -> str:
        roles = peer_roles(ctx)
        peer = ctx.peer() or "unknown"
        host = peer.rsplit(":", 1)[0] if peer.startswith(("ipv4:", "ipv6:")) else peer
        return f"cert:{','.join(sorted(roles))}@{host}" if roles else f"peer:{host}"

    def _deny(self, ctx: Ctx, reason: str, method: str, token: Token | None,
              target: tuple[str, str]) -> None:
        self.denied[reason, method] += 1
        log.warning("denied %s", method, extra={
            "reason": reason, "method": method, "peer": ctx.peer(),
            "token": token.name if token else "anonymous",
            "accessor": token.accessor[:8] if token else "",
            "target": f"{target[0]}/{target[1]}" if target[1] else ""})
