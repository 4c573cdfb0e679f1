"""Real etcd processes for the tests (a pytest plugin, see tests/conftest.py).

Tests that need etcd get the ``etcd_server`` fixture (one member for the whole
session; each test works under a prefix of its own) or start an ``EtcdCluster``
of their own (``etcd_cluster`` gives three members), which they may kill, stop,
pause and restart. Every member listens on its own 127.0.0.x address on free
ports, with the flags the store needs (``controller.store.etcd.REQUIRED_FLAGS``)
and short raft timings, keeps its data in a temporary directory (on /dev/shm when
there is one: the tests measure behaviour, not the disk), and is killed and
removed afterwards, whatever happened.

Without the ``etcd`` binary these tests skip, saying how to get it, except under
CI=true, where they fail: CI must run them. ``./run test`` installs Debian's
``etcd-server`` when it is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from controller.store.etcd import REQUIRED_FLAGS

HOW = "apt-get install etcd-server (Debian's etcd 3.4; ./run test installs it when missing)"
RAFT_FLAGS = ("--heartbeat-interval=50", "--election-timeout=500")
"""Fast failover on loopback: a new raft leader within about a second."""


def etcd_binary() -> str:
    """The etcd binary; fails under CI=true and skips elsewhere when there is none."""
    path = shutil.which("etcd")
    if path is None:
        message = f"the etcd binary is not installed: {HOW}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and the etcd tests cannot run: {message}")
        pytest.skip(message)
    return path


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(slots=True)
class Member:
    name: str
    host: str
    client_port: int
    peer_port: int
    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=0.5) as r:
                return b'"health":"true"' in r.read()
        except OSError:
            return False


@dataclass
class EtcdCluster:
    """``size`` etcd members on 127.0.0.``first_host``... (one address each), free ports."""

    size: int = 1
    first_host: int = 71
    extra_flags: tuple[str, ...] = ()
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(
        prefix="orch-etcd-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)))
    members: list[Member] = field(default_factory=list)

    def __post_init__(self) -> None:
        token = uuid.uuid4().hex[:8]
        self.token = f"orch-test-{token}"
        for i in range(self.size):
            host = f"127.0.0.{self.first_host + i}"
            self.members.append(Member(f"m{i}-{token}", host, free_port(host), free_port(host),
                                       self.dir / f"m{i}", self.dir / f"m{i}.log"))

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def _command(self, m: Member, state: str) -> list[str]:
        cluster = ",".join(f"{o.name}={o.peer_url}" for o in self.members)
        return [etcd_binary(), "--name", m.name, "--data-dir", str(m.data_dir),
                "--listen-client-urls", f"http://{m.endpoint}",
                "--advertise-client-urls", f"http://{m.endpoint}",
                "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", cluster, "--initial-cluster-state", state,
                "--initial-cluster-token", self.token, "--logger", "zap", "--log-level", "warn",
                *REQUIRED_FLAGS, *RAFT_FLAGS, *self.extra_flags]

    def start(self, timeout: float = 20.0) -> None:
        """Start every member that is not running; wait until all answer."""
        for m in self.members:
            if m.proc is None:
                self.start_member(m, wait=False)
        self.wait_healthy(self.members, timeout)

    def start_member(self, m: Member, *, wait: bool = True, timeout: float = 20.0) -> None:
        state = "existing" if m.data_dir.exists() else "new"
        with m.log.open("ab") as log:
            m.proc = subprocess.Popen(self._command(m, state), stdout=log, stderr=log,
                                      start_new_session=True)
        if wait:
            self.wait_healthy([m], timeout)

    def wait_healthy(self, members: list[Member], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        for m in members:
            while not m.healthy():
                if m.proc is not None and m.proc.poll() is not None:
                    raise RuntimeError(f"etcd {m.name} exited: {m.log.read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd {m.name} did not answer within {timeout} s: "
                                       f"{m.log.read_text()[-2000:]}")
                time.sleep(0.05)

    def kill(self, m: Member) -> None:
        """SIGKILL, as a crash: the data stays, ``start_member`` brings it back."""
        self._signal(m, signal.SIGKILL)

    def stop(self, m: Member) -> None:
        """SIGTERM, as a clean shutdown."""
        self._signal(m, signal.SIGTERM)

    def _signal(self, m: Member, sig: signal.Signals) -> None:
        if m.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(m.proc.pid, signal.SIGCONT)
            os.killpg(m.proc.pid, sig)
        try:
            m.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(m.proc.pid, signal.SIGKILL)
            m.proc.wait(timeout=10)
        m.proc = None

    def pause(self, m: Member) -> None:
        assert m.proc is not None
        os.killpg(m.proc.pid, signal.SIGSTOP)

    def resume(self, m: Member) -> None:
        assert m.proc is not None
        os.killpg(m.proc.pid, signal.SIGCONT)

    def close(self) -> None:
        for m in self.members:
            self.kill(m)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdCluster]:
    """One etcd member for the session; tests use prefixes of their own."""
    etcd_binary()
    with EtcdCluster(1, first_host=70) as cluster:
        yield cluster


@pytest.fixture
def etcd_cluster() -> Iterator[EtcdCluster]:
    """Three etcd members of the test's own, to kill, stop, pause and restart."""
    etcd_binary()
    with EtcdCluster(3, first_host=71) as cluster:
        yield cluster


@pytest.fixture
def etcd_prefix() -> str:
    return f"/orch-test/{uuid.uuid4().hex[:12]}"


@pytest.fixture(autouse=True)
def _etcd_marker(request: pytest.FixtureRequest) -> None:
    """Tests marked ``etcd`` get the binary, or are skipped (fail under CI=true)."""
    if request.node.get_closest_marker("etcd") is not None:
        etcd_binary()
