"""A highly available orch cluster of real processes on loopback, for ``bench.failover`` and the
process-level HA tests (``tests/integration/test_ha_processes.py``).

``HaCluster`` starts etcd members (``bench.etcd_cluster``), ``controllers``
``orch-controller`` processes on them (or one on SQLite: ``store="sqlite"``) and
``agents`` ``orch-agent`` processes with the process driver, each on its own
address of one loopback block (``net``: controllers on .1.., agents on .11..,
etcd members on .21..), free ports, one gossip label of its own (no stray member
of another cluster can join), and the gossip ``fast`` profile. Every process
gets SIGKILL when the thread that started it dies (``setpriv --pdeathsig``, as
the etcd members), and ``close`` stops every process and every task the agents
started, even after a failure::

    with HaCluster(Path(tmp), ttl=2) as c:          # started; leader elected; agents connected
        i = c.leader()
        c.kill(c.controllers[i])                    # SIGKILL; c.start(c.controllers[i]) again
        c.stub(c.controllers[j]).RegisterJob(...)   # plain gRPC, no redirects followed

Reads go through plain (synchronous) gRPC stubs: a benchmark must not load the
machine it measures with ``orchctl`` subprocesses.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

import grpc

from bench.etcd_cluster import EtcdCluster, _with_parent
from orch.v1 import controller_pb2, controller_pb2_grpc, job_pb2, node_pb2

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "/orch"


def free_port(host: str) -> int:
    """A port free on ``host`` for TCP and UDP both (gossip uses both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            t.bind((host, 0))
            port = int(t.getsockname()[1])
            try:
                u.bind((host, port))
            except OSError:
                continue
            return port


def wait(what: str, pred: Callable[[], bool], within: float, every: float = 0.05) -> float:
    """Seconds until ``pred()`` held; RuntimeError after ``within``."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > within:
            raise RuntimeError(f"timed out after {within:g} s waiting for {what}")
        time.sleep(every)
    return time.monotonic() - t0


@dataclass
class Daemon:
    """One orch-controller or orch-agent process (started again with the same addresses)."""

    name: str
    host: str
    gossip_port: int
    rpc_port: int
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def rpc(self) -> str:
        return f"{self.host}:{self.rpc_port}"

    @property
    def gossip(self) -> str:
        return f"{self.host}:{self.gossip_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_lines(self, msg: str) -> list[dict[str, object]]:
        """The JSON log records of this daemon whose ``msg`` is ``msg`` (all its lives)."""
        out = []
        with contextlib.suppress(OSError):
            for line in self.log.read_text(errors="replace").splitlines():
                if f'"{msg}"' not in line:
                    continue
                with contextlib.suppress(ValueError):
                    rec = json.loads(line)
                    if isinstance(rec, dict) and rec.get("msg") == msg:
                        out.append(rec)
        return out


def log_time(rec: dict[str, object]) -> float:
    """A log record's time (seconds since the epoch, ms precision)."""
    return datetime.fromisoformat(str(rec["ts"]).replace("Z", "+00:00")).timestamp()


@dataclass
class HaCluster:
    workdir: Path
    controllers_n: int = 3
    agents_n: int = 2
    etcd_members: int = 1
    store: Literal["etcd", "sqlite"] = "etcd"
    ttl: int = 5
    """The leader's lease TTL (``--leader-ttl``)."""
    node_grace: float = 10.0
    net: str = "127.0.80"
    etcd_on_disk: bool = False
    """etcd's data in ``workdir`` (the disk SQLite writes to) instead of tmpfs."""
    controller_flags: tuple[str, ...] = ()
    etcd: EtcdCluster | None = None
    controllers: list[Daemon] = field(default_factory=list)
    agents: list[Daemon] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.label = f"orch-ha-{uuid.uuid4().hex[:8]}"
        self._channels: dict[str, grpc.Channel] = {}
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                                 if p)

    # --- starting and stopping ------------------------------------------------------------------

    def __enter__(self) -> HaCluster:
        try:
            self.start_all()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start_all(self, within: float = 60.0) -> None:
        """etcd, the controllers, the agents; until one leads and every agent is connected to it."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.store == "etcd":
            if self.etcd_on_disk:
                (self.workdir / "etcd").mkdir(exist_ok=True)
                self.etcd = EtcdCluster(self.etcd_members, first_host=21, net=self.net,
                                        dir=self.workdir / "etcd")
            else:
                self.etcd = EtcdCluster(self.etcd_members, first_host=21, net=self.net)
            self.etcd.start()
        hosts = [f"{self.net}.{1 + i}" for i in range(self.controllers_n)]
        ports = [free_port(h) for h in hosts]
        seeds = [f"{h}:{p}" for h, p in zip(hosts, ports, strict=True)]
        for i, (host, gport) in enumerate(zip(hosts, ports, strict=True)):
            name = f"c{i}"
            rpc_port = free_port(host)
            argv = [sys.executable, "-m", "controller.main", "--name", name,
                    "--bind", f"{host}:{gport}", "--rpc-addr", f"{host}:{rpc_port}",
                    "--http-addr", f"{host}:0",
                    "--data-dir", str(self.workdir / name), "--log-format", "json",
                    "--metrics-addr", f"{host}:0", "--profile", "fast", "--label", self.label,
                    "--node-grace", f"{self.node_grace:g}", "--rate-limit", "0",
                    *[f"--join={s}" for s in seeds if s != f"{host}:{gport}"],
                    *self.controller_flags]
            if self.store == "etcd":
                assert self.etcd is not None
                argv += ["--store", "etcd", *[f"--etcd={e}" for e in self.etcd.endpoints],
                         "--etcd-prefix", PREFIX, "--leader-ttl", str(self.ttl)]
            self.controllers.append(Daemon(name, host, gport, rpc_port, argv,
                                           self.workdir / f"{name}.log"))
        for j in range(self.agents_n):
            host = f"{self.net}.{11 + j}"
            name = f"agent-{j + 1}"
            gport, rport = free_port(host), free_port(host)
            argv = [sys.executable, "-m", "agent.main", "--name", name,
                    "--bind", f"{host}:{gport}", *[f"--join={s}" for s in seeds],
                    "--rpc-addr", f"{host}:{rport}", "--lb-bind", host,
                    "--metrics-addr", f"{host}:0", "--data-dir", str(self.workdir / name),
                    "--driver", "process", "--log-format", "json", "--profile", "fast",
                    "--label", self.label]
            self.agents.append(Daemon(name, host, gport, rport, argv, self.workdir / f"{name}.log"))
        for d in [*self.controllers, *self.agents]:
            self.start(d)
        self.wait_settled(within)

    def start(self, d: Daemon) -> None:
        """Start (or start again) one daemon, with the addresses it had."""
        if d.running:
            raise RuntimeError(f"{d.name} is running")
        with d.log.open("ab") as log:  # the child keeps its own copy
            d.proc = subprocess.Popen(_with_parent(d.argv), stdout=log, stderr=log, env=self.env,
                                      stdin=subprocess.DEVNULL, cwd=ROOT, start_new_session=True)

    def _signal(self, d: Daemon, sig: signal.Signals) -> None:
        if d.proc is None:
            raise RuntimeError(f"{d.name} was never started")
        os.killpg(d.proc.pid, sig)

    def kill(self, d: Daemon) -> None:
        """SIGKILL, as a crash (the lease is left to expire)."""
        if d.running:
            assert d.proc is not None
            self._signal(d, signal.SIGCONT)
            self._signal(d, signal.SIGKILL)
            d.proc.wait(10)

    def pause(self, d: Daemon) -> None:
        """SIGSTOP: the process stays, and neither reads nor writes, until ``resume``."""
        self._signal(d, signal.SIGSTOP)

    def resume(self, d: Daemon) -> None:
        self._signal(d, signal.SIGCONT)

    def stop(self, d: Daemon, grace: float = 15.0) -> None:
        """SIGTERM (a graceful stop), then SIGKILL after ``grace``."""
        if d.proc is None or d.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(d.proc.pid, signal.SIGCONT)
            os.killpg(d.proc.pid, signal.SIGTERM)
        try:
            d.proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(d.proc.pid, signal.SIGKILL)
            d.proc.wait(10)

    def close(self) -> None:
        """Stop every process and every task of this cluster (again: harmless)."""
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()
        for d in [*self.agents, *self.controllers]:
            if d.running:
                with contextlib.suppress(ProcessLookupError):
                    assert d.proc is not None
                    os.killpg(d.proc.pid, signal.SIGCONT)
                    os.killpg(d.proc.pid, signal.SIGTERM)
        for d in [*self.agents, *self.controllers]:
            with contextlib.suppress(Exception):
                self.stop(d, grace=10)
        self.kill_tasks()
        if self.etcd is not None:
            self.etcd.close()

    def task_shims(self) -> dict[int, str]:
        """pid -> command line of every process-driver task supervisor of this cluster."""
        out: dict[int, str] = {}
        mark = str(self.workdir).encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmd = (proc / "cmdline").read_bytes()
                stat = (proc / "stat").read_text()
            except OSError:
                continue
            zombie = stat.rpartition(")")[2].split()[:1] == ["Z"]
            if b"agent.runtime.process_shim" in cmd and mark in cmd and not zombie:
                out[int(proc.name)] = cmd.replace(b"\0", b" ").decode(errors="replace")
        return out

    def kill_tasks(self) -> None:
        """Stop the tasks that outlived their agents: their process groups, then their shims."""
        for state in self.workdir.glob("*/alloc/*/*/state.json"):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                pids = json.loads(state.read_text())
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(int(pids["pgid"]), signal.SIGKILL)
        for pid in self.task_shims():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    # --- gRPC --------------------------------------------------------------------------------------

    def channel(self, addr: str) -> grpc.Channel:
        ch = self._channels.get(addr)
        if ch is None:
            ch = self._channels[addr] = grpc.insecure_channel(addr)
        return ch

    def stub(self, d: Daemon) -> controller_pb2_grpc.ControllerServiceStub:
        return controller_pb2_grpc.ControllerServiceStub(self.channel(d.rpc))

    def agent_stub(self, d: Daemon) -> controller_pb2_grpc.AgentServiceStub:
        return controller_pb2_grpc.AgentServiceStub(self.channel(d.rpc))

    def leader_info(self, d: Daemon, timeout: float = 2.0) -> controller_pb2.LeaderInfo | None:
        if not d.running:
            return None
        try:
            info: controller_pb2.LeaderInfo = self.stub(d).GetLeader(
                controller_pb2.GetLeaderRequest(), timeout=timeout)
            return info
        except grpc.RpcError:
            return None

    def leaders(self) -> list[Daemon]:
        """The running controllers that say they lead."""
        out = []
        for d in self.controllers:
            info = self.leader_info(d)
            if info is not None and info.is_self:
                out.append(d)
        return out

    def leader(self, within: float = 30.0) -> Daemon:
        """The one controller that leads (waits until exactly one says so and every other
        running controller names it)."""
        found: list[Daemon] = []

        def one() -> bool:
            found[:] = self.leaders()
            if len(found) != 1:
                return False
            for d in self.controllers:
                if d is not found[0] and d.running:
                    info = self.leader_info(d)
                    if info is None or info.leader != found[0].name:
                        return False
            return True
        wait("one leader that every controller names", one, within, every=0.1)
        return found[0]

    def agent_status(self, d: Daemon, timeout: float = 3.0) -> controller_pb2.AgentStatus | None:
        try:
            st: controller_pb2.AgentStatus = self.agent_stub(d).Status(
                controller_pb2.AgentStatusRequest(), timeout=timeout)
            return st
        except grpc.RpcError:
            return None

    def agents_connected_to(self, leader: Daemon) -> bool:
        for a in self.agents:
            st = self.agent_status(a)
            if st is None or not st.connected or st.controller != leader.rpc:
                return False
        return True

    def wait_settled(self, within: float = 60.0) -> Daemon:
        """Until one controller leads, every other names it, and every agent is connected to it."""
        deadline = time.monotonic() + within
        leader = self.leader(within)
        wait("every agent connected to the leader " + leader.name,
             lambda: self.agents_connected_to(leader), max(1.0, deadline - time.monotonic()),
             every=0.1)
        return leader

    def wait_follower(self, d: Daemon, leader: Daemon, within: float = 30.0) -> float:
        """Until ``d`` answers and names ``leader`` (a follower again)."""
        def follows() -> bool:
            info = self.leader_info(d)
            return info is not None and not info.is_self and info.leader == leader.name
        return wait(f"{d.name} to follow {leader.name}", follows, within, every=0.1)

    def write_until_accepted(self, among: list[Daemon],
                             request: Callable[[int], controller_pb2.RegisterJobRequest],
                             within: float, pace: float = 0.02, timeout: float = 1.0
                             ) -> tuple[Daemon, controller_pb2.RegisterJobResponse, int]:
        """Try a registration against each of ``among`` in turn (every ``pace`` seconds, no
        redirect followed, each waited for ``timeout``) until one accepts it: (who, its
        answer, attempts made). ``request(n)`` makes the n-th attempt's request."""
        attempts = 0
        t0 = time.monotonic()
        while True:
            for d in among:
                attempts += 1
                try:
                    reply: controller_pb2.RegisterJobResponse = self.stub(d).RegisterJob(
                        request(attempts), timeout=timeout)
                except grpc.RpcError:
                    continue
                return d, reply, attempts
            if time.monotonic() - t0 > within:
                raise RuntimeError(f"none of {[d.name for d in among]} accepted a write within "
                                   f"{within:g} s")
            time.sleep(pace)

    # --- jobs ---------------------------------------------------------------------------------------

    def running_allocations(self, via: Daemon, job: str) -> dict[str, str]:
        """alloc id -> node id of ``job``'s allocations that should run and do (as ``via`` says)."""
        st = self.stub(via).GetJob(controller_pb2.GetJobRequest(name=job), timeout=10)
        return {a.id: a.node_id for a in st.allocations
                if a.desired_status == node_pb2.DESIRED_STATUS_RUN
                and a.client_status == node_pb2.CLIENT_STATUS_RUNNING}

    def agents_running(self) -> dict[str, list[str]]:
        """agent name -> ids of the allocations it says run (its Status RPC)."""
        out: dict[str, list[str]] = {}
        for a in self.agents:
            st = self.agent_status(a)
            if st is None:
                raise RuntimeError(f"{a.name} does not answer Status")
            out[a.name] = [x.id for x in st.allocations
                           if x.client_status == node_pb2.CLIENT_STATUS_RUNNING]
        return out


def sleep_job(name: str, count: int, meta: dict[str, str] | None = None) -> job_pb2.Job:
    """A service job of ``count`` allocations that only sleep (process driver, 10 millicores)."""
    return job_pb2.Job(
        name=name, type=job_pb2.JOB_TYPE_SERVICE, meta=meta or {},
        groups=[job_pb2.TaskGroup(name="sleep", count=count, tasks=[job_pb2.Task(
            name="sleep", driver="process", command="/bin/sleep", args=["3600"],
            resources=job_pb2.Resources(cpu_millicores=10, memory_mb=8))])])
