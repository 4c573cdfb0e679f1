"""AgentService on every agent: a task's logs, the agent's status, restarts in place.

The controller proxies it, so ``orchctl`` needs only the controller's address.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from agent.runtime import convert
from agent.runtime.driver import Stream
from agent.runtime.runtime import Runtime
from orch.errors import NotFoundError, OrchError
from orch.v1 import controller_pb2, controller_pb2_grpc, node_pb2

Ctx = grpc.aio.ServicerContext[Any, Any]
_TAIL_BYTES_PER_LINE = 512
"""For --tail N: read back N * this many bytes and keep the last N lines of them."""


class AgentService(controller_pb2_grpc.AgentServiceServicer):
    def __init__(self, runtime: Runtime, status: Callable[[], controller_pb2.AgentStatus]) -> None:
        self.runtime = runtime
        self._status = status

    def _task(self, alloc_id: str, task: str) -> str:
        names = self.runtime.task_names(alloc_id)
        if task:
            return task
        if not names:
            raise NotFoundError(f"allocation {alloc_id} has no task yet")
        return names[0]

    async def Logs(self, req: controller_pb2.LogsRequest,
                   ctx: Ctx) -> AsyncIterator[controller_pb2.LogChunk]:
        try:
            task = self._task(req.alloc_id, req.task)
            stream: Stream = "stderr" if req.stderr else "stdout"
            offset = req.offset
            skip_lines = 0
            if req.tail_lines > 0:
                offset = -req.tail_lines * _TAIL_BYTES_PER_LINE
                skip_lines = req.tail_lines
            first = True
            async for chunk in self.runtime.logs(req.alloc_id, task, stream, offset=offset,
                                                 follow=req.follow):
                data = chunk.data
                if first and skip_lines:
                    lines = data.splitlines(keepends=True)
                    if len(lines) > skip_lines:
                        data = b"".join(lines[-skip_lines:])
                first = False
                yield controller_pb2.LogChunk(data=data, offset=chunk.offset)
        except OrchError as e:
            await ctx.abort(grpc.StatusCode.NOT_FOUND if isinstance(e, NotFoundError)
                            else grpc.StatusCode.FAILED_PRECONDITION, str(e))

    async def Status(self, req: controller_pb2.AgentStatusRequest,
                     ctx: Ctx) -> controller_pb2.AgentStatus:
        return self._status()

    async def Restart(self, req: controller_pb2.AllocationRequest, ctx: Ctx) -> node_pb2.Allocation:
        try:
            self.runtime.restart(req.id, req.task or None)
            return convert.status_to_proto(self.runtime.status(req.id))
        except OrchError as e:
            await ctx.abort(grpc.StatusCode.NOT_FOUND if isinstance(e, NotFoundError)
                            else grpc.StatusCode.FAILED_PRECONDITION, str(e))
            raise  # not reached
