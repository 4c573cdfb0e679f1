"""Starting a short-lived command from the agent, safely in a process with threads.

The agent is a process with threads (gRPC's C core calls into Python from threads it made
itself, the store's and asyncio's executors) on uvloop. uvloop's subprocesses fork and then
run Python in the child (``PyOS_AfterFork_Child``: ``threading._after_fork``), which is not
safe after a fork of a process with threads: the child can crash (SIGSEGV) before it ever
runs the command, and an exec health check then reports a healthy task unhealthy at random.

``run`` starts the command with ``posix_spawn`` instead (glibc's vfork-like clone: no
Python, no fork handlers run in the child), in a session of its own (so a timeout kills
everything it started), with stdin from /dev/null and stdout and stderr into one pipe, and
waits for its exit through a pidfd (nothing polls, nothing else reaps it). ``posix_spawn``
cannot change directory, so a working directory is entered by ``/bin/sh`` just before it
runs the command (``exec``: no shell is left in between).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence

MAX_OUTPUT = 64 * 1024
"""Bytes of output kept (the rest is read and dropped, so the command never blocks on it)."""
CD = 'cd -- "$1" || exit 126; shift; exec "$@"'
"""Enters the working directory, then becomes the command."""


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _reap(pid: int) -> int:
    """The exit code of ``pid`` (minus the signal that ended it), reaping it (-1: reaped
    already)."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return -1
    return os.waitstatus_to_exitcode(status)


async def run(argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              cwd: str | None = None, max_output: int = MAX_OUTPUT) -> tuple[int, bytes]:
    """Run ``argv``: (its exit code, negative for a signal; its output, stdout and stderr
    together, at most ``max_output`` bytes). OSError when it cannot be started. Cancelling
    kills it and everything it started, and reaps it."""
    args = list(argv)
    if cwd:
        args = ["/bin/sh", "-c", CD, "sh", cwd, *args]
    program = args[0]
    if "/" not in program:
        found = _which(program, (env or os.environ).get("PATH", os.defpath))
        if found is None:
            raise FileNotFoundError(2, "No such file or directory", program)
        program = found
    pid, read_end = _start(program, args, dict(env if env is not None else os.environ))
    loop = asyncio.get_running_loop()
    out = bytearray()
    eof: asyncio.Future[None] = loop.create_future()
    exited: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        try:
            chunk = os.read(read_end, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            if len(out) < max_output:
                out.extend(chunk[:max_output - len(out)])
        elif not eof.done():
            eof.set_result(None)

    def gone() -> None:
        if not exited.done():
            exited.set_result(None)

    os.set_blocking(read_end, False)
    loop.add_reader(read_end, readable)
    pidfd = os.pidfd_open(pid)
    loop.add_reader(pidfd, gone)
    try:
        await exited
        # what it wrote before it exited is in the pipe; a child it left may hold the pipe
        # open: read what is there, then stop waiting
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                await eof
        return await asyncio.to_thread(_reap, pid), bytes(out)
    except BaseException:
        _kill_group(pid)
        await asyncio.shield(asyncio.to_thread(_reap, pid))
        raise
    finally:
        loop.remove_reader(read_end)
        loop.remove_reader(pidfd)
        os.close(read_end)
        os.close(pidfd)


def _start(program: str, args: list[str], env: dict[str, str]) -> tuple[int, int]:
    """posix_spawn ``args`` in a new session: (its pid, the read end of its output). It
    returns as soon as the child has exec'd (or failed to: OSError)."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.posix_spawn(program, args, env, setsid=True, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, write_end, 1),
            (os.POSIX_SPAWN_DUP2, write_end, 2)])
    except OSError:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    return pid, read_end


def _which(program: str, path: str) -> str | None:
    for folder in path.split(os.pathsep):
        candidate = os.path.join(folder or ".", program)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None
