"""A command run in a process task for a person (``orchctl alloc exec``).

The process driver starts it as it starts the task's exec checks: as the task's user, in
its cgroup, in its folder, with its environment (``process._as_task``). On a terminal it
gets a pseudo-terminal of its own as its controlling terminal (``setsid --ctty``, so ^C and
window sizes reach it); else pipes. Either way it leads a process group of its own, which
``kill`` ends whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import signal
import struct
import subprocess
import termios
from collections.abc import AsyncIterator, Mapping

from orch.execs import MAX_FRAME

from .driver import ExecSession, ExecSpec, Stream

EXIT_DRAIN = 0.5
"""Seconds to read what is left of a command's output once it has exited (what it left
running in the background may hold its output open for ever)."""
_QUEUE = 16
"""Pieces of output read ahead of the client (then the command waits: flow control)."""

_Item = tuple[Stream, bytes] | None


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def set_size(fd: int, rows: int, cols: int) -> None:
    """A terminal's size (the kernel tells its foreground process group: SIGWINCH)."""
    if rows > 0 and cols > 0:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class ProcessExec(ExecSession):
    """A command started by ``start``: its process, and its terminal (or pipes)."""

    def __init__(self, proc: asyncio.subprocess.Process, master: int | None,
                 stdin: bool = False) -> None:
        self._proc = proc
        self._master = master
        self._stdin = stdin
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(_QUEUE)
        self._readers: list[asyncio.Task[None]] = []

    @classmethod
    async def start(cls, argv: list[str], *, env: Mapping[str, str] | None, cwd: str | None,
                    spec: ExecSpec) -> ProcessExec:
        """Start ``argv`` (already wrapped to become the task's user in its cgroup)."""
        if not spec.tty:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=env, cwd=cwd, start_new_session=True,
                stdin=subprocess.PIPE if spec.stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            session = cls(proc, None, spec.stdin)
            assert proc.stdout is not None
            assert proc.stderr is not None
            session._readers = [asyncio.create_task(session._pipe("stdout", proc.stdout)),
                                asyncio.create_task(session._pipe("stderr", proc.stderr))]
            return session
        master, slave = os.openpty()
        try:
            set_size(master, spec.rows, spec.cols)
            # setsid --ctty: a session of its own, with this terminal as its controlling one
            proc = await asyncio.create_subprocess_exec(
                "setsid", "--ctty", "--wait", *argv, env=env, cwd=cwd,
                stdin=slave, stdout=slave, stderr=slave)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        session = cls(proc, master, spec.stdin)
        session._readers = [asyncio.create_task(session._terminal(master))]
        return session

    # --- output ------------------------------------------------------------------------------

    async def _pipe(self, stream: Stream, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                data = await reader.read(MAX_FRAME)
                if not data:
                    return
                await self._queue.put((stream, data))
        finally:
            await self._queue.put(None)

    async def _terminal(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        exited = asyncio.ensure_future(self._proc.wait())
        try:
            while True:
                try:
                    data = os.read(fd, MAX_FRAME)
                except BlockingIOError:
                    if exited.done():
                        return  # it has exited and its terminal is drained
                    ready = loop.create_future()
                    loop.add_reader(fd, _settle, ready)
                    try:
                        await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        loop.remove_reader(fd)
                    continue
                except OSError as e:
                    if e.errno == errno.EIO:  # every holder of the terminal closed it
                        return
                    raise
                if not data:
                    return
                await self._queue.put(("stdout", data))
        finally:
            exited.cancel()
            await self._queue.put(None)

    async def output(self) -> AsyncIterator[tuple[Stream, bytes]]:
        open_readers = len(self._readers)
        cut: asyncio.Task[None] | None = None
        try:
            while open_readers:
                if cut is None:
                    getter = asyncio.ensure_future(self._queue.get())
                    exited = asyncio.ensure_future(self._proc.wait())
                    await asyncio.wait({getter, exited}, return_when=asyncio.FIRST_COMPLETED)
                    if exited.done():
                        cut = asyncio.create_task(self._cut_after(EXIT_DRAIN))
                    else:
                        exited.cancel()
                    if not getter.done():
                        getter.cancel()
                        continue
                    item = getter.result()
                else:
                    item = await self._queue.get()
                if item is None:
                    open_readers -= 1
                else:
                    yield item
        finally:
            if cut is not None:
                cut.cancel()
            for t in self._readers:
                t.cancel()

    async def _cut_after(self, seconds: float) -> None:
        """End the output ``seconds`` after the command exited, whatever still holds it
        (each reader says it ended as it stops)."""
        await asyncio.sleep(seconds)
        for t in self._readers:
            t.cancel()

    # --- input, terminal, end ------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        if not self._stdin:
            return  # it was started to read nothing
        if self._master is not None:
            await self._write_fd(self._master, data)
            return
        stdin = self._proc.stdin
        if stdin is None or stdin.is_closing():
            return
        stdin.write(data)
        with contextlib.suppress(ConnectionError):
            await stdin.drain()

    async def _write_fd(self, fd: int, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                ready = loop.create_future()
                loop.add_writer(fd, _settle, ready)
                try:
                    await ready
                finally:
                    loop.remove_writer(fd)
                continue
            except OSError:
                return  # the terminal is gone: the command has ended
            view = view[n:]

    async def close_stdin(self) -> None:
        if not self._stdin:
            return
        if self._master is not None:
            await self._write_fd(self._master, b"\x04")
        elif self._proc.stdin is not None:
            self._proc.stdin.close()

    async def resize(self, rows: int, cols: int) -> None:
        if self._master is not None:
            with contextlib.suppress(OSError):
                set_size(self._master, rows, cols)

    async def wait(self) -> int:
        code = await self._proc.wait()
        return 128 - code if code < 0 else code

    async def kill(self) -> None:
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._proc.wait(), 10)
        for t in self._readers:
            t.cancel()
        if self._master is not None:
            with contextlib.suppress(OSError):
                os.close(self._master)
            self._master = None
