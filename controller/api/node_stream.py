"""NodeService: each agent holds one stream to the leader.

Up: the node's registration first, then what happens to its allocations. Down:
the node's full desired set whenever it changes, and the cluster's expected endpoints
(what its load balancer may route to) whenever they change. A controller that is not
the leader answers with where the leader is, and ends the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Literal

import grpc

from controller.cluster import Cluster
from controller.leadership import LeaderStatus
from controller.nodes import NodeMonitor
from controller.usage import UsageTable
from orch.errors import NotLeaderError
from orch.tls import require_role
from orch.v1 import controller_pb2, controller_pb2_grpc

log = logging.getLogger("api")
Ctx = grpc.aio.ServicerContext[Any, Any]


class NodeStream(controller_pb2_grpc.NodeServiceServicer):
    ROLES = frozenset(("agent",))
    """Certificate roles that may hold a node's stream."""

    def __init__(self, *, tls_on: bool, leader: LeaderStatus, monitor: NodeMonitor,
                 cluster: Cluster, usage: UsageTable) -> None:
        self.tls_on = tls_on
        self.leader = leader
        self.monitor = monitor
        self.cluster = cluster
        self.usage = usage

    async def Connect(self, requests: AsyncIterator[controller_pb2.NodeMessage],
                      ctx: Ctx) -> AsyncIterator[controller_pb2.ControllerMessage]:
        await require_role(ctx, self.ROLES, self.tls_on)
        try:
            first = await anext(aiter(requests))
        except StopAsyncIteration:
            return
        if first.WhichOneof("msg") != "register" or not first.register.id:
            await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            "the first message must register the node (with its id)")
            return
        try:
            self.leader.require()
        except NotLeaderError as e:
            yield controller_pb2.ControllerMessage(not_leader=controller_pb2.NotLeader(
                leader=e.leader or "", address=self.leader.leader()[1]))
            return
        monitor, term_over = self.monitor, self.leader.term_over
        node = await monitor.register(first.register)
        # only the newest of each kind matters: one the agent has not taken yet is replaced
        outbox: dict[str, controller_pb2.ControllerMessage] = {}
        ready = asyncio.Event()

        def sink(desired: controller_pb2.DesiredAllocations) -> None:
            outbox["desired"] = controller_pb2.ControllerMessage(desired=desired)
            ready.set()

        def endpoints(expected: controller_pb2.ExpectedEndpoints) -> None:
            outbox["endpoints"] = controller_pb2.ControllerMessage(endpoints=expected)
            ready.set()

        reader = asyncio.create_task(self._read(monitor, node.id, requests))
        over = asyncio.ensure_future(term_over.wait())
        getter: asyncio.Future[Literal[True]] | None = None
        self.cluster.attach_endpoints(node.id, endpoints)  # first: the table, then the work
        self.cluster.attach(node.id, sink)
        try:
            while not reader.done() and not over.done():
                getter = waiting = asyncio.ensure_future(ready.wait())
                await asyncio.wait({waiting, reader, over}, return_when=asyncio.FIRST_COMPLETED)
                if waiting.done():
                    ready.clear()
                    for kind in ("endpoints", "desired"):
                        msg = outbox.pop(kind, None)
                        if msg is not None:
                            yield msg
                else:
                    waiting.cancel()
            if over.done():  # this controller stopped leading: send the agent on
                name, address = self.leader.leader()
                yield controller_pb2.ControllerMessage(not_leader=controller_pb2.NotLeader(
                    leader=name, address=address))
        finally:
            over.cancel()
            if getter is not None:  # the stream was cancelled while it waited
                getter.cancel()
            self.cluster.detach(node.id, sink)
            self.cluster.detach_endpoints(node.id, endpoints)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            monitor.disconnected(node.id)

    async def _read(self, monitor: NodeMonitor, node_id: str,
                    requests: AsyncIterator[controller_pb2.NodeMessage]) -> None:
        try:
            async for msg in requests:
                kind = msg.WhichOneof("msg")
                if kind == "allocations":
                    await monitor.report(node_id, list(msg.allocations.allocations))
                elif kind == "register":
                    await monitor.register(msg.register)
                elif kind == "usage":
                    self.usage.report(node_id, msg.usage)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("agent stream failed", extra={"node_id": node_id})
