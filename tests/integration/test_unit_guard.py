"""The unit tier's guard (tests/unit/conftest.py) catches what a unit test may not do (bind
or connect a socket, send a datagram, start a process, sleep), even when the code under test
swallows the exception or does it on a thread of its own, and fails a unit test carrying
another tier's marker; asyncio (its event loop's socketpair, ``asyncio.sleep(0)``),
hypothesis and pytest-timeout keep working under it.

Each case is a small test file run by an inner pytest (``pytester``) with the guard as its
conftest. It lives here, not in unit, because what it checks is that such things fail."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(120, method="thread")  # the inner runs use SIGALRM

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
filterwarnings = error
markers =
    etcd: needs etcd
    docker: needs Docker
    e2e: the Compose harness
    fuzz: fuzzing
"""

FORBIDDEN = '''
import asyncio
import os
import socket
import subprocess
import threading
import time

import pytest


def test_time_sleep():
    time.sleep(0.01)


async def test_asyncio_sleep():
    await asyncio.sleep(0.01)


def test_bind():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))


def test_connect():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.connect(("127.0.0.1", 9))


def test_connect_ex():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.connect_ex(("127.0.0.1", 9))


def test_sendto():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"x", ("127.0.0.1", 9))


async def test_asyncio_server():
    await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)


def test_subprocess():
    subprocess.run(["true"], check=True)


def test_fork():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


async def test_asyncio_subprocess():
    proc = await asyncio.create_subprocess_exec("true")
    await proc.wait()


def test_swallowed():
    try:
        time.sleep(0.01)
    except Exception:
        pass


def test_on_a_thread():
    t = threading.Thread(target=lambda: time.sleep(0.01))
    t.start()
    t.join()


@pytest.fixture
def sleepy():
    time.sleep(0.01)


def test_in_a_fixture(sleepy):
    assert sleepy is None


@pytest.mark.etcd
def test_marked_etcd():
    assert sum([1, 2]) == 3
'''

ALLOWED = '''
import asyncio
import socket
import time

import pytest
from hypothesis import given, strategies as st


async def test_asyncio_runs_and_yields():
    await asyncio.sleep(0)
    assert await asyncio.wait_for(asyncio.shield(asyncio.sleep(0, "done")), 1) == "done"


def test_a_socketpair_talks():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"hi")
        assert b.recv(2) == b"hi"


def test_zero_sleeps_are_yields():
    time.sleep(0)


@given(st.integers())
def test_hypothesis(n):
    assert n == n


@pytest.mark.timeout(5)
def test_timeout_signal():
    assert sum([1, 2]) == 3


@pytest.mark.timeout(5, method="thread")
async def test_timeout_thread():
    await asyncio.sleep(0)
'''


@pytest.fixture
def guarded(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    pytester.makeconftest("from tests.unit.conftest import *  # the unit tier's hooks\n")
    return pytester


def test_every_forbidden_call_fails_the_test_saying_what_it_did(
        guarded: pytest.Pytester) -> None:
    guarded.makepyfile(test_forbidden=FORBIDDEN)
    result = guarded.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=12, errors=2)
    move = "(unit tests may not use sockets, processes or sleeps: move this test to tests/integration)"
    said = [  # in the order of the report: errors (in setup) first, then failures
        ("ERROR at setup of test_in_a_fixture", f"time.sleep(0.01) {move}"),
        ("ERROR at setup of test_marked_etcd",
         "unit tests may not be marked etcd: move this test to tests/integration "
         "(or tests/e2e, tests/fuzz)"),
        ("test_time_sleep", f"time.sleep(0.01) {move}"),
        ("test_asyncio_sleep", f"asyncio.sleep(0.01) {move}"),
        ("test_bind", f"socket.bind ('127.0.0.1', 0) {move}"),
        ("test_connect", f"socket.connect ('127.0.0.1', 9) {move}"),
        ("test_connect_ex", f"socket.connect_ex ('127.0.0.1', 9) {move}"),
        ("test_sendto", f"socket.sendto ('127.0.0.1', 9) {move}"),
        ("test_asyncio_server", f"socket.bind ('127.0.0.1', 0) {move}"),
        ("test_subprocess", f"subprocess.Popen ['true'] {move}"),
        ("test_fork", f"os.fork {move}"),
        ("test_asyncio_subprocess", f"asyncio.create_subprocess_exec {move}"),
        ("test_swallowed", f"time.sleep(0.01) {move}"),
        ("test_on_a_thread", f"time.sleep(0.01) {move}"),
    ]
    result.stdout.fnmatch_lines([line for header, message in said
                                 for line in (f"_* {header} _*", message.replace("[", "[[]"))])


def test_asyncio_hypothesis_and_timeouts_keep_working(guarded: pytest.Pytester) -> None:
    guarded.makepyfile(test_allowed=ALLOWED)
    result = guarded.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)
