"""Commands in running allocations (``orchctl alloc exec``): a bidirectional stream from the
client, through this controller (the leader), to the agent that runs the allocation.

The gate judges the stream by its first message (the allocation it names: alloc-exec in
its namespace). The controller checks what is asked (a running allocation and task, a
command within the limits), records who runs what where in the event log, then relays
input and terminal sizes down and output up, unchanged, until the command's exit code
comes back; the end is recorded too. Never the stream itself: what a person types and
reads stays between them and the task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc

from controller.api.authz import Authorizer
from controller.api.rpc import Caller, Ctx, Endpoint, opened
from controller.channels import Channels
from controller.cluster import Cluster
from controller.leadership import LeaderStatus
from controller.planner import event
from controller.state import RUN
from controller.store.base import Changes
from orch import execs
from orch.errors import NotFoundError, OrchError, RequestError
from orch.v1 import controller_pb2, controller_pb2_grpc, node_pb2
from orch.vocab import CLIENT_STATUS

log = logging.getLogger("api.exec")

MAX_SESSIONS = 256
"""Commands one controller relays at once (each holds two streams and a few buffers; the
agents limit their own, exec_max_sessions)."""


def caller_name(caller: Caller, ctx: Ctx) -> str:
    """Who, for the event log: the token, the certificate, the address."""
    peer, token = caller
    parts = []
    if token is not None:
        parts.append(f"token {token.name!r} ({token.accessor[:8]})")
    if peer.roles:
        parts.append(f"certificate {peer.name or peer.node_id or '?'} "
                     f"({', '.join(sorted(peer.roles))})")
    return ", ".join(parts) + f" from {ctx.peer() or 'unknown'}" if parts else \
        f"anonymous from {ctx.peer() or 'unknown'}"


def task_to_run(a: node_pb2.Allocation, task: str) -> str:
    """The task a command runs in (the first when none is named); RequestError when the
    allocation or the task does not run."""
    name = f"{a.id[:8]} ({a.name})"
    status = CLIENT_STATUS.word(a.client_status)
    if a.desired_status != RUN:
        raise RequestError(f"allocation {name} is stopped ({status}): a command runs only in "
                           "a running allocation")
    if status != "running":
        raise RequestError(f"allocation {name} is {status}: a command runs only in a running "
                           "allocation")
    names = [t.name for t in a.spec.tasks]
    chosen = task or (names[0] if names else "")
    if chosen not in names:
        raise NotFoundError(f"allocation {name} has no task {chosen!r} (tasks: "
                            f"{', '.join(names) or 'none'})")
    state = a.tasks[chosen].state if chosen in a.tasks else "pending"
    if state != "running":
        raise RequestError(f"task {chosen!r} of allocation {name} is {state}: a command runs "
                           "only in a running task")
    return chosen


class ExecEndpoint(Endpoint):
    def __init__(self, authz: Authorizer, leader: LeaderStatus, cluster: Cluster,
                 channels: Channels) -> None:
        super().__init__(authz)
        self.leader = leader
        self.cluster = cluster
        self.state = cluster.state
        self.channels = channels
        self.active = 0
        """Commands relayed now."""
        self._later: set[asyncio.Task[None]] = set()

    @opened
    async def ExecAllocation(self, first: controller_pb2.ExecRequest | None,
                             requests: AsyncIterator[controller_pb2.ExecRequest], ctx: Ctx,
                             caller: Caller) -> AsyncIterator[controller_pb2.ExecResponse]:
        """Run a command in a running allocation's task, relayed to its agent."""
        if first is None or not first.HasField("start"):
            raise RequestError("the first message must say what to run (start: the "
                               "allocation, the task and the command)")
        start = first.start
        execs.check_start(start)
        self.leader.require()  # it is recorded: the leader writes
        a = self.state.one_alloc(start.alloc_id)
        task = task_to_run(a, start.task)
        if self.active >= MAX_SESSIONS:
            await ctx.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"this controller relays {self.active} commands already; try again "
                            "when one ends")
        fwd = controller_pb2.ExecStart()
        fwd.CopyFrom(start)
        fwd.alloc_id, fwd.task = a.id, task
        stub = controller_pb2_grpc.AgentServiceStub(self.channels.to_agent(a.node_id))
        who = caller_name(caller, ctx)
        what = f"{execs.describe(list(start.command))} in task {task}" + (
            " (on a terminal)" if start.tty else "")
        self.active += 1  # before the first await: the limit holds for calls in between
        try:
            await self._record(a, "AllocationExec", f"{who} runs {what}")
        except BaseException:
            self.active -= 1
            raise
        began = time.monotonic()
        bad: list[str] = []
        code: int | None = None
        ended = "the client went away"
        call: grpc.aio.StreamStreamCall[controller_pb2.ExecRequest,
                                        controller_pb2.ExecResponse] | None = None

        async def upstream() -> AsyncIterator[controller_pb2.ExecRequest]:
            yield controller_pb2.ExecRequest(start=fwd)
            async for msg in requests:
                kind = msg.WhichOneof("msg")
                why = ("only the first message says what to run" if kind == "start" else
                       f"an input message of {len(msg.stdin):,} bytes; at most "
                       f"{execs.MAX_FRAME:,}" if len(msg.stdin) > execs.MAX_FRAME else "")
                if why:
                    bad.append(why)
                    if call is not None:  # (not from inside this generator, which gRPC runs)
                        asyncio.get_running_loop().call_soon(call.cancel)
                    return
                yield msg

        try:
            call = stub.Exec(upstream())
            try:
                async for reply in call:
                    if reply.HasField("exit"):
                        code, ended = reply.exit.code, reply.exit.error
                    yield reply
            except (grpc.aio.AioRpcError, asyncio.CancelledError) as e:
                if bad:
                    ended = bad[0]
                    await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, bad[0])
                if isinstance(e, asyncio.CancelledError):
                    raise
                ended = f"agent on node {a.node_id[:8]}: {e.details()}"
                await ctx.abort(e.code(), ended)
        finally:
            if call is not None:
                call.cancel()
            self.active -= 1
            took = time.monotonic() - began
            result = f"exit code {code}" if code is not None else "no exit code"
            self._later_record(a, "AllocationExecEnded",
                               f"{who}: {what}: {result} after {took:.1f}s"
                               + (f" ({ended})" if ended else ""))

    async def _record(self, a: node_pb2.Allocation, kind: str, message: str) -> None:
        ref = node_pb2.Allocation(id=a.id, name=a.name, namespace=a.namespace, job=a.job,
                                  group=a.group, node_id=a.node_id)
        await self.cluster.write(Changes(events=[event(
            "allocation", kind, a.id, message, time.time_ns(), allocation=ref)]))

    def _later_record(self, a: node_pb2.Allocation, kind: str, message: str) -> None:
        """Record the end without holding up the stream's end (or failing it)."""
        async def write() -> None:
            try:
                await self._record(a, kind, message)
            except OrchError as e:
                log.warning("could not record the end of a command", extra={
                    "alloc": a.id, "error": str(e), "message": message})
        task = asyncio.ensure_future(write())
        self._later.add(task)
        task.add_done_callback(self._later.discard)
