"""The Compose profile ``ha`` driven from the test process: three etcd members, three
controllers that elect a leader on them, three agents that know all three controllers.

Calls go to the leader as orchctl sends them: to the controller last seen leading, again
to the one a follower names when it refuses, and when a controller cannot be reached the
harness asks the others who leads (``leader``). What etcd itself thinks (which member
leads raft, whether a member serves) comes from etcd's JSON gateway; what the agents think
(which controller holds their stream) from their AgentService.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

import grpc

from orch.v1 import controller_pb2, controller_pb2_grpc
from orchctl.client import blocking_channel
from tests.e2e.harness import Harness, web_job

ETCD = tuple(f"ha-etcd-{i}" for i in (1, 2, 3))
CONTROLLERS = tuple(f"ha-controller-{i}" for i in (1, 2, 3))
AGENTS = tuple(f"ha-agent-{i}" for i in (1, 2, 3))
LEADER_KEY = "orch-leader"
RETRY_ELSEWHERE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def rpc_error(e: grpc.RpcError) -> tuple[grpc.StatusCode, str, str]:
    """(code, details, the leader a refusing controller named, or "")."""
    call = cast("grpc.Call", e)
    leader = next((str(v) for k, v in call.trailing_metadata() or () if k == LEADER_KEY), "")
    return call.code(), call.details() or "", leader


class LeaderClient:
    """ControllerService at the leader; one per thread (it remembers where the leader is).

    A call a follower refuses naming the leader is made there (as orchctl does); a call
    that cannot reach its controller makes the client look for the leader again, and
    fails (the caller decides whether to try again)."""

    def __init__(self, h: HaHarness) -> None:
        self.h = h
        self.current = h.api_leader

    def call(self, method: str, request: Any, timeout: float = 10) -> Any:
        target = self.current
        try:
            return getattr(self.h.stub(target), method)(request, timeout=timeout)
        except grpc.RpcError as e:
            code, _, leader = rpc_error(e)
            there = self.h.service_at(leader)
            if code == grpc.StatusCode.FAILED_PRECONDITION and there and there != target:
                self.current = there
                return getattr(self.h.stub(there), method)(request, timeout=timeout)
            if code in RETRY_ELSEWHERE:
                self.current = self.h.leader(exclude=(target,)) or self.current
            raise

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda request, timeout=10: self.call(method, request, timeout)


class HaHarness(Harness):
    """Three etcd members (.21-.23), three controllers (.31-.33), three agents (.41-.43)."""

    AGENTS: ClassVar[tuple[str, ...]] = AGENTS
    CONTROLLERS: ClassVar[tuple[str, ...]] = CONTROLLERS
    HOSTS: ClassVar[dict[str, int]] = {
        **{s: 21 + i for i, s in enumerate(ETCD)}, **{s: 31 + i for i, s in enumerate(CONTROLLERS)},
        **{s: 41 + i for i, s in enumerate(AGENTS)}}
    PROFILE: ClassVar[str] = "ha"
    BOOTSTRAPS: ClassVar[str] = CONTROLLERS[0]
    SUBNETS_FROM: ClassVar[int] = 230  # away from where the default harness looks first

    def __init__(self, image: str, etcd_image: str, *, ttl: int = 5) -> None:
        super().__init__(image, project=f"orch-e2e-ha-{os.getpid()}")
        self.ttl = ttl
        """The leader's lease, in seconds (ORCH_LEADER_TTL)."""
        self.env.update(ORCH_ETCD_IMAGE=etcd_image, ORCH_LEADER_TTL=str(ttl))
        self._stubs: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()
        self.api_leader = CONTROLLERS[0]
        """Where ``api`` sends calls first: the leader, as last seen."""
        self._client: LeaderClient | None = None

    @property
    def services(self) -> tuple[str, ...]:
        return (*ETCD, *CONTROLLERS, *AGENTS)

    def down(self) -> None:
        with self._lock:
            channels, self._stubs = list(self._stubs.values()), {}
        for ch in channels:
            ch.close()
        super().down()

    # --- gRPC ----------------------------------------------------------------------------------

    def channel(self, service: str) -> grpc.Channel:
        """A controller's: with the operator's credentials; an agent's (only controllers may
        call one): with the bootstrapping controller's own certificate."""
        operator = self.operator  # (outside the lock: it may wait for the files)
        with self._lock:
            ch = self._stubs.get(service)
            if ch is None:
                if service in CONTROLLERS:
                    ch = blocking_channel(f"{self.ip(service)}:4647", operator)
                else:
                    pki = Path(operator.tls_ca).parent.parent  # the operator folder's parent
                    ca, cert, key = ((pki / f).read_bytes() for f in ("ca.pem", "cert.pem",
                                                                      "key.pem"))
                    ch = grpc.secure_channel(
                        f"{self.ip(service)}:4648", grpc.ssl_channel_credentials(ca, key, cert),
                        options=[("grpc.ssl_target_name_override", "agent.orch")])
                self._stubs[service] = ch
            return ch

    def stub(self, controller: str) -> controller_pb2_grpc.ControllerServiceStub:
        return controller_pb2_grpc.ControllerServiceStub(self.channel(controller))

    @property
    def api(self) -> controller_pb2_grpc.ControllerServiceStub:
        if self._client is None:
            self._client = LeaderClient(self)
        return cast("controller_pb2_grpc.ControllerServiceStub", self._client)

    def service_at(self, address: str) -> str:
        """The service whose gRPC address is ``address`` ("" when none)."""
        host = address.rpartition(":")[0]
        return next((s for s in self.services if self.ip(s) == host), "")

    # --- who leads -------------------------------------------------------------------------------

    def leader_info(self, controller: str, timeout: float = 2) -> controller_pb2.LeaderInfo:
        return self.stub(controller).GetLeader(controller_pb2.GetLeaderRequest(),
                                               timeout=timeout)

    def views(self, exclude: Iterable[str] = ()) -> dict[str, controller_pb2.LeaderInfo]:
        """Who leads, as each controller that answers (within a second) says."""
        out = {}
        for c in CONTROLLERS:
            if c in exclude:
                continue
            try:
                out[c] = self.leader_info(c, timeout=1)
            except grpc.RpcError:
                continue
        return out

    def leader(self, *, exclude: Iterable[str] = ()) -> str | None:
        """The one controller (not in ``exclude``) that says it leads, if exactly one does."""
        claims = [c for c, info in self.views(exclude).items() if info.is_self]
        if len(claims) != 1:
            return None
        self.api_leader = claims[0]
        if self._client is not None:
            self._client.current = claims[0]
        return claims[0]

    def settled_leader(self) -> str | None:
        """The leader, when every controller answers and all three agree on it."""
        views = self.views()
        claims = [c for c, info in views.items() if info.is_self]
        if len(views) != len(CONTROLLERS) or len(claims) != 1 or any(
                info.leader != claims[0] for info in views.values()):
            return None
        return self.leader()

    def agent_links(self) -> dict[str, str]:
        """The controller whose stream each agent holds ("" while none)."""
        out = {}
        for a in AGENTS:
            st = controller_pb2_grpc.AgentServiceStub(self.channel(a)).Status(
                controller_pb2.AgentStatusRequest(), timeout=2)
            out[a] = self.service_at(st.controller) if st.connected else ""
        return out

    def healthy(self) -> bool:
        leader = self.settled_leader()
        return (leader is not None and all(self.etcd_healthy(m) for m in ETCD)
                and super().healthy()
                and all(c == leader for c in self.agent_links().values()))

    def container_logs(self, service: str, since: float) -> str:
        """What ``service`` logged (stdout and stderr) since the Unix time ``since``."""
        done = subprocess.run(["docker", "logs", "--since", f"{since - 1:.0f}",
                               self.container(service)], capture_output=True, text=True,
                              timeout=60, check=False)
        return done.stdout + done.stderr

    # --- etcd ------------------------------------------------------------------------------------

    def _etcd(self, member: str, path: str, body: bytes | None = None) -> Any:
        req = urllib.request.Request(f"http://{self.ip(member)}:2379{path}", data=body,
                                     method="POST" if body is not None else "GET")
        with urllib.request.urlopen(req, timeout=2) as r:
            return json.loads(r.read())

    def etcd_healthy(self, member: str) -> bool:
        """The member serves, and has a raft leader."""
        try:
            return bool(self._etcd(member, "/health").get("health") == "true")
        except (OSError, ValueError):
            return False

    def etcd_status(self, member: str) -> dict[str, Any]:
        status: dict[str, Any] = self._etcd(member, "/v3/maintenance/status", b"{}")
        return status

    def etcd_leader(self) -> str:
        """The member that leads raft, as the members say."""
        for m in ETCD:
            try:
                st = self.etcd_status(m)
            except (OSError, ValueError):
                continue
            if st.get("leader") and st["header"]["member_id"] == st["leader"]:
                return m
        raise RuntimeError("no etcd member says it leads")


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int
    version: int
    at: float
    """time.monotonic() when the answer came."""


class Ledger(threading.Thread):
    """Registers a new version of a job (with nothing to run: count 0) every ``every``
    seconds, through the leader, and keeps the ones acknowledged: the job's meta ``seq``
    and the version the controller answered. Calls that fail are kept too (unacknowledged:
    they may have landed or not). A call gets ``timeout`` seconds: one sent to a controller
    that was just killed gets no answer at all, and the next goes to the leader."""

    def __init__(self, h: HaHarness, job: str, every: float = 0.1, timeout: float = 10) -> None:
        super().__init__(name=f"ledger {job}", daemon=True)
        self.h, self.job, self.every, self.timeout = h, job, every, timeout
        self.acked: list[Ack] = []
        self.failed: list[tuple[int, str]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        client = LeaderClient(self.h)
        job = web_job(self.job, count=0)
        del job.groups[0].services[:]  # nothing runs; the port stays the deployed job's
        seq = 0
        while not self._halt.is_set():
            seq += 1
            job.meta["seq"] = str(seq)
            sent = time.monotonic()
            try:
                reply = client.RegisterJob(controller_pb2.RegisterJobRequest(job=job),
                                           timeout=self.timeout)
            except grpc.RpcError as e:
                code, details, _ = rpc_error(e)
                self.failed.append((seq, f"{code.name} after {time.monotonic() - sent:.1f} s "
                                         f"from {client.current}: {details}"))
            else:
                self.acked.append(Ack(seq, reply.version, time.monotonic()))
            self._halt.wait(self.every)

    def run_for(self, seconds: float) -> None:
        """Write in this thread for ``seconds`` (instead of ``start``)."""
        timer = threading.Timer(seconds, self._halt.set)
        timer.start()
        try:
            self.run()
        finally:
            timer.cancel()

    def acked_after(self, t: float) -> list[Ack]:
        return [a for a in self.acked if a.at > t]

    def stop(self) -> None:
        self._halt.set()
        self.join(30)

    def check(self, h: HaHarness) -> None:
        """Every acknowledged write is in the job's history, as the version it was given."""
        history = h.api.JobHistory(controller_pb2.JobHistoryRequest(name=self.job), timeout=10)
        stored = {v.version: v.job.meta.get("seq", "") for v in history.versions}
        lost = [a for a in self.acked if stored.get(a.version) != str(a.seq)]
        assert not lost, (f"{len(lost)} of {len(self.acked)} acknowledged writes are not in the "
                          f"history as acknowledged: {lost[:5]} (stored: {sorted(stored.items())})")
        versions = [a.version for a in self.acked]
        assert versions == sorted(set(versions)), f"versions acknowledged twice: {versions}"
