"""The unit tier's rule, enforced: a unit test opens no network connection and binds no socket,
starts no process and never sleeps, so the whole tier runs in well under a minute anywhere.

Every unit test's setup, call and teardown run with these guarded:

* sockets: ``socket.socket.bind``, ``connect``, ``connect_ex`` and ``sendto`` (making a socket is
  allowed: every asyncio event loop makes a ``socket.socketpair`` to wake itself up);
* processes: ``subprocess.Popen`` (so ``subprocess.run`` and friends), ``os.fork``,
  ``os.forkpty``, ``os.posix_spawn``/``posix_spawnp``, ``os.system``,
  ``asyncio.create_subprocess_exec``/``_shell``, and ``_posixsubprocess.fork_exec`` beneath
  them all (multiprocessing's spawn and forkserver start their processes with it);
* sleeps: ``time.sleep`` and ``asyncio.sleep`` with a positive delay (a zero delay is a plain
  yield to the other threads or tasks, and stays allowed).

A guarded call raises ``UnitTierViolation`` (a socket it was called on is closed first) and
the test fails saying what it did, even when the code under test swallowed that exception.
Threads the test started are guarded too; threads that were already running when it began
(left over from an earlier tier in the same session) are not the test's doing and are left
alone. A unit test marked ``etcd``, ``docker``, ``e2e`` or ``fuzz`` fails as well: those
markers belong to the other tiers. Tests that need any of this belong in tests/integration
(or tests/e2e, tests/fuzz); tests/integration/test_unit_guard.py shows that the guard catches
each of them and leaves asyncio, hypothesis and pytest-timeout working.
"""

from __future__ import annotations

import _posixsubprocess
import asyncio
import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

MOVE = "unit tests may not use sockets, processes or sleeps: move this test to tests/integration"
OTHER_TIERS = ("etcd", "docker", "e2e", "fuzz")
"""Markers of the tests that need what the unit tier does not have."""


class UnitTierViolation(Exception):
    """A unit test did what only integration tests may do."""


class _Guard:
    def __init__(self) -> None:
        self.found: list[str] = []
        self._main = threading.get_ident()
        self._before = {t.ident for t in threading.enumerate()}

    def applies(self) -> bool:
        """Whether the calling thread is the test's: the main one, or one started since."""
        ident = threading.get_ident()
        return ident == self._main or ident not in self._before

    def forbid(self, what: str) -> None:
        message = f"{what} ({MOVE})"
        self.found.append(message)
        raise UnitTierViolation(message)

    def wrap(self, what: str, real: Callable[..., Any],
             describe: Callable[..., str] = lambda *a, **kw: "") -> Callable[..., Any]:
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if self.applies():
                self.forbid(f"{what}{describe(*args, **kwargs)}")
            return real(*args, **kwargs)
        return guarded


def _address(sock: socket.socket, address: Any, *rest: Any) -> str:
    """Where a socket call goes; the socket is closed, since the call will not happen (so
    that no unclosed socket is reported later, in another test)."""
    sock.close()
    # sendto(data, address) and sendto(data, flags, address): the address comes last
    where = rest[-1] if rest else address
    return f" {where!r}"


@contextlib.contextmanager
def _guarded() -> Iterator[_Guard]:
    guard = _Guard()
    mp = pytest.MonkeyPatch()
    try:
        for name in ("bind", "connect", "connect_ex"):
            mp.setattr(socket.socket, name,
                       guard.wrap(f"socket.{name}", getattr(socket.socket, name), _address))
        mp.setattr(socket.socket, "sendto",
                   guard.wrap("socket.sendto", socket.socket.sendto,
                              lambda sock, data, *rest: _address(sock, *rest)))
        mp.setattr(subprocess.Popen, "__init__",
                   guard.wrap("subprocess.Popen", subprocess.Popen.__init__,
                              lambda popen, *a, **kw: f" {a[0] if a else kw.get('args')!r}"))
        for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system"):
            if hasattr(os, name):
                mp.setattr(os, name, guard.wrap(f"os.{name}", getattr(os, name)))
        mp.setattr(_posixsubprocess, "fork_exec",
                   guard.wrap("_posixsubprocess.fork_exec", _posixsubprocess.fork_exec,
                              lambda args, *a, **kw: f" {args!r}"))
        for name in ("create_subprocess_exec", "create_subprocess_shell"):
            real = getattr(asyncio, name)
            mp.setattr(asyncio, name, guard.wrap(f"asyncio.{name}", real))
            mp.setattr(asyncio.subprocess, name, guard.wrap(f"asyncio.{name}", real))

        real_sleep = time.sleep

        def sleep(seconds: float) -> None:
            if seconds > 0 and guard.applies():
                guard.forbid(f"time.sleep({seconds!r})")
            real_sleep(seconds)

        real_async_sleep = asyncio.sleep

        async def async_sleep(delay: float, result: Any = None) -> Any:
            if delay > 0 and guard.applies():
                guard.forbid(f"asyncio.sleep({delay!r})")
            return await real_async_sleep(delay, result)

        mp.setattr(time, "sleep", sleep)
        mp.setattr(asyncio, "sleep", async_sleep)
        mp.setattr(asyncio.tasks, "sleep", async_sleep)
        yield guard
    finally:
        mp.undo()


def _violation(found: list[str]) -> BaseException:
    return pytest.fail.Exception("\n".join(found), pytrace=False)


def _enforced() -> Generator[None, object, object]:
    """The body of the three hook wrappers: the phase runs guarded, and fails if it broke the
    rule (whether or not the code under test let the exception through)."""
    with _guarded() as guard:
        try:
            result = yield
        except BaseException:
            if guard.found:
                raise _violation(guard.found) from None
            raise
    if guard.found:
        raise _violation(guard.found)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    marked = [m for m in OTHER_TIERS if item.get_closest_marker(m) is not None]
    if marked:
        pytest.fail(f"unit tests may not be marked {', '.join(marked)}: move this test to "
                    "tests/integration (or tests/e2e, tests/fuzz)", pytrace=False)
    return (yield from _enforced())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _enforced())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None
                            ) -> Generator[None, object, object]:
    if nextitem is None or UNIT not in nextitem.path.parents:
        # the last unit test's teardown also finalizes the session's wider fixtures (another
        # tier's engines, images): they are not the test's doing
        return (yield)
    return (yield from _enforced())


UNIT = Path(__file__).resolve().parent
