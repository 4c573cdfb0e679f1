"""``orchctl job logs``: every allocation's output, line by line, each line prefixed with
its allocation and task.

Built on two streams the controller already serves: each task's output comes from its
agent through the controller (``AllocationLogs``, as ``alloc logs``), and, with
``--follow``, the event log (``Watch``) says when an allocation of the job starts running,
so its output joins in; an allocation that stops ends its own streams. Lines of different
streams interleave as they come; a line is never cut by another's (a line longer than
``MAX_LINE`` is written in pieces). At most ``MAX_STREAMS`` streams at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import grpc

from orch.v1 import controller_pb2, controller_pb2_grpc, node_pb2
from orch.vocab import namespace_of

MAX_LINE = 64 * 1024
"""Bytes of one line held back waiting for its end; a longer one is written in pieces."""
MAX_STREAMS = 128
"""Task streams followed at once (allocations x tasks x stdout/stderr); the rest are named
and left out (narrow with --group or --task)."""
LIVE = frozenset((node_pb2.CLIENT_STATUS_PENDING, node_pb2.CLIENT_STATUS_RUNNING))


class Lines:
    """Bytes in, whole lines out (with their newline); a partial line waits for the rest, up
    to ``limit`` bytes."""

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.limit = limit
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._buf.extend(data)
        while True:
            end = self._buf.find(b"\n")
            if end < 0 and len(self._buf) < self.limit:
                return
            cut = end + 1 if 0 <= end < self.limit else self.limit
            line = bytes(self._buf[:cut])
            del self._buf[:cut]
            yield line

    def rest(self) -> bytes:
        """What is left (a last line without its newline)."""
        out = bytes(self._buf)
        self._buf.clear()
        return out


@dataclass(frozen=True, slots=True)
class Source:
    """One task stream of one allocation."""

    alloc_id: str
    alloc_name: str
    task: str
    stderr: bool

    @property
    def prefix(self) -> str:
        return f"{self.alloc_name} {self.alloc_id[:8]} {self.task}"


@dataclass
class Options:
    job: str
    namespace: str = ""
    group: str = ""
    task: str = ""
    follow: bool = False
    since_ns: int = 0
    tail: int = 0
    streams: tuple[bool, ...] = (False,)
    """stderr or not, for each stream wanted (stdout: False)."""


@dataclass
class Printer:
    """Writes lines with their prefix, aligned, to stdout (stderr lines to stderr); or as
    JSON objects, one a line."""

    json: bool = False
    out: BinaryIO = field(default_factory=lambda: sys.stdout.buffer)
    err: BinaryIO = field(default_factory=lambda: sys.stderr.buffer)
    width: int = 0

    def line(self, src: Source, data: bytes) -> None:
        if self.json:
            doc = {"alloc_id": src.alloc_id, "alloc": src.alloc_name, "task": src.task,
                   "stream": "stderr" if src.stderr else "stdout",
                   "line": data.rstrip(b"\n").decode(errors="replace")}
            self.out.write(json.dumps(doc).encode() + b"\n")
            self.out.flush()
            return
        self.width = max(self.width, len(src.prefix))
        target = self.err if src.stderr else self.out
        target.write(f"{src.prefix.ljust(self.width)} | ".encode() + data
                     + (b"" if data.endswith(b"\n") else b"\n"))
        target.flush()

    def note(self, text: str) -> None:
        sys.stderr.write(f"orchctl: {text}\n")
        sys.stderr.flush()


class JobLogs:
    """Follows the task streams of a job's allocations (``run``); ``fail`` turns an RPC
    error into orchctl's error."""

    def __init__(self, stub: controller_pb2_grpc.ControllerServiceAsyncStub, opts: Options,
                 printer: Printer, fail: Callable[[grpc.aio.AioRpcError], None]) -> None:
        self.stub = stub
        self.opts = opts
        self.printer = printer
        self.fail = fail
        self.followed: set[Source] = set()
        self.errors: list[grpc.aio.AioRpcError] = []
        """What ended a stream that should not have ended so (reported once all end)."""
        self._tasks: set[asyncio.Task[None]] = set()

    def wanted(self, a: node_pb2.Allocation) -> bool:
        return ((not self.opts.group or a.group == self.opts.group)
                and namespace_of(a.namespace) == namespace_of(self.opts.namespace)
                and a.job == self.opts.job)

    def sources(self, a: node_pb2.Allocation) -> list[Source]:
        tasks = [t.name for t in a.spec.tasks] or sorted(a.tasks)
        if self.opts.task:
            tasks = [t for t in tasks if t == self.opts.task]
        return [Source(a.id, a.name, t, err) for t in tasks for err in self.opts.streams]

    async def run(self) -> None:
        watch = None
        if self.opts.follow:  # first, so that nothing starting meanwhile is missed
            watch = self.stub.Watch(controller_pb2.WatchRequest(
                topics=["allocation"], types=["AllocationRunning"], job=self.opts.job,
                follow=True))
        try:
            listed = await self.stub.GetJob(controller_pb2.GetJobRequest(  # NOT_FOUND: no job
                name=self.opts.job, namespace=self.opts.namespace))
        except grpc.aio.AioRpcError as e:
            if watch is not None:
                watch.cancel()
            self.fail(e)
            return
        # allocations that run or ran (a pending one has written nothing yet: with --follow
        # it joins once it runs)
        allocs = [a for a in listed.allocations if self.wanted(a)
                  and a.client_status != node_pb2.CLIENT_STATUS_PENDING
                  and (a.desired_status == node_pb2.DESIRED_STATUS_RUN or a.client_status in LIVE)]
        if self.opts.task and allocs and not any(self.sources(a) for a in allocs):
            tasks = sorted({t.name for a in allocs for t in a.spec.tasks})
            self.printer.note(f"job {self.opts.job!r} has no task {self.opts.task!r} "
                              f"(tasks: {', '.join(tasks)})")
        for a in allocs:
            self.start(a)
        if watch is not None:
            try:
                async for ev in watch:
                    if self.wanted(ev.allocation):
                        self.start(ev.allocation)
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.CANCELLED:
                    self.errors.append(e)
            finally:
                watch.cancel()
        await self._drain()
        if self.errors:
            self.fail(self.errors[0])

    def start(self, a: node_pb2.Allocation) -> None:
        """Follow the streams of ``a`` not followed yet."""
        for src in self.sources(a):
            if src in self.followed:
                continue
            if len(self._tasks) >= MAX_STREAMS:
                self.printer.note(f"{MAX_STREAMS} streams followed already: leaving out "
                                  f"{src.prefix} ({'stderr' if src.stderr else 'stdout'}); "
                                  "narrow with --group or --task")
                continue
            self.followed.add(src)
            task = asyncio.ensure_future(self._copy(src))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _copy(self, src: Source) -> None:
        req = controller_pb2.LogsRequest(alloc_id=src.alloc_id, task=src.task,
                                         stderr=src.stderr, follow=self.opts.follow,
                                         since_ns=self.opts.since_ns,
                                         tail_lines=self.opts.tail)
        lines = Lines()
        call = self.stub.AllocationLogs(req)
        try:
            async for chunk in call:
                for line in lines.feed(chunk.data):
                    self.printer.line(src, line)
        except grpc.aio.AioRpcError as e:
            # a task that has not run (or was removed), or a node that is gone, has no logs
            # to show: said, and left for the next time the allocation runs
            self.followed.discard(src)
            if e.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE,
                            grpc.StatusCode.FAILED_PRECONDITION):
                self.printer.note(f"{src.prefix}: {e.details()}")
            elif e.code() != grpc.StatusCode.CANCELLED:
                self.errors.append(e)
        finally:
            call.cancel()
            rest = lines.rest()
            if rest:
                self.printer.line(src, rest)

    async def _drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
