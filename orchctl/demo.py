"""The main job, run by ``./run demo``: a local orch cluster on 127.0.0.x, end to end.

A controller on 127.0.0.1 and three agents on 127.0.0.2-127.0.0.4 (real
``orch-controller`` and ``orch-agent`` processes, gossip at orch's LAN
timings); the agents find the controller through gossip. A sample web service
of three replicas runs on them (Docker when an engine answers, the process
driver otherwise); the demo shows ``orchctl`` output, asks every replica for a
page, kills one agent with SIGKILL and shows its allocations rescheduled,
brings it back (it stops what now runs elsewhere), and stops everything.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc

from orch.net import (
    AGENT_METRICS_PORT,
    AGENT_RPC_PORT,
    CONTROLLER_HTTP_PORT,
    CONTROLLER_METRICS_PORT,
    CONTROLLER_RPC_PORT,
    GOSSIP_PORT,
)
from orchctl.client import Settings, blocking_channel, settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "deploy" / "examples"


def say(text: str) -> None:
    print(f"\033[1m==> {text}\033[0m" if sys.stdout.isatty() else f"==> {text}", flush=True)


WELL_KNOWN = (GOSSIP_PORT, CONTROLLER_RPC_PORT, AGENT_RPC_PORT)
"""Gossip, controller RPC and agent RPC ports of the demo."""


def free_ports() -> tuple[int, int, int]:
    """Three ports free on 127.0.0.1 (UDP and TCP), for clusters that must not collide with
    a demo that is running (tests, benchmarks)."""
    found: list[int] = []
    while len(found) < 3:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
            if port not in found:
                found.append(port)
    return found[0], found[1], found[2]


class Demo:
    def __init__(self, workdir: Path, agents: int, fast: bool, driver: str,
                 ports: tuple[int, int, int] = WELL_KNOWN, net: str = "127.0.0",
                 controller_flags: tuple[str, ...] = ()) -> None:
        self.dir = workdir
        workdir.chmod(0o711)  # tasks run as an unprivileged user: they pass through to their own
        self.controller_flags = controller_flags
        """Extra orch-controller flags (the benchmark lifts the rate limit)."""
        self.n = agents
        self.fast = fast
        self.driver = driver
        self.net = net
        """The controller runs on ``net``.1, agent i on ``net``.(i+1)."""
        self.gossip_port, self.rpc_port, self.agent_port = ports
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {**os.environ, "ORCH_ADDR": f"{net}.1:{self.rpc_port}",
                    "PYTHONUNBUFFERED": "1"}

    # --- processes -----------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> None:
        with open(self.dir / f"{name}.log", "ab") as log:  # the child keeps its own copy
            self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=log, env=self.env,
                                                stdin=subprocess.DEVNULL, start_new_session=True)

    def metrics_port(self, well_known: int) -> int:
        """The well-known metrics port in the demo; any free one beside another cluster."""
        return well_known if self.rpc_port == WELL_KNOWN[1] and self.net == "127.0.0" else 0

    def profile(self) -> list[str]:
        return ["--profile", "fast"] if self.fast else []

    @property
    def operator(self) -> Path:
        """What the controller's bootstrap made for the operator (orchctl.toml, certificate,
        management token, join tokens)."""
        return self.dir / "controller" / "pki" / "operator"

    def start_controller(self) -> None:
        self.env["ORCH_CONFIG"] = str(self.operator / "orchctl.toml")
        self._spawn("controller", [
            sys.executable, "-m", "controller.main", "--name", "controller", "--bootstrap",
            "--bind", f"{self.net}.1:{self.gossip_port}",
            "--rpc-addr", f"{self.net}.1:{self.rpc_port}",
            "--data-dir", str(self.dir / "controller"), "--log-format", "json",
            "--metrics-addr", f"{self.net}.1:{self.metrics_port(CONTROLLER_METRICS_PORT)}",
            "--http-addr", f"{self.net}.1:{self.metrics_port(CONTROLLER_HTTP_PORT)}",
            "--node-grace", "1" if self.fast else "3", *self.profile(), *self.controller_flags])

    def operator_settings(self) -> Settings:
        """orchctl's settings for this cluster's operator (what the bootstrap made)."""
        self.wait_trust()
        return settings({"ORCH_CONFIG": self.env["ORCH_CONFIG"]})

    def channel(self) -> grpc.Channel:
        """A blocking channel to the controller with the operator's credentials."""
        return blocking_channel(f"{self.net}.1:{self.rpc_port}", self.operator_settings())

    def wait_trust(self, within: float = 30) -> float:
        """Until the controller's first term made the management token and the join tokens."""
        return wait("the cluster's trust", lambda: (self.operator / "join-agent.token").exists()
                    and (self.operator / "management.token").exists(), within)

    def start_agent(self, i: int) -> None:
        name = f"agent-{i}"
        if not (self.operator / "join-agent.token").exists():
            self.wait_trust()
        self._spawn(name, [
            sys.executable, "-m", "agent.main", "--name", name,
            "--join-token-file", str(self.operator / "join-agent.token"),
            "--controller", f"{self.net}.1:{self.rpc_port}",
            "--bind", f"{self.net}.{i + 1}:{self.gossip_port}",
            "--join", f"{self.net}.1:{self.gossip_port}",
            "--rpc-addr", f"{self.net}.{i + 1}:{self.agent_port}",
            "--lb-bind", f"{self.net}.{i + 1}",
            "--metrics-addr", f"{self.net}.{i + 1}:{self.metrics_port(AGENT_METRICS_PORT)}",
            "--data-dir", str(self.dir / name), "--driver", self.driver, "--log-format", "json",
            *self.profile()])

    def kill(self, name: str) -> None:
        p = self.procs[name]
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()

    def cleanup_tasks(self) -> None:
        """Stop tasks that outlived their agents (after a failure): process tasks under this
        demo's folder, and containers labelled with this demo's nodes."""
        for state in self.dir.glob("*/alloc/*/*/state.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                pids = json.loads(state.read_text())
                if not (state.parent / "exit.json").exists():
                    os.killpg(int(pids["pgid"]), signal.SIGKILL)  # the task
                    os.kill(int(pids["shim_pid"]), signal.SIGKILL)  # its supervisor
        if self.driver == "docker":
            for node_id in self.dir.glob("*/node-id"):
                ids = subprocess.run(
                    ["docker", "ps", "-aq", "--filter", f"label=orch.node={node_id.read_text().strip()}"],
                    capture_output=True, text=True, check=False).stdout.split()
                if ids:
                    subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    # --- orchctl -------------------------------------------------------------------------------

    def orchctl(self, *args: str, show: bool = True, check: bool = True) -> str:
        if show:
            print(f"$ orchctl {' '.join(args)}", flush=True)
        out = subprocess.run([sys.executable, "-m", "orchctl.main", *args], env=self.env,
                             capture_output=True, text=True, timeout=120, check=False)
        text = out.stdout + out.stderr
        if show:
            print("\n".join("  " + line for line in text.rstrip().splitlines()), flush=True)
        if check and out.returncode != 0:
            raise RuntimeError(f"orchctl {' '.join(args)} exited {out.returncode}: {text}")
        return out.stdout

    def status(self, job: str) -> dict[str, object]:
        st = json.loads(self.orchctl("-o", "json", "job", "status", job, show=False))
        assert isinstance(st, dict)
        return st


def wait(what: str, pred: Callable[[], bool], within: float) -> float:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > within:
            raise RuntimeError(f"timed out after {within:g}s waiting for {what}")
        time.sleep(0.2)
    return time.monotonic() - t0


def running_on(st: dict[str, object]) -> dict[str, str]:
    """alloc id -> node id of the allocations that should run and do."""
    allocs = st.get("allocations", [])
    assert isinstance(allocs, list)
    return {a["id"]: a["node_id"] for a in allocs
            if a.get("desired_status") == "DESIRED_STATUS_RUN"
            and a.get("client_status") == "CLIENT_STATUS_RUNNING"}


def docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "version"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


PUBLISHED = 8080
"""The sample service's published port (deploy/examples/hello*.yaml)."""


def fetch(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return f"{r.status} {r.reason}"
    except OSError as e:
        return f"error: {e}"


def run(agents: int, fast: bool, keep: bool, ports: tuple[int, int, int] = WELL_KNOWN) -> int:
    driver = "process"
    job_file = EXAMPLES / "hello.yaml"
    if docker_answers():
        built = subprocess.run([str(ROOT / "deploy" / "images" / "build.sh"), "test"],
                               capture_output=True, text=True, check=False)
        if built.returncode == 0:
            driver, job_file = "docker", EXAMPLES / "hello-docker.yaml"
        else:
            print(f"  (Docker answers but the test image did not build: {built.stderr.strip()}; "
                  "using the process driver)")
    workdir = Path(tempfile.mkdtemp(prefix="orch-demo-"))
    demo = Demo(workdir, agents, fast, driver, ports)
    ok = False
    try:
        say(f"starting a controller on 127.0.0.1 (driver: {driver}; logs in {workdir}); it "
            "bootstraps the cluster's trust")
        demo.start_controller()
        demo.wait_trust()
        print("  a new CA; certificates for the controller and the operator (role cli); the "
              "first gossip key;\n  an access token for the operator and join tokens, in "
              f"{demo.operator.relative_to(workdir)}/")
        if demo.metrics_port(CONTROLLER_HTTP_PORT):
            print(f"  the web UI: https://{demo.net}.1:{CONTROLLER_HTTP_PORT}/ui/ (log in with the "
                  "token in management.token, while the demo runs)")
        demo.orchctl("cluster", "join-token", "agent")
        say(f"starting {agents} agents on 127.0.0.2-127.0.0.{agents + 1}, each with the agent "
            "join token")
        for i in range(1, agents + 1):
            demo.start_agent(i)
        took = wait("the agents to register", lambda: demo.orchctl(
            "-o", "json", "node", "list", show=False, check=False).count('"NODE_STATUS_READY"')
            == agents, 60)
        print(f"  every agent made its key, got a certificate for its node (and the gossip key) "
              f"and registered in {took:.1f}s")
        demo.orchctl("members")
        demo.orchctl("node", "list")

        say(f"running {job_file.relative_to(ROOT)}: three replicas of a web server")
        demo.orchctl("job", "run", str(job_file))
        demo.orchctl("job", "status", "hello")
        st = demo.status("hello")
        demo.orchctl("service", "list")
        services = json.loads(demo.orchctl("-o", "json", "service", "list", show=False))
        for ep in services[0]["endpoints"] if services else []:
            print(f"  GET http://{ep['address']}/  ->  {fetch('http://' + ep['address'] + '/')}")
        mesh = [f"{demo.net}.{i + 1}:{PUBLISHED}" for i in range(1, agents + 1)]
        say(f"the routing mesh: port {PUBLISHED} on every agent reaches the service wherever it "
            "runs")
        wait("every agent's load balancer to answer", lambda: all(
            fetch(f"http://{a}/").startswith("200") for a in mesh), 30)
        for a in mesh:
            print(f"  GET http://{a}/  ->  {fetch(f'http://{a}/')}")

        nodes = {n["name"]: n["id"] for n in json.loads(demo.orchctl(
            "-o", "json", "node", "list", show=False))}
        before = running_on(st)
        victim = next(name for name, nid in sorted(nodes.items()) if nid in before.values())
        lost = {a for a, n in before.items() if n == nodes[victim]}
        say(f"killing {victim} with SIGKILL: its {len(lost)} allocation(s) must move")
        t0 = time.monotonic()
        demo.kill(victim)
        wait("the node to be marked down", lambda: any(
            n["name"] == victim and n["status"] == "NODE_STATUS_DOWN" for n in json.loads(
                demo.orchctl("-o", "json", "node", "list", show=False))), 60)
        down = time.monotonic() - t0
        wait("the replacements to run", lambda: len(running_on(demo.status("hello"))) == 3
             and not set(running_on(demo.status("hello"))) & lost, 60)
        print(f"  {victim} marked down after {down:.1f}s; its allocations running elsewhere after "
              f"{time.monotonic() - t0:.1f}s")
        alive = [a for i, a in enumerate(mesh, start=1) if f"agent-{i}" != victim]
        wait("the surviving agents' load balancers to answer", lambda: all(
            fetch(f"http://{a}/").startswith("200") for a in alive), 30)
        for a in alive:
            print(f"  GET http://{a}/  ->  {fetch(f'http://{a}/')}")
        demo.orchctl("job", "status", "hello")

        say(f"starting {victim} again: it rejoins, and stops what now runs elsewhere")
        demo.start_agent(int(victim.split("-")[1]))
        wait("the node to be ready", lambda: all(
            n["status"] == "NODE_STATUS_READY" for n in json.loads(
                demo.orchctl("-o", "json", "node", "list", show=False))), 60)
        demo.orchctl("node", "list")
        demo.orchctl("events")

        say("stopping the job and the cluster")
        demo.orchctl("job", "stop", "hello")
        wait("the allocations to stop", lambda: not running_on(demo.status("hello")), 60)
        ok = True
    except (RuntimeError, OSError, ValueError, KeyError) as e:
        print(f"demo failed: {e}", file=sys.stderr)
        for log in sorted(workdir.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-5:]
            print(f"--- {log.name}\n" + "\n".join(tail), file=sys.stderr)
    finally:
        demo.stop_all()
        demo.cleanup_tasks()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    say("done: every process stopped" if ok else "failed")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=3, help="number of agents (2..8)")
    ap.add_argument("--fast", action="store_true", help="short timings (for tests)")
    ap.add_argument("--keep", action="store_true", help="keep the data and log folder")
    ap.add_argument("--free-ports", action="store_true",
                    help="use free ports instead of 7946/4647/4648 (beside a running cluster)")
    opts = ap.parse_args(argv)
    if not 2 <= opts.agents <= 8:
        ap.error("--agents must be within 2..8")
    return run(opts.agents, opts.fast, opts.keep, free_ports() if opts.free_ports else WELL_KNOWN)


if __name__ == "__main__":
    raise SystemExit(main())
