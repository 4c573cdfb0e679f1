"""The Compose harness (docker-compose.test.yml) driven from the test process.

The tests run on the host: they reach the harness network's addresses directly
(the host is its gateway), talk gRPC to the controller, send HTTP to the agents,
and cause faults with the Docker CLI (kill, pause, network disconnect), which is
what the host has and a container would need the engine's socket for.

Everything the harness made is removed by ``down``: the task containers its agents
started (found by the network namespace they joined, and by their node ids), the
Compose project's containers and network, and the orch image when this run built it.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import grpc

from orch.jobspec import load_job_file
from orch.jobspec.durations import parse_duration
from orch.v1 import controller_pb2, controller_pb2_grpc, job_pb2, node_pb2
from orchctl.client import Settings, blocking_channel, settings
from tests.docker_engine import docker

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.test.yml"
WEB_JOB = ROOT / "deploy" / "compose" / "jobs" / "web.yaml"
AGENTS = tuple(f"agent-{i}" for i in range(1, 6))
SERVICES = ("controller", *AGENTS)
RUN, RUNNING = node_pb2.DESIRED_STATUS_RUN, node_pb2.CLIENT_STATUS_RUNNING
READY = node_pb2.NODE_STATUS_READY

T = TypeVar("T")


def wait(what: str, check: Callable[[], T | None], within: float, every: float = 0.25) -> T:
    """Poll ``check`` until it returns something true; its value. Fails saying ``what``."""
    deadline = time.monotonic() + within
    last: Exception | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except (grpc.RpcError, OSError, RuntimeError) as e:  # a restarting controller, say
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {within:g}s for {what}" + (f" (last error: {last})"
                                                                   if last else ""))
        time.sleep(every)


def free_subnet_prefix(first: int = 201) -> str:
    """``172.28.N`` (N from ``first`` up) for a /24 that no Docker network or host route uses."""
    taken: list[ipaddress.IPv4Network] = []
    ids = docker("network", "ls", "-q").split()
    if ids:
        for net in json.loads(docker("network", "inspect", *ids)):
            for cfg in (net.get("IPAM") or {}).get("Config") or []:
                with contextlib.suppress(ValueError, KeyError):
                    taken.append(ipaddress.IPv4Network(cfg["Subnet"], strict=False))
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True,
                            check=False).stdout
    for line in routes.splitlines():
        with contextlib.suppress(ValueError, IndexError):
            taken.append(ipaddress.IPv4Network(line.split()[0], strict=False))
    for n in range(first, 255):
        candidate = ipaddress.IPv4Network(f"172.28.{n}.0/24")
        if not any(candidate.overlaps(t) for t in taken if t.prefixlen > 0):
            return f"172.28.{n}"
    raise RuntimeError(f"no free /24 in 172.28.{first}-254.0 for the harness network")


class Harness:
    """A controller and five agents in containers, and what the tests do with them.

    Subclasses describe another cluster of the same Compose file (a profile): its services,
    their addresses (the last byte on the harness network), and which are the agents and
    the controllers.
    """

    AGENTS: ClassVar[tuple[str, ...]] = AGENTS
    CONTROLLERS: ClassVar[tuple[str, ...]] = ("controller",)
    HOSTS: ClassVar[dict[str, int]] = {s: 10 + i for i, s in enumerate(SERVICES)}
    PROFILE: ClassVar[str] = ""
    """A Compose profile: its services are named on ``up``, so that only they start."""
    SUBNETS_FROM: ClassVar[int] = 201
    """Where the search for a free /24 (172.28.N.0) starts."""

    def __init__(self, image: str, *, project: str | None = None) -> None:
        self.project = project or f"orch-e2e-{os.getpid()}"
        self.net = free_subnet_prefix(self.SUBNETS_FROM)
        self.image = image
        socket_path = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        if not socket_path.startswith("unix://"):
            raise RuntimeError(f"the harness mounts the engine's socket; DOCKER_HOST is "
                               f"{socket_path}")
        self.agents_dir = Path(f"/var/tmp/{self.project}")
        """The agents' data, at the same path in their containers and on this host."""
        self.env = {**os.environ, "ORCH_IMAGE": image, "ORCH_NET": self.net,
                    "ORCH_DOCKER_SOCKET": socket_path[len("unix://"):],
                    "ORCH_AGENTS_DIR": str(self.agents_dir)}
        self._channel: grpc.Channel | None = None
        self._operator: Settings | None = None
        self.node_ids: dict[str, str] = {}

    # --- the Compose project --------------------------------------------------------------

    @property
    def services(self) -> tuple[str, ...]:
        """The Compose services of this cluster (the containers a test may break)."""
        return (*self.CONTROLLERS, *self.AGENTS)

    def compose(self, *args: str, timeout: float = 120) -> str:
        profile = ("--profile", self.PROFILE) if self.PROFILE else ()
        done = subprocess.run(["docker-compose", "-f", str(COMPOSE_FILE), "-p", self.project,
                               *profile, *args], capture_output=True, text=True, env=self.env,
                              timeout=timeout, check=False, cwd=ROOT)
        if done.returncode != 0:
            raise RuntimeError(f"docker-compose {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def ip(self, service: str) -> str:
        return f"{self.net}.{self.HOSTS[service]}"

    @property
    def network(self) -> str:
        return f"{self.project}_mesh"

    def up(self) -> None:
        self.compose("up", "-d", *(self.services if self.PROFILE else ()))
        try:
            self.wait_healthy(within=90)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.logs()}") from None
        self.node_ids = {n.name: n.id for n in self.nodes().values()}

    def logs(self, tail: int = 40) -> str:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            return self.compose("logs", "--no-color", f"--tail={tail}", timeout=60)
        return "(no logs)"

    def down(self) -> None:
        """Remove the tasks the agents started, then the project (containers, network)."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._operator is not None:
            shutil.rmtree(Path(self._operator.tls_ca).parent.parent, ignore_errors=True)
            self._operator = None
        self.remove_tasks()
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "5")
        _remove_agents_dir(self.agents_dir)

    def task_containers(self, *, all_states: bool = True) -> list[dict[str, Any]]:
        """The harness agents' task containers (inspected): those that joined an agent's
        network namespace, and those labelled with a harness node's id."""
        ids = docker("ps", "-q" + ("a" if all_states else ""), "--filter",
                     "label=orch.managed").split()
        if not ids:
            return []
        agents = set(docker("ps", "-aq", "--no-trunc", "--filter",
                            f"label=com.docker.compose.project={self.project}").split())
        nodes = set(self.node_ids.values())
        out = []
        # A container may go between the listing and the inspection (the agents remove theirs):
        # docker inspect then fails for it but still prints the others.
        for c in json.loads(docker("inspect", *ids, check=False) or "[]"):
            mode = c["HostConfig"].get("NetworkMode", "")
            labels = c["Config"].get("Labels") or {}
            if mode.removeprefix("container:") in agents or labels.get("orch.node") in nodes:
                out.append(c)
        return out

    def remove_tasks(self) -> None:
        found = [c["Id"] for c in self.task_containers()]
        if found:
            docker("rm", "-f", *found, check=False)

    # --- the engine's view ------------------------------------------------------------------

    def state(self, service: str) -> dict[str, Any]:
        info: dict[str, Any] = json.loads(docker("inspect", self.container(service)))[0]
        return info

    def restore(self, service: str) -> None:
        """Undo a test's fault on ``service``: running, not paused, on the network."""
        st = self.state(service)
        if st["State"]["Paused"]:
            docker("unpause", self.container(service))
        elif not st["State"]["Running"]:
            docker("start", self.container(service))
        if self.network not in st["NetworkSettings"]["Networks"]:
            docker("network", "connect", "--ip", self.ip(service), self.network,
                   self.container(service))

    def job_containers(self, job: str) -> dict[str, list[str]]:
        """Running task containers of ``job`` by allocation id."""
        out: dict[str, list[str]] = {}
        for c in self.task_containers(all_states=False):
            labels = c["Config"].get("Labels") or {}
            if labels.get("orch.job") == job and c["State"]["Running"]:
                out.setdefault(labels.get("orch.alloc", ""), []).append(c["Id"])
        return out

    # --- the controller's view ---------------------------------------------------------------

    BOOTSTRAPS: ClassVar[str] = "controller"
    """The controller that bootstraps the cluster's trust (and holds the operator's files)."""

    @property
    def operator(self) -> Settings:
        """The operator's credentials (orchctl.toml, certificate, token) the bootstrapping
        controller made, copied out of its container once (waiting for them)."""
        if self._operator is None:
            # the controller's whole pki folder: the operator's files are in pki/operator, and
            # the controller's own identity beside them (the HA tests ask the agents with it)
            local = Path(tempfile.mkdtemp(prefix="orch-e2e-pki-"))
            inside = f"{self.container(self.BOOTSTRAPS)}:/var/lib/orch/controller/pki/."

            def copied() -> bool:
                done = subprocess.run(["docker", "cp", inside, str(local)], capture_output=True,
                                      check=False, timeout=30)
                return done.returncode == 0 and (local / "operator/management.token").exists()
            wait("the operator's credentials", copied, 60)
            self._operator = settings({"ORCH_CONFIG": str(local / "operator/orchctl.toml")})
        return self._operator

    @property
    def operator_dir(self) -> Path:
        """Where the operator's files (orchctl.toml, ca.pem, ...) were copied to."""
        return Path(self.operator.tls_ca).parent

    def channel_to(self, service: str) -> grpc.Channel:
        """A blocking channel to a controller, with the operator's credentials."""
        return blocking_channel(f"{self.ip(service)}:4647", self.operator)

    @property
    def api(self) -> controller_pb2_grpc.ControllerServiceStub:
        if self._channel is None:
            self._channel = self.channel_to("controller")
        return controller_pb2_grpc.ControllerServiceStub(self._channel)

    def nodes(self) -> dict[str, node_pb2.Node]:
        reply = self.api.ListNodes(controller_pb2.ListNodesRequest(), timeout=5)
        return {n.name: n for n in reply.nodes}

    def members(self) -> dict[str, controller_pb2.Member]:
        reply = self.api.ListMembers(controller_pb2.ListMembersRequest(), timeout=5)
        return {m.name: m for m in reply.members}

    def healthy(self) -> bool:
        nodes, members = self.nodes(), self.members()
        return (all(name in nodes and nodes[name].status == READY for name in self.AGENTS)
                and all(name in members and members[name].status == "alive"
                        for name in (*self.CONTROLLERS, *self.AGENTS)))

    def wait_healthy(self, within: float = 60) -> None:
        wait("every agent ready and every member alive", self.healthy, within)

    def status(self, job: str) -> controller_pb2.JobStatusReply:
        return self.api.GetJob(controller_pb2.GetJobRequest(name=job), timeout=5)

    def running(self, job: str) -> list[node_pb2.Allocation]:
        return [a for a in self.status(job).allocations
                if a.desired_status == RUN and a.client_status == RUNNING]

    def run(self, job: job_pb2.Job) -> controller_pb2.RegisterJobResponse:
        return self.api.RegisterJob(controller_pb2.RegisterJobRequest(job=job), timeout=30)

    def stop(self, job: str) -> None:
        with contextlib.suppress(grpc.RpcError):
            self.api.StopJob(controller_pb2.StopJobRequest(name=job, purge=True), timeout=10)

    def deployed(self, job: str, version: int, count: int) -> bool:
        """The deployment of ``version`` succeeded and ``count`` allocations of it run."""
        st = self.status(job)
        dep = st.latest_deployment
        return (dep.job_version == version and dep.status == "successful"
                and sum(1 for a in st.allocations if a.desired_status == RUN
                        and a.client_status == RUNNING and a.job_version == version) == count)

    def node_of(self, alloc: node_pb2.Allocation) -> str:
        return next(n for n, i in self.node_ids.items() if i == alloc.node_id)

    def deploy(self, name: str, count: int = 5) -> list[node_pb2.Allocation]:
        """Run deploy/compose/jobs/web.yaml as ``name``; its allocations once deployed."""
        version = self.run(web_job(name, count=count)).version
        wait(f"{name} deployed", lambda: self.deployed(name, version, count), 90)
        return self.running(name)

    def exactly_once(self, job: str, count: int = 5) -> bool:
        """``count`` allocations run, each in exactly one container, and no other container
        of the job runs (a duplicate left on a node that came back, say)."""
        running = {a.id for a in self.running(job)}
        containers = self.job_containers(job)
        return (len(running) == count and set(containers) == running
                and all(len(c) == 1 for c in containers.values()))

    def serves(self, alloc: node_pb2.Allocation, version: str) -> bool:
        """The replica answers at its agent's address on the harness network."""
        body = self.get(self.ip(self.node_of(alloc)), alloc.ports["http"])
        return body.split() == [alloc.id, version]

    # --- requests -------------------------------------------------------------------------------

    def get(self, host: str, port: int, timeout: float = 2.0) -> str:
        """The body of ``GET /`` (raises on anything but 200)."""
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            body = resp.read().decode()
            if resp.status != 200:
                raise OSError(f"HTTP {resp.status} from {host}:{port}")
            return body
        finally:
            conn.close()


def web_job(name: str, *, count: int = 5, version: str = "1",
            min_healthy: str = "") -> job_pb2.Job:
    """deploy/compose/jobs/web.yaml under another name, count or VERSION."""
    job = load_job_file(WEB_JOB)
    job.name = name
    group = job.groups[0]
    group.count = count
    group.tasks[0].env["VERSION"] = version
    if min_healthy:
        job.update.min_healthy_time.FromNanoseconds(parse_duration(min_healthy))
    return job


H = TypeVar("H", bound=Harness)


@contextlib.contextmanager
def running(h: H) -> Iterator[H]:
    """``h`` up and healthy; everything it made removed afterwards, whatever happened."""
    if shutil.which("docker-compose") is None:
        raise RuntimeError("docker-compose is missing (apt-get install docker-compose)")
    try:
        h.up()
        yield h
    finally:
        h.down()


def started(image: str) -> contextlib.AbstractContextManager[Harness]:
    """The default harness (a controller and five agents), up and healthy."""
    return running(Harness(image))


def _remove_agents_dir(path: Path) -> None:
    """The agents' data on this host; a tmpfs an agent left mounted is unmounted first."""
    if not path.exists():
        return
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
              if line.split()[1].startswith(f"{path}/")]
    for m in sorted(mounts, reverse=True):
        subprocess.run(["umount", "-l", m], check=False, capture_output=True)
    shutil.rmtree(path, ignore_errors=True)
