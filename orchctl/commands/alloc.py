"""orchctl alloc status | logs | restart | stop"""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc

from orch.v1 import controller_pb2, node_pb2
from orch.vocab import CLIENT_STATUS, DESIRED_STATUS
from orchctl.client import OK, fail
from orchctl.commands import Ctx
from orchctl.output import ago, block, out, short, table, to_json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    alloc = sub.add_parser("alloc", help="inspect allocations, read their logs")
    verbs = alloc.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = verbs.add_parser("status", help="one allocation in detail (an id prefix is enough)")
    p.add_argument("id")
    p.set_defaults(fn=status)
    p = verbs.add_parser("logs", help="a task's output")
    p.add_argument("id")
    p.add_argument("task", nargs="?", default="")
    p.add_argument("-f", "--follow", action="store_true", help="keep reading as it is written")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--stderr", action="store_true", help="standard error instead of output")
    which.add_argument("--all", action="store_true",
                       help="standard output and error together (each to its own stream)")
    p.add_argument("--tail", type=int, default=0, metavar="N", help="start N lines from the end")
    p.set_defaults(fn=logs)
    p = verbs.add_parser("restart", help="restart an allocation's tasks where they run")
    p.add_argument("id")
    p.add_argument("task", nargs="?", default="")
    p.set_defaults(fn=restart)
    p = verbs.add_parser("stop", help="stop an allocation (the scheduler replaces it)")
    p.add_argument("id")
    p.set_defaults(fn=stop)


def _client(a: node_pb2.Allocation) -> str:
    return CLIENT_STATUS.word(a.client_status)


async def status(ctx: Ctx, args: argparse.Namespace) -> int:
    a = await ctx.call(ctx.stub.GetAllocation(controller_pb2.GetAllocationRequest(id=args.id)))
    if ctx.json:
        out(to_json(a))
        return OK
    ports = ", ".join(f"{k}={v}" for k, v in sorted(a.ports.items()))
    out(block([("ID", a.id), ("Name", a.name), ("Node", a.node_id), ("Job", a.job),
               ("Version", a.job_version),
               ("Desired", DESIRED_STATUS.word(a.desired_status)),
               ("Status", _client(a)), ("Healthy", a.healthy), ("Checks", a.checks_healthy),
               ("Canary", a.canary), ("Ports", ports), ("Description", a.description),
               ("Replaces", short(a.previous_allocation)), ("Created", ago(a.create_time_ns)),
               ("Modified", ago(a.modify_time_ns))]))
    for name, t in sorted(a.tasks.items()):
        out(f"\nTask {name!r}: {t.state}" + (" (failed)" if t.failed else "")
            + f", {t.restarts} restarts" + (f", exit code {t.exit_code}" if t.state == "dead" else ""))
        out(table(("Time", "Type", "Message"),
                  [(ago(e.time_ns), e.type, e.message) for e in list(t.events)[-10:]]))
    return OK


async def logs(ctx: Ctx, args: argparse.Namespace) -> int:
    streams = [False, True] if args.all else [args.stderr]
    await asyncio.gather(*(_copy_log(ctx, args, err) for err in streams))
    return OK


async def _copy_log(ctx: Ctx, args: argparse.Namespace, stderr: bool) -> None:
    req = controller_pb2.LogsRequest(alloc_id=args.id, task=args.task, stderr=stderr,
                                     follow=args.follow, tail_lines=args.tail)
    out = sys.stderr.buffer if stderr and args.all else sys.stdout.buffer
    call = ctx.stub.AllocationLogs(req)
    try:
        async for chunk in call:
            out.write(chunk.data)
            out.flush()
    except grpc.aio.AioRpcError as e:
        if e.code() != grpc.StatusCode.CANCELLED:
            fail(e, ctx.address)


async def restart(ctx: Ctx, args: argparse.Namespace) -> int:
    a = await ctx.call(ctx.stub.RestartAllocation(controller_pb2.AllocationRequest(
        id=args.id, task=args.task)))
    out(to_json(a) if ctx.json else f"==> allocation {short(a.id)} restarted")
    return OK


async def stop(ctx: Ctx, args: argparse.Namespace) -> int:
    a = await ctx.call(ctx.stub.StopAllocation(controller_pb2.AllocationRequest(id=args.id)))
    out(to_json(a) if ctx.json else f"==> allocation {short(a.id)} stopped; a replacement is "
        f"scheduled")
    return OK
