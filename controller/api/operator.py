"""The operator's upkeep of the cluster's state: collecting garbage now, and snapshots of the
store (save one; restore one, which the agents then follow)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

from controller.acl import META_PREFIX, Acl
from controller.api.authz import Authorizer, bearer
from controller.api.rpc import Ctx, Endpoint, streaming, unary
from controller.gc import GarbageCollector
from controller.leadership import LeaderStatus
from controller.snapshot import Snapshots
from controller.trust import META_CONTROLLER
from orch.v1 import controller_pb2


class OperatorEndpoint(Endpoint):
    def __init__(self, authz: Authorizer, leader: LeaderStatus, gc: GarbageCollector,
                 snapshots: Snapshots, acl: Acl, name: str) -> None:
        super().__init__(authz)
        self.leader = leader
        self.gc = gc
        self.snapshots = snapshots
        self.acl = acl
        self.name = name

    @unary
    async def GarbageCollect(self, req: controller_pb2.GarbageCollectRequest,
                             ctx: Ctx) -> controller_pb2.GarbageCollectResponse:
        """Collect now whatever is garbage by its state, whatever its age (Nomad's forced GC)."""
        self.leader.require()
        report = await self.gc.collect(force=True)
        return controller_pb2.GarbageCollectResponse(
            collected=report.collected, commits=report.commits, seconds=report.seconds)

    @streaming
    async def SaveSnapshot(self, req: controller_pb2.SaveSnapshotRequest,
                           ctx: Ctx) -> AsyncIterator[controller_pb2.SnapshotChunk]:
        """A consistent snapshot of the store (any controller: it reads)."""
        async for piece in self.snapshots.save():
            yield controller_pb2.SnapshotChunk(data=piece)

    @unary
    async def RestoreSnapshot(self, requests: AsyncIterator[controller_pb2.SnapshotChunk],
                              ctx: Ctx) -> controller_pb2.RestoreSnapshotResponse:
        """Replace the store's records with a snapshot's (checked whole first), as the leader."""
        self.leader.require()

        async def pieces() -> AsyncIterator[bytes]:
            async for chunk in requests:
                yield chunk.data
        path = await self.snapshots.receive(pieces())
        try:
            keep = [META_CONTROLLER + self.name]
            secret = bearer(ctx)
            token = self.acl.resolve(secret) if secret else None
            if token is not None:  # whoever restores is not locked out by an older snapshot
                keep.append(META_PREFIX + token.accessor)
            header, index, epoch = await self.snapshots.restore(path, keep_meta=tuple(keep))
        finally:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(os.unlink, path)
        state = self.snapshots.cluster.state
        return controller_pb2.RestoreSnapshotResponse(
            cluster_id=state.meta.get("cluster_id", ""), index=index, epoch=epoch,
            jobs=len(state.jobs), allocations=len(state.allocs), nodes=len(state.nodes),
            snapshot_store=header.store, snapshot_time_ns=header.created_ns)
