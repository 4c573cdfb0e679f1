"""orchctl system gc | operator snapshot save FILE | operator snapshot restore FILE"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from orch.v1 import controller_pb2
from orchctl.client import OK, USAGE, CliError, fail, leader_of
from orchctl.commands import Ctx
from orchctl.output import ago, block, out, to_json

CHUNK = 1 << 20


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    system = sub.add_parser("system", help="the cluster's upkeep: garbage collection")
    verbs = system.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = verbs.add_parser("gc", help="collect now what is garbage (dead jobs, stopped "
                                    "allocations, old evaluations, deployments and versions, "
                                    "down nodes), whatever its age")
    p.set_defaults(fn=gc)
    op = sub.add_parser("operator", help="backups of the controller's state")
    over = op.add_subparsers(dest="object", required=True, metavar="OBJECT")
    snap = over.add_parser("snapshot", help="save the store to a file, or restore it from one")
    sverbs = snap.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = sverbs.add_parser("save", help="a consistent snapshot of the store, to FILE")
    p.add_argument("file", help="where to write it (not overwritten: a new file)")
    p.set_defaults(fn=save)
    p = sverbs.add_parser("restore", help="replace the store's state with a snapshot's (checked "
                                          "whole first); every agent follows it")
    p.add_argument("file")
    p.set_defaults(fn=restore)


async def gc(ctx: Ctx, args: argparse.Namespace) -> int:
    r = await ctx.call(ctx.stub.GarbageCollect(controller_pb2.GarbageCollectRequest(),
                                               timeout=max(ctx.timeout, 300)))
    if ctx.json:
        out(to_json(r))
        return OK
    done = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in sorted(r.collected.items())
                     if n) or "nothing"
    out(f"==> collected {done} in {r.seconds:.2f}s ({r.commits} commits)")
    return OK


async def save(ctx: Ctx, args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # it holds secrets
    except FileExistsError:
        raise CliError(f"{path} exists: choose a new file name", USAGE) from None
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror}", USAGE) from None
    size = 0
    ok = False
    try:
        with os.fdopen(fd, "wb") as f:
            call = ctx.stub.SaveSnapshot(controller_pb2.SaveSnapshotRequest())
            try:
                async for chunk in call:
                    await asyncio.to_thread(f.write, chunk.data)
                    size += len(chunk.data)
            except grpc.aio.AioRpcError as e:
                fail(e, ctx.address)
            f.flush()
            os.fsync(f.fileno())
        ok = size > 0
    finally:
        if not ok:
            with contextlib.suppress(OSError):
                os.unlink(path)
    if not ok:
        raise CliError("the controller sent an empty snapshot")
    out(to_json({"file": str(path), "bytes": size}) if ctx.json
        else f"==> saved a snapshot of {size:,} bytes to {path}")
    return OK


async def restore(ctx: Ctx, args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror}", USAGE) from None
    os.close(fd)

    async def pieces() -> AsyncIterator[controller_pb2.SnapshotChunk]:
        f = os.open(path, os.O_RDONLY)
        try:
            while piece := await asyncio.to_thread(os.read, f, CHUNK):
                yield controller_pb2.SnapshotChunk(data=piece)
        finally:
            os.close(f)

    for attempt in range(2):
        try:
            r = await ctx.stub.RestoreSnapshot(pieces(), timeout=max(ctx.timeout, 600))
            break
        except grpc.aio.AioRpcError as e:
            leader = leader_of(e)
            if attempt or not leader or leader == ctx.address:
                fail(e, ctx.address)
            ctx.session.use(leader)  # a follower: restores are the leader's
    if ctx.json:
        out(to_json(r))
        return OK
    out(f"==> restored a snapshot of the {r.snapshot_store} store taken "
        f"{ago(r.snapshot_time_ns)}")
    out(block([("Cluster", r.cluster_id), ("Jobs", r.jobs), ("Allocations", r.allocations),
               ("Nodes", r.nodes), ("Index", r.index), ("Store epoch", r.epoch)]))
    return OK
