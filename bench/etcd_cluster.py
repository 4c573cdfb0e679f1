"""Local etcd members for tests and benchmarks: started on loopback, killed and removed after.

Every member listens on its own loopback address (127.0.0.x by default) on free ports, with the flags
the etcd store needs (``controller.store.etcd.REQUIRED_FLAGS``) and, unless told
otherwise, fast raft timings (a new raft leader within about a second), and keeps
its data in a directory of its own (``dir``: tmpfs by default; a benchmark puts it
on the disk it measures). Members can be killed, stopped, paused and restarted.
Needs the ``etcd`` binary (Debian: ``apt-get install etcd-server``); members that start
from an etcd snapshot (``restore``) need ``etcdctl`` too (``apt-get install etcd-client``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from controller.store.etcd import REQUIRED_FLAGS

HOW = "apt-get install etcd-server (Debian's etcd 3.4; ./run test installs it when missing)"
RAFT_FLAGS = ("--heartbeat-interval=50", "--election-timeout=500")
"""Fast failover on loopback: a new raft leader within about a second."""


def _with_parent(command: list[str]) -> list[str]:
    """``command`` made to get SIGKILL when the thread that starts it dies, however it dies
    (so start members from the main thread), through util-linux's setpriv when there is one.

    Not a ``preexec_fn``: Python code between fork and exec in a process that runs gRPC can
    crash the child before it becomes etcd.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *command] if setpriv else command


def binary() -> str:
    """The etcd binary; RuntimeError saying how to install it when there is none."""
    path = shutil.which("etcd")
    if path is None:
        raise RuntimeError(f"the etcd binary is not installed: {HOW}")
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
    tls: tuple[str, str, str] | None = None
    """(CA, certificate, key) files when clients must speak mTLS to this member."""

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    def healthy(self) -> bool:
        context = None
        if self.tls is not None:  # its own certificate serves as a client's
            context = ssl.create_default_context(cafile=self.tls[0])
            context.load_cert_chain(self.tls[1], self.tls[2])
        try:
            with urllib.request.urlopen(f"{self.client_url}/health", timeout=0.5,
                                        context=context) as r:
                return b'"health":"true"' in r.read()
        except OSError:
            return False


@dataclass
class EtcdCluster:
    """``size`` etcd members on ``net``.``first_host``... (one address each), free ports. ::

        with EtcdCluster(3) as cluster:        # started; killed and removed on exit
            store = EtcdStore(cluster.endpoints)
            cluster.kill(cluster.members[0])   # SIGKILL; start_member() brings it back
    """

    size: int = 1
    first_host: int = 71
    net: str = "127.0.0"
    """The loopback block: each member on ``<net>.<first_host + i>``."""
    extra_flags: tuple[str, ...] = RAFT_FLAGS
    """Beyond the store's REQUIRED_FLAGS: fast raft timings by default."""
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(
        prefix="orch-etcd-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)))
    """Where the members keep their data (removed by ``close``); on tmpfs by default."""
    members: list[Member] = field(default_factory=list)
    tls: tuple[str, str, str] | None = None
    """(CA, certificate, key): clients must speak mTLS with a certificate of that CA
    (``--client-cert-auth``); the members' own certificate (its SANs must name their
    addresses) serves them all. Peers still talk plain HTTP to each other."""

    def __post_init__(self) -> None:
        token = uuid.uuid4().hex[:8]
        self.token = f"orch-test-{token}"
        for i in range(self.size):
            host = f"{self.net}.{self.first_host + i}"
            self.members.append(Member(f"m{i}-{token}", host, free_port(host), free_port(host),
                                       self.dir / f"m{i}", self.dir / f"m{i}.log", tls=self.tls))

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def _command(self, m: Member, state: str) -> list[str]:
        cluster = ",".join(f"{o.name}={o.peer_url}" for o in self.members)
        return [binary(), "--name", m.name, "--data-dir", str(m.data_dir),
                "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
                "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", cluster, "--initial-cluster-state", state,
                "--initial-cluster-token", self.token, "--logger", "zap", "--log-level", "warn",
                *REQUIRED_FLAGS, *self.extra_flags, *self._tls_flags()]

    def _tls_flags(self) -> list[str]:
        if self.tls is None:
            return []
        ca, cert, key = self.tls
        return ["--trusted-ca-file", ca, "--cert-file", cert, "--key-file", key,
                "--client-cert-auth"]

    def restore(self, db: Path) -> None:
        """Give every member (none started yet) the data of an etcd snapshot, as
        ``etcdctl snapshot restore`` makes it: the keys and their history as the snapshot
        holds them, in a cluster of these members."""
        if shutil.which("etcdctl") is None:
            raise RuntimeError("etcdctl is missing: apt-get install etcd-client")
        cluster = ",".join(f"{o.name}={o.peer_url}" for o in self.members)
        for m in self.members:
            subprocess.run(["etcdctl", "snapshot", "restore", str(db), "--name", m.name,
                            "--data-dir", str(m.data_dir), "--initial-cluster", cluster,
                            "--initial-cluster-token", self.token,
                            "--initial-advertise-peer-urls", m.peer_url],
                           check=True, capture_output=True, env={**os.environ, "ETCDCTL_API": "3"})

    def start(self, timeout: float = 20.0) -> None:
        """Start every member that is not running; wait until all answer."""
        for m in self.members:
            if m.proc is None:
                self.start_member(m, wait=False)
        self.wait_healthy(self.members, timeout)

    def start_member(self, m: Member, *, wait: bool = True, timeout: float = 20.0) -> None:
        state = "existing" if m.data_dir.exists() else "new"
        with m.log.open("ab") as log:
            m.proc = subprocess.Popen(_with_parent(self._command(m, state)), stdout=log,
                                      stderr=log, start_new_session=True)
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
