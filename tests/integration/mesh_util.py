"""The routing mesh on a live cluster: a backend that names itself, a bounded client load.

Every backend answers ``GET /`` with ``<allocation id> <VERSION>``, so a client sees
which allocation (and so which node) served it. ``/healthz`` answers 503 while a file
named after the allocation exists in ``SICK_DIR`` (a check the test can make fail).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.client
import json
import socket
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.lb.model import ServiceSpec
from agent.server import Agent
from controller.server import Controller
from controller.state import RUN, RUNNING

# A plain Python HTTP server (the process driver) that takes DELAY seconds per request;
# SIGTERM kills it at once, so a request in flight or still sent to it after its stop
# signal fails: what shutdown_delay has to prevent.
BACKEND = r'''
import http.server, os, time
ALLOC, VERSION = os.environ["ORCH_ALLOC_ID"], os.environ.get("VERSION", "1")
SICK = os.path.join(os.environ.get("SICK_DIR", "/nonexistent"), ALLOC)
DELAY = float(os.environ.get("DELAY", "0"))

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = 503 if self.path == "/healthz" and os.path.exists(SICK) else 200
        if self.path != "/healthz":
            time.sleep(DELAY)  # a request takes a while: some are always in flight
        body = f"{ALLOC} {VERSION} {self.client_address[0]}\n".encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer.daemon_threads = True
server = http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["ORCH_PORT_http"])), Handler)
server.serve_forever()
'''

PROCESS_TASK = """
      - name: server
        driver: process
        command: python3
        args: ["{script}"]
        env: {{VERSION: "{version}", SICK_DIR: "{sick}", DELAY: "{delay}"}}
        kill_timeout: 2s
        resources: {{cpu_millicores: 100, memory_mb: 64}}
"""

# busybox httpd from the locally built test image (deploy/images/build.sh test).
HTTPD = ('mkdir -p /tmp/www && echo "$ORCH_ALLOC_ID $VERSION" >/tmp/www/index.html'
         " && exec httpd -f -p 8080 -h /tmp/www")
DOCKER_TASK = """
      - name: server
        driver: docker
        image: {image}
        command: /bin/sh
        args: ["-c", {script}]
        env: {{VERSION: "{version}"}}
        kill_timeout: 2s
        resources: {{cpu_millicores: 100, memory_mb: 32}}
"""

JOB = """
name: {name}
update: {{max_parallel: 1, min_healthy_time: 0s, healthy_deadline: 30s}}
groups:
  - name: web
    count: {count}
    shutdown_delay: {shutdown_delay}
    {scaling}
    network:
      ports: [{{label: http{to}}}]
    services:
      - name: {service}
        port: http
        published_port: {port}
        lb_policy: {policy}
        check: {{type: http, port: http, path: {check_path}, interval: 500ms, timeout: 500ms,
                 unhealthy_threshold: 1}}
    tasks:{task}
"""


def job_yaml(tmp: Path, *, port: int, count: int = 2, name: str = "mesh", service: str = "echo",
             version: int = 1, shutdown_delay: str = "0s", policy: str = "round_robin",
             scaling: str = "", image: str = "", delay: float = 0.0) -> str:
    """The job file's text: the process backend (``delay`` seconds per request), or busybox
    httpd on Docker with ``image``."""
    if image:
        task = DOCKER_TASK.format(image=image, version=version, script=json.dumps(HTTPD))
        to, check_path = ", to: 8080", "/index.html"
    else:
        script = tmp / "backend.py"
        script.write_text(BACKEND)
        (tmp / "sick").mkdir(exist_ok=True)
        task = PROCESS_TASK.format(script=script, version=version, sick=tmp / "sick",
                                   delay=delay)
        to, check_path = "", "/healthz"
    return JOB.format(name=name, count=count, shutdown_delay=shutdown_delay,
                      scaling=f"scaling: {scaling}" if scaling else "", to=to, service=service,
                      port=port, policy=policy, check_path=check_path, task=task)


def agent_hosts(n: int, net: str) -> list[str]:
    """The addresses live_cluster on ``net`` gives its agents (and their published ports)."""
    return [f"{net}.{i + 1}" for i in range(1, n + 1)]


def free_port(hosts: Sequence[str]) -> int:
    """A TCP port nothing listens on at any of ``hosts`` (the published port of a test)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind((hosts[0], 0))
            port: int = first.getsockname()[1]
            ok = True
            for h in hosts[1:]:
                with socket.socket() as s:
                    try:
                        s.bind((h, port))
                    except OSError:
                        ok = False
                        break
            if ok:
                return port
    raise RuntimeError("no port free on every agent address")


# --- what the cluster says ---------------------------------------------------------------

def service(agent: Agent, name: str) -> ServiceSpec | None:
    """The service named ``name`` in ``agent``'s load balancer (the table is keyed by
    namespace, job, group and name; the tests' service names are unique)."""
    assert agent.mesh is not None
    return next((s for s in agent.mesh.table.values() if s.name == name), None)


def table(agent: Agent, name: str) -> set[str]:
    """The allocation ids in ``agent``'s load balancer for the service ``name``."""
    spec = service(agent, name)
    return {e.alloc_id for e in spec.endpoints} if spec is not None else set()


def running(ctl: Controller, job: str) -> dict[str, str]:
    """alloc id -> node name of the job's allocations that should run and do."""
    state = ctl.cluster.state
    out = {}
    for a in state.allocs.values():
        if a.job == job and a.desired_status == RUN and a.client_status == RUNNING:
            node = state.nodes.get(a.node_id)
            out[a.id] = node.name if node is not None else a.node_id
    return out


def healthy(ctl: Controller, job: str) -> set[str]:
    state = ctl.cluster.state
    return {a.id for a in state.allocs.values() if a.job == job and a.desired_status == RUN
            and a.client_status == RUNNING and a.checks_healthy}


def converged(ctl: Controller, agents: Iterable[Agent], job: str, service: str,
              count: int) -> bool:
    """``count`` healthy allocations, and exactly those in every agent's table."""
    want = healthy(ctl, job)
    return len(want) == count and len(running(ctl, job)) == count and all(
        table(a, service) == want for a in agents)


def refused(host: str, port: int) -> bool:
    """Whether nothing listens at host:port any more."""
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) != 0


class Tables:
    """Every endpoint table each agent's mesh takes, with its time (shown when a test fails)."""

    def __init__(self, agents: Iterable[Agent], service: str) -> None:
        self.t0, self.wall0 = time.monotonic(), time.time()
        self.seen: list[str] = []
        for a in agents:
            assert a.mesh is not None
            a.mesh.listeners.append(functools.partial(self._record, a.cfg.name, service=service))

    def _record(self, name: str, t: dict[str, ServiceSpec], *, service: str) -> None:
        spec = next((s for s in t.values() if s.name == service), None)
        eps = " ".join(sorted(e.alloc_id[:8] for e in spec.endpoints)) if spec else "-"
        self.seen.append(f"{time.monotonic() - self.t0:.2f}s {name}: {eps}")

    def __str__(self) -> str:
        return "\n".join(self.seen)

    def events(self, ctl: Controller) -> str:
        """The controller's events since, on the same clock."""
        return "\n".join(f"{e.time_ns / 1e9 - self.wall0:.2f}s {e.type} {e.message}"
                         for e in ctl.cluster.events.recent if e.time_ns / 1e9 >= self.wall0)


class Arrivals:
    """Every endpoint, the moment an agent's table first holds it, is asked for ``path``: it
    has to answer 200 by then (new replicas join the load balancer only once healthy; the
    load balancer would retry a refused connect elsewhere, so a load alone would not tell)."""

    def __init__(self, agents: Iterable[Agent], service: str, path: str = "/healthz") -> None:
        self.path = path
        self.seen: set[tuple[str, str]] = set()
        """(agent, allocation) pairs checked."""
        self.early: list[str] = []
        """What answered otherwise, and where."""
        for a in agents:
            assert a.mesh is not None
            a.mesh.listeners.append(functools.partial(self._record, a.cfg.name, service=service))

    def _record(self, name: str, t: dict[str, ServiceSpec], *, service: str) -> None:
        spec = next((s for s in t.values() if s.name == service), None)
        for e in spec.endpoints if spec is not None else ():
            if (name, e.alloc_id) in self.seen:
                continue
            self.seen.add((name, e.alloc_id))
            # blocking, on this loop: the endpoint is another process, it answers at once
            conn = http.client.HTTPConnection(e.host, e.port, timeout=2.0)
            try:
                conn.request("GET", self.path)
                status = conn.getresponse().status
            except OSError as exc:
                self.early.append(f"{name}: {e.alloc_id[:8]} at {e.host}:{e.port}: {exc!r}")
            else:
                if status != 200:
                    self.early.append(f"{name}: {e.alloc_id[:8]} answered {status}")
            finally:
                conn.close()


# --- clients -----------------------------------------------------------------------------

async def get(host: str, port: int, within: float = 5.0) -> str:
    """``GET /`` on a new connection; the body (``<alloc> <version>``). Raises on failure."""
    async with asyncio.timeout(within):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(b"GET / HTTP/1.0\r\nHost: mesh\r\n\r\n")
            data = await reader.read(-1)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if not status.startswith(b"HTTP/1.") or status.split()[1:2] != [b"200"]:
        raise ConnectionError(f"bad answer: {data[:80]!r}")
    return body.decode().strip()


@dataclass
class Load:
    """``clients`` tasks, each sending requests one after another (a new connection each),
    in turn to every target, pausing ``pause`` seconds between two; failures counted.
    Bounded: no more than ``max_requests`` requests nor ``max_seconds`` seconds in all
    (``exhausted`` then, and a test whose operation outlasted its load says so)."""

    targets: list[tuple[str, int]]
    clients: int = 4
    pause: float = 0.02
    max_requests: int = 20_000
    max_seconds: float = 50.0
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    served: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(target host, body) -> requests answered."""
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)
    exhausted: bool = False

    def start(self) -> Load:
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(self.clients)]
        return self

    async def _client(self, i: int) -> None:
        n = i
        while not self._stop.is_set():
            if (self.ok + self.failed >= self.max_requests
                    or time.monotonic() - self.t0 >= self.max_seconds):
                self.exhausted = True
                return
            host, port = self.targets[n % len(self.targets)]
            n += 1
            try:
                body = await get(host, port)
            except (OSError, TimeoutError, ConnectionError, IndexError) as e:
                self.failed += 1
                if len(self.errors) < 20:
                    self.errors.append(f"{time.monotonic() - self.t0:.2f}s {host}: {e!r}")
            else:
                self.ok += 1
                self.served[(host, body)] += 1
            await asyncio.sleep(self.pause)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def bodies(self, host: str | None = None) -> set[str]:
        """What answered: each answer's allocation and version (not the client's address,
        which depends on the path the request took)."""
        return {" ".join(b.split()[:2]) for (h, b) in self.served if host is None or h == host}

    def allocs(self) -> set[str]:
        """The allocations that answered."""
        return {b.split()[0] for (_, b) in self.served}

    def answered_by(self, allocs: set[str]) -> bool:
        """Whether every one of ``allocs`` answered some request."""
        return allocs <= self.allocs()

    def summary(self) -> str:
        return (f"{self.ok} answered, {self.failed} failed in {time.monotonic() - self.t0:.1f}s"
                f"{' (bound reached)' if self.exhausted else ''}: {self.errors}")

    def check(self) -> None:
        """No request failed, some were answered, and the load lasted as long as the test."""
        assert self.failed == 0, self.summary()
        assert self.ok > 0, self.summary()
        assert not self.exhausted, self.summary()


async def hold(host: str, port: int, n: int) -> list[asyncio.StreamWriter]:
    """``n`` open connections through a published port (nothing sent on them)."""
    out = []
    for _ in range(n):
        _, writer = await asyncio.open_connection(host, port)
        out.append(writer)
    return out


async def release(writers: list[asyncio.StreamWriter]) -> None:
    for w in writers:
        w.close()
    for w in writers:
        with contextlib.suppress(OSError):
            await w.wait_closed()
