"""The event log: committed events (after an index, or the latest ones), then new ones as
they come, filtered by topic, type, job or node."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from controller.api.authz import Authorizer
from controller.api.rpc import Ctx, Endpoint, streaming
from controller.cluster import Cluster
from orch.v1 import controller_pb2

MAX_REPLAY = 10_000
"""Events a watch that starts from an index replays at most (then it goes on live)."""


class EventsEndpoint(Endpoint):
    def __init__(self, authz: Authorizer, cluster: Cluster) -> None:
        super().__init__(authz)
        self.cluster = cluster
        self.state = cluster.state

    @streaming
    async def Watch(self, req: controller_pb2.WatchRequest,
                    ctx: Ctx) -> AsyncIterator[controller_pb2.Event]:
        """Committed events (after ``since_index`` when given), then new ones as they come."""
        node_ids: set[str] = set()
        if req.node:
            node_ids = {n.id for n in self.state.find_node(req.node)} or {req.node}

        def wanted(ev: controller_pb2.Event) -> bool:
            return ((not req.topics or ev.topic in req.topics)
                    and (not req.types or ev.type in req.types)
                    and (not req.job or ev.key == req.job or ev.job.name == req.job
                         or ev.allocation.job == req.job or ev.deployment.job == req.job)
                    and (not node_ids or ev.node.id in node_ids
                         or ev.allocation.node_id in node_ids))
        bus = self.cluster.events
        async with bus.subscribe() as q:
            last = req.since_index
            if req.since_index:
                replay = await self.cluster.store.events_since(req.since_index, MAX_REPLAY)
            else:
                replay = list(bus.recent)[-req.tail:] if req.tail > 0 else []
            for ev in replay:
                last = max(last, ev.index)
                if wanted(ev):
                    yield ev
            if not req.follow:
                return
            while True:
                item = await q.get()
                if item is None:
                    await ctx.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    "this watcher fell too far behind; watch again with "
                                    f"--since {last}")
                    return
                if item.index <= last:
                    continue
                last = item.index
                if wanted(item):
                    yield item
