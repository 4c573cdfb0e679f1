"""orchctl alloc status | logs | exec | restart | stop"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import stat
import sys
import termios
import tty
from collections.abc import AsyncIterator, Iterator

import grpc

from orch.execs import MAX_FRAME
from orch.v1 import controller_pb2, node_pb2
from orch.vocab import ALLOC_HEALTH, CLIENT_STATUS, DESIRED_STATUS
from orchctl.client import FAILED, OK, USAGE, CliError, fail
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
    p = verbs.add_parser(
        "exec", help="run a command in a running allocation's task",
        usage="orchctl alloc exec [-i] [-t] ALLOC [--task TASK] -- CMD [ARGS...]",
        description="Run a command in a running allocation's task, as the task's user and "
                    "where it runs; its exit code is orchctl's. Needs the alloc-exec "
                    "capability in the allocation's namespace; the event log records who "
                    "ran what.")
    p.add_argument("-i", "--interactive", action="store_true",
                   help="send this input to the command (else it reads nothing)")
    p.add_argument("-t", "--tty", action="store_true",
                   help="run it on a terminal, sized and resized as this one")
    p.add_argument("--task", default="", help="the task (default: the group's first)")
    p.add_argument("id", help="the allocation (a unique id prefix is enough)")
    p.add_argument("command", nargs=argparse.REMAINDER,
                   help="after --: the program and its arguments")
    p.set_defaults(fn=exec_command, options=p)
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
               ("Node's verdict", ALLOC_HEALTH.word(a.deployment_health) or "-"),
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


INPUT_CHUNK = MAX_FRAME // 2
"""Bytes of input read at once (an input message carries at most MAX_FRAME)."""
_QUEUE = 64
"""Messages waiting to go up (input read ahead of the stream)."""


async def exec_command(ctx: Ctx, args: argparse.Namespace) -> int:
    """``orchctl alloc exec``: the command's exit code, or 1 when it could not run."""
    argv = list(args.command)
    if argv[:1] != ["--"] and argv[:1] and argv[0].startswith("-") and "--" in argv:
        # options after the allocation (ALLOC --task T -- CMD): they end at --
        cut = argv.index("--")
        args.options.parse_args([*argv[:cut], args.id], namespace=args)
        argv = argv[cut + 1:]
    elif argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise CliError("no command: orchctl alloc exec ALLOC -- CMD [ARGS...]", USAGE)
    # the leader records who runs what: talk to it
    info = await ctx.call(ctx.stub.GetLeader(controller_pb2.GetLeaderRequest()))
    if not info.is_self and info.address:
        ctx.session.use(info.address)
    stdin_fd = sys.stdin.fileno() if args.interactive else -1
    local_tty = args.tty and args.interactive and os.isatty(stdin_fd)
    start = controller_pb2.ExecStart(
        alloc_id=args.id, task=args.task, command=argv, tty=args.tty, stdin=args.interactive,
        size=_size() if args.tty else None, term=os.environ.get("TERM", "") if args.tty else "")
    queue: asyncio.Queue[controller_pb2.ExecRequest | None] = asyncio.Queue(_QUEUE)

    async def requests() -> AsyncIterator[controller_pb2.ExecRequest]:
        yield controller_pb2.ExecRequest(start=start)
        while (msg := await queue.get()) is not None:
            yield msg

    code: int | None = None
    error = ""
    failure: grpc.aio.AioRpcError | None = None
    with _raw(stdin_fd if local_tty else -1), _input(stdin_fd, queue), _resizes(args.tty, queue):
        call = ctx.stub.ExecAllocation(requests())
        try:
            async for reply in call:
                kind = reply.WhichOneof("msg")
                if kind == "stdout":
                    sys.stdout.buffer.write(reply.stdout)
                    sys.stdout.buffer.flush()
                elif kind == "stderr":
                    sys.stderr.buffer.write(reply.stderr)
                    sys.stderr.buffer.flush()
                elif kind == "exit":
                    code, error = reply.exit.code, reply.exit.error
        except grpc.aio.AioRpcError as e:
            failure = e
        finally:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
            call.cancel()
    if failure is not None:
        fail(failure, ctx.address)
    if error:
        print(f"orchctl: {error}", file=sys.stderr)
    return FAILED if code is None else code & 0xFF


def _size() -> controller_pb2.TerminalSize | None:
    for stream in (sys.stdout, sys.stdin, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            cols, rows = os.get_terminal_size(stream.fileno())
            return controller_pb2.TerminalSize(rows=rows, cols=cols)
    return None


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[None]:
    """This terminal in raw mode (keys go to the remote terminal as typed), then as it was."""
    if fd < 0:
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSADRAIN)  # input typed ahead is kept
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _input(fd: int, queue: asyncio.Queue[controller_pb2.ExecRequest | None]) -> Iterator[None]:
    """Input read as it comes and sent up, then its end (nothing when ``fd`` < 0)."""
    if fd < 0:
        yield
        return
    task = asyncio.ensure_future(_read_input(fd, queue))
    try:
        yield
    finally:
        task.cancel()


async def _read_input(fd: int, queue: asyncio.Queue[controller_pb2.ExecRequest | None]) -> None:
    """Pieces of input as they come (a full queue holds the reading up: the stream is
    behind). The file descriptor stays as it is (blocking: the shell shares it); it is read
    once it is readable, so a read does not wait."""
    loop = asyncio.get_running_loop()
    regular = stat.S_ISREG(os.fstat(fd).st_mode)  # a file is always readable
    while True:
        if not regular:
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(fd, _settle, ready)
            try:
                await ready
            finally:
                loop.remove_reader(fd)
        data = os.read(fd, INPUT_CHUNK)
        if not data:
            await queue.put(controller_pb2.ExecRequest(eof=True))
            return
        await queue.put(controller_pb2.ExecRequest(stdin=data))


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


@contextlib.contextmanager
def _resizes(on: bool, queue: asyncio.Queue[controller_pb2.ExecRequest | None]) -> Iterator[None]:
    """The terminal's new size sent up whenever it changes (SIGWINCH)."""
    if not on:
        yield
        return
    loop = asyncio.get_running_loop()

    def resized() -> None:
        size = _size()
        if size is not None:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(controller_pb2.ExecRequest(resize=size))
    loop.add_signal_handler(signal.SIGWINCH, resized)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGWINCH)
