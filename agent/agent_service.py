"""AgentService on every agent: a task's logs, the agent's status, restarts in place,
commands run in tasks.

The controller proxies it, so ``orchctl`` needs only the controller's address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from agent.runtime import convert
from agent.runtime.driver import ExecSession, ExecSpec, Stream
from agent.runtime.runtime import Runtime, TaskRun
from orch import execs
from orch.errors import NotFoundError, OrchError, RequestError
from orch.tls import require_role
from orch.v1 import controller_pb2, controller_pb2_grpc, node_pb2

log = logging.getLogger("agent.exec")

Ctx = grpc.aio.ServicerContext[Any, Any]
FOLLOW_POLL = 0.5
"""Seconds between looks at a task that stopped, while a follower waits for its next run."""
_TAIL_BYTES_PER_LINE = 512
"""For --tail N: read back N * this many bytes and keep the last N lines of them."""


class AgentService(controller_pb2_grpc.AgentServiceServicer):
    ROLES = frozenset(("controller",))
    """Only controllers (which proxy orchctl's requests) may call an agent."""

    def __init__(self, runtime: Runtime, status: Callable[[], controller_pb2.AgentStatus],
                 tls_on: bool = False,
                 keyring: Callable[[controller_pb2.KeyringRequest],
                                   controller_pb2.MemberKeyring] | None = None,
                 *, exec_max_sessions: int = 16, exec_idle_timeout: float = 1800.0) -> None:
        self.runtime = runtime
        self._status = status
        self._tls_on = tls_on
        self._keyring = keyring
        self.exec_max_sessions = exec_max_sessions
        self.exec_idle_timeout = exec_idle_timeout
        self.execs = 0
        """Commands running for people now."""

    def _task(self, alloc_id: str, task: str) -> str:
        names = self.runtime.task_names(alloc_id)
        if task:
            return task
        if not names:
            raise NotFoundError(f"allocation {alloc_id} has no task yet")
        return names[0]

    async def Logs(self, req: controller_pb2.LogsRequest,
                   ctx: Ctx) -> AsyncIterator[controller_pb2.LogChunk]:
        await require_role(ctx, self.ROLES, self._tls_on)
        try:
            task = self._task(req.alloc_id, req.task)
            stream: Stream = "stderr" if req.stderr else "stdout"
            offset = req.offset
            skip_lines = 0
            if req.since_ns > 0:
                offset = await self.runtime.log_offset(req.alloc_id, task, stream, req.since_ns)
            elif req.tail_lines > 0:
                offset = -req.tail_lines * _TAIL_BYTES_PER_LINE
                skip_lines = req.tail_lines
            first = True
            run = self.runtime.task_run(req.alloc_id, task)
            while True:
                async for chunk in self.runtime.logs(req.alloc_id, task, stream, offset=offset,
                                                     follow=req.follow):
                    data = chunk.data
                    if first and skip_lines:
                        lines = data.splitlines(keepends=True)
                        if len(lines) > skip_lines:
                            data = b"".join(lines[-skip_lines:])
                    first = False
                    offset = chunk.offset + len(chunk.data)
                    yield controller_pb2.LogChunk(data=data, offset=chunk.offset)
                if not req.follow:
                    return
                # the task stopped: follow it into its next run, unless it is done for good
                nxt = await self._next_run(req.alloc_id, task, run)
                if nxt is None:
                    return
                if nxt.handle != run.handle and self._new_container(req.alloc_id, task):
                    offset = 0  # another container: a log of its own
                run = nxt  # a process task's files, or a container started again: appended
        except OrchError as e:
            await ctx.abort(grpc.StatusCode.NOT_FOUND if isinstance(e, NotFoundError)
                            else grpc.StatusCode.FAILED_PRECONDITION, str(e))

    async def _next_run(self, alloc_id: str, task: str, run: TaskRun) -> TaskRun | None:
        """Wait until the task runs again (another process or container, or the same
        container started again), or None when it will not."""
        while True:
            await asyncio.sleep(FOLLOW_POLL)
            try:
                now = self.runtime.task_run(alloc_id, task)
                status = self.runtime.status(alloc_id)
            except NotFoundError:
                return None
            if now.state == "running" and now and (now.handle, now.started_at_ns) != (
                    run.handle, run.started_at_ns):
                return now
            if status.client_status in ("complete", "failed", "lost"):
                return None

    def _new_container(self, alloc_id: str, task: str) -> bool:
        """Whether a new handle writes a log of its own (Docker: a new container) rather than
        appending to the task's files (the process driver)."""
        spec = self.runtime.specs().get(alloc_id)
        return spec is not None and any(t.name == task and t.driver == "docker"
                                        for t in spec.group.tasks)

    async def Status(self, req: controller_pb2.AgentStatusRequest,
                     ctx: Ctx) -> controller_pb2.AgentStatus:
        await require_role(ctx, self.ROLES, self._tls_on)
        return self._status()

    async def Restart(self, req: controller_pb2.AllocationRequest, ctx: Ctx) -> node_pb2.Allocation:
        await require_role(ctx, self.ROLES, self._tls_on)
        try:
            self.runtime.restart(req.id, req.task or None)
            return convert.alloc_status_to_proto(self.runtime.status(req.id))
        except OrchError as e:
            await ctx.abort(grpc.StatusCode.NOT_FOUND if isinstance(e, NotFoundError)
                            else grpc.StatusCode.FAILED_PRECONDITION, str(e))
            raise  # not reached

    async def Keyring(self, req: controller_pb2.KeyringRequest,
                      ctx: Ctx) -> controller_pb2.MemberKeyring:
        await require_role(ctx, self.ROLES, self._tls_on)
        if self._keyring is None:
            await ctx.abort(grpc.StatusCode.UNIMPLEMENTED, "this agent has no gossip keyring")
        assert self._keyring is not None
        return self._keyring(req)

    # --- commands run for people ------------------------------------------------------------

    async def Exec(self, requests: AsyncIterator[controller_pb2.ExecRequest],
                   ctx: Ctx) -> AsyncIterator[controller_pb2.ExecResponse]:
        """A command in a running task: what to run first, then input and terminal sizes;
        back come its output and its exit code. At most ``exec_max_sessions`` at once; one
        without input or output for ``exec_idle_timeout`` seconds is killed."""
        await require_role(ctx, self.ROLES, self._tls_on)
        try:
            async with asyncio.timeout(execs.OPEN_TIMEOUT):
                first = await anext(aiter(requests), None)
        except TimeoutError:
            first = None
        if first is None or first.WhichOneof("msg") != "start":
            await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            "the first message must say what to run (start)")
        assert first is not None
        start = first.start
        try:
            execs.check_start(start)
        except RequestError as e:
            await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if self.execs >= self.exec_max_sessions:
            await ctx.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"this node runs {self.execs} commands for people already (its "
                            f"exec_max_sessions); try again when one ends")
        self.execs += 1
        try:
            spec = ExecSpec(argv=tuple(start.command), tty=start.tty, stdin=start.stdin,
                            rows=start.size.rows, cols=start.size.cols,
                            term=start.term or "xterm")
            try:
                session = await self.runtime.exec_session(start.alloc_id, start.task, spec)
            except OrchError as e:
                await ctx.abort(grpc.StatusCode.NOT_FOUND if isinstance(e, NotFoundError)
                                else grpc.StatusCode.FAILED_PRECONDITION, str(e))
                raise  # not reached
            log.info("exec started", extra={"alloc": start.alloc_id, "task": start.task,
                                             "command": execs.describe(list(start.command)),
                                             "tty": start.tty})
            async for reply in self._serve(session, requests, ctx):
                yield reply
        finally:
            self.execs -= 1

    async def _serve(self, session: ExecSession,
                     requests: AsyncIterator[controller_pb2.ExecRequest],
                     ctx: Ctx) -> AsyncIterator[controller_pb2.ExecResponse]:
        loop = asyncio.get_running_loop()
        last = [loop.time()]
        why: list[str] = []
        bad: list[str] = []

        async def pump() -> None:
            async for msg in requests:
                last[0] = loop.time()
                kind = msg.WhichOneof("msg")
                if kind == "stdin":
                    if len(msg.stdin) > execs.MAX_FRAME:
                        bad.append(f"an input message of {len(msg.stdin):,} bytes; at most "
                                   f"{execs.MAX_FRAME:,}")
                        await session.kill()
                        return
                    await session.write(msg.stdin)
                elif kind == "eof":
                    await session.close_stdin()
                elif kind == "resize":
                    try:
                        execs.check_size(msg.resize)
                    except RequestError as e:
                        bad.append(str(e))
                        await session.kill()
                        return
                    await session.resize(msg.resize.rows, msg.resize.cols)
                elif kind == "start":
                    bad.append("only the first message says what to run")
                    await session.kill()
                    return
            await session.close_stdin()  # the client sends nothing more: the end of input

        async def watchdog() -> None:
            idle = self.exec_idle_timeout
            while True:
                await asyncio.sleep(max(0.05, min(idle / 4, 5.0)))
                if loop.time() - last[0] > idle:
                    why.append(f"no input or output for {idle:g}s: killed (the node's "
                               "exec_idle_timeout)")
                    await session.kill()
                    return

        helpers = [asyncio.create_task(pump()), asyncio.create_task(watchdog())]
        try:
            async for stream, data in session.output():
                last[0] = loop.time()
                yield (controller_pb2.ExecResponse(stdout=data) if stream == "stdout"
                       else controller_pb2.ExecResponse(stderr=data))
            if bad:
                await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, bad[0])
            try:
                code = await session.wait()
            except OrchError as e:
                await ctx.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
                raise  # not reached
            log.info("exec ended", extra={"code": code, "reason": why[0] if why else ""})
            yield controller_pb2.ExecResponse(exit=controller_pb2.ExecExit(
                code=code, error=why[0] if why else ""))
        finally:
            for t in helpers:
                t.cancel()
            for t in helpers:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            await session.kill()  # what still runs ends; what the session holds is released
