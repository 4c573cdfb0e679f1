"""Metrics benchmark: what one ``/metrics`` scrape costs an agent with 200 allocations and
50 services, and the controller beside it.

    python -m bench.metrics            # the full run (about a minute)
    python -m bench.metrics --quick    # a smoke run (fewer scrapes)
    python -m bench.metrics --json     # the last line of stdout is one JSON object

The cluster is real and lives in this one process, under uvloop, on a loopback block of
its own (127.0.88.x, so that a demo or a test suite on 127.0.0.x cannot join it): a
``Controller`` on 127.0.88.1 and one ``Agent`` on 127.0.88.2 (process driver; its load
balancer listens on 127.0.88.2; gossip at the LAN defaults). It runs one job of 50
groups; each group has 4 allocations of ``/bin/sleep 600`` (4 millicores, 4 MB: real
processes, each under its supervisor) and one service on a port label, published on a
free port, with an exec check (``/bin/true`` every 60 s): 200 allocations, 200 checks,
and 50 services of 4 endpoints each that reach the load balancer through gossip, as in
a cluster. Nothing sends traffic through the published ports (the endpoints do not
listen): the load balancer's series are all there, its counters stay at zero.

For each daemon:
scrape   GETs of /metrics one after the other (as a Prometheus server scrapes a target) over
         one HTTP/1.1 keep-alive connection, from a client thread of this process; the time
         to the last byte of the body. ``--rounds`` rounds of ``--scrapes``, the daemons in
         turn in each round: p50 of all, p99 = the median of the rounds' p99 (one busy
         moment of this shared machine moves one round, not the figure), max. The
         bound: 50 ms on the agent (``scrape_ms`` in the JSON is the agent's p99).
render   the CPU time the daemon's event loop spends on one scrape (``orch.metrics.render``,
         what the server calls), in all and per collector (p50); and with prometheus_client's
         ``generate_latest`` (the same bytes), for comparison.
size     bytes per scrape, series (sample lines) and metric families.
promtool ``promtool check metrics`` on one scrape of each daemon (Debian's ``prometheus``
         package; ``./run bench metrics`` installs it when missing).

Timings are figures, never a verdict: a loaded machine shows up in them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from bench.report import pct, progress, table
from orch.daemon import freeze_startup_heap
from orch.metrics import render

NET = "127.0.88"
"""The benchmark's own loopback block: controller .1, agent .2."""
TARGET_MS = 50.0
"""The bound on one scrape of the agent (p99)."""
JOB_NAME = "metrics-bench"


# --- the scenario -----------------------------------------------------------------------------


def group_counts(allocs: int, services: int) -> list[int]:
    """Allocations per group: ``allocs`` spread over ``services`` groups (one service each)."""
    return [allocs // services + (1 if i < allocs % services else 0) for i in range(services)]


def free_ports(host: str, n: int) -> list[int]:
    """``n`` distinct TCP ports free on ``host`` now (the kernel's ephemeral range, above
    the scheduler's dynamic range 20000-32000)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket()
            socks.append(s)
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def job_text(counts: list[int], ports: list[int], checks: bool) -> str:
    """The job (JSON, which the job-file reader takes as it takes YAML)."""
    groups = []
    for i, (count, port) in enumerate(zip(counts, ports, strict=True)):
        service: dict[str, Any] = {"name": f"svc-{i:02d}", "port": "http", "published_port": port}
        if checks:
            service["check"] = {"type": "exec", "command": "/bin/true", "interval": "60s",
                                "timeout": "5s"}
        groups.append({
            "name": f"g{i:02d}", "count": count,
            "network": {"ports": [{"label": "http"}]},
            "services": [service],
            "tasks": [{"name": "sleep", "driver": "process", "command": "/bin/sleep",
                       "args": ["600"], "kill_timeout": "2s",
                       "resources": {"cpu_millicores": 4, "memory_mb": 4}}]})
    return json.dumps({"name": JOB_NAME, "type": "service",
                       "update": {"max_parallel": len(counts), "min_healthy_time": "0s"},
                       "groups": groups}, indent=1)


# --- measuring ----------------------------------------------------------------------------------


def scrape_series(host: str, port: int, n: int) -> tuple[list[float], bytes]:
    """``n`` scrapes over one keep-alive connection: seconds each, and the last body."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    times: list[float] = []
    body = b""
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            conn.request("GET", "/metrics", headers={"Accept": "text/plain;version=0.0.4"})
            r = conn.getresponse()
            body = r.read()
            times.append(time.perf_counter() - t0)
            if r.status != 200:
                raise RuntimeError(f"GET http://{host}:{port}/metrics: HTTP {r.status}")
    finally:
        conn.close()
    return times, body


@dataclass
class Daemon:
    name: str
    host: str
    port: int
    registry: CollectorRegistry
    parts: dict[str, Collector]
    """Its collectors, each rendered alone to show where the time goes."""
    times: list[float] = field(default_factory=list)
    """Seconds of every scrape, all rounds."""
    round_p99: list[float] = field(default_factory=list)
    body: bytes = b""


async def render_costs(registry: Collector, n: int, writer: Callable[[Collector], bytes] = render,
                       ) -> tuple[list[float], list[float]]:
    """``writer`` (the server's: ``orch.metrics.render``) ``n`` times on the daemon's loop,
    one render per loop turn with a pause between (gossip and the streams go on as they
    would between scrapes): (wall seconds, CPU seconds of this thread) each."""
    wall: list[float] = []
    cpu: list[float] = []
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.thread_time()
        writer(registry)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
        await asyncio.sleep(0.005)
    return wall, cpu


def shape(text: str) -> tuple[int, int]:
    """(series, metric families) of an exposition."""
    lines = text.splitlines()
    return (sum(1 for ln in lines if ln and not ln.startswith("#")),
            sum(1 for ln in lines if ln.startswith("# TYPE ")))


def promtool(text: str) -> str | None:
    """promtool's complaints ("" when clean), or None when promtool is missing."""
    tool = shutil.which("promtool")
    if tool is None:
        return None
    out = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True,
                         timeout=60, check=False)
    return (out.stdout + out.stderr).strip()


def cpu_ticks() -> tuple[int, int, int]:
    """(all CPUs' busy ticks, all ticks, this process's ticks) so far, from /proc."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    mine = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return sum(fields) - idle, sum(fields), int(mine[11]) + int(mine[12])


async def settle(within: float = 10.0) -> float:
    """Wait until this process has been quiet for a second (< 5 % of the machine's CPUs: the
    start's aftermath is over, the tasks' first usage samples and checks, the reports),
    at most ``within`` seconds: how long it took."""
    t0, prev, quiet = time.monotonic(), cpu_ticks(), 0
    while quiet < 2 and time.monotonic() - t0 < within:
        await asyncio.sleep(0.5)
        cur = cpu_ticks()
        quiet = quiet + 1 if (cur[2] - prev[2]) < 0.05 * max(1, cur[1] - prev[1]) else 0
        prev = cur
    return time.monotonic() - t0


async def measure(daemons: list[Daemon], rounds: int, n: int) -> dict[str, Any]:
    """Scrape every daemon ``n`` times per round, the daemons in turn in each round (so that a
    busy moment of the machine falls on them alike), then render and check each."""
    for d in daemons:  # warm up: the connection, caches
        await asyncio.to_thread(scrape_series, d.host, d.port, 3)
    busy0, all0, mine0 = cpu_ticks()
    for r in range(1, rounds + 1):
        for d in daemons:
            times, d.body = await asyncio.to_thread(scrape_series, d.host, d.port, n)
            d.times += times
            d.round_p99.append(pct(times, 99))
        progress(f"round {r}/{rounds}: " + ", ".join(
            f"{d.name} p50 {1000 * pct(d.times[-n:], 50):.2f} ms p99 "
            f"{1000 * d.round_p99[-1]:.2f} ms" for d in daemons))
    busy1, all1, mine1 = cpu_ticks()
    out: dict[str, Any] = {  # of all CPUs while the rounds ran: the machine, this process
        "machine_busy_pct": 100 * (busy1 - busy0) / max(1, all1 - all0),
        "process_busy_pct": 100 * (mine1 - mine0) / max(1, all1 - all0)}
    for d in daemons:
        wall, cpu = await render_costs(d.registry, n)
        _, lib_cpu = await render_costs(d.registry, max(5, n // 4), generate_latest)
        text = d.body.decode()
        series, families = shape(text)
        parts: dict[str, dict[str, float]] = {}
        for part, collector in d.parts.items():
            one = render(collector)
            _, part_cpu = await render_costs(collector, max(5, n // 4))
            parts[part] = {"series": shape(one.decode())[0], "bytes": len(one),
                           "cpu_p50_ms": 1000 * pct(part_cpu, 50)}
        out[d.name] = {
            "scrapes": len(d.times), "rounds": rounds, "p50_ms": 1000 * pct(d.times, 50),
            "p99_ms": 1000 * statistics.median(d.round_p99),
            "round_p99_ms": [1000 * x for x in d.round_p99],
            "p99_all_ms": 1000 * pct(d.times, 99), "max_ms": 1000 * max(d.times),
            "render_p50_ms": 1000 * pct(wall, 50), "render_cpu_p50_ms": 1000 * pct(cpu, 50),
            "render_cpu_p99_ms": 1000 * pct(cpu, 99),
            "generate_latest_cpu_p50_ms": 1000 * pct(lib_cpu, 50),
            "bytes": len(d.body), "series": series, "families": families,
            "promtool": await asyncio.to_thread(promtool, text), "collectors": parts}
    return out


# --- the cluster --------------------------------------------------------------------------------


async def wait_for(what: str, pred: Callable[[], bool], within: float) -> float:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > within:
            raise TimeoutError(f"{what}: not within {within:g} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


async def run(opts: argparse.Namespace, workdir: Path, result: dict[str, Any]) -> list[str]:
    """Start the cluster, run the job, measure both daemons; stop everything it started."""
    from agent.config import AgentConfig
    from agent.lb.metrics import LbCollector
    from agent.runtime.metrics import RuntimeCollector
    from agent.server import Agent
    from controller.config import ControllerConfig
    from controller.metrics import ControllerCollector
    from controller.server import Controller
    from orch.gossip.metrics import GossipCollector
    from orch.jobspec import parse_job
    from orch.v1.node_pb2 import CLIENT_STATUS_RUNNING as RUNNING

    allocs: int = opts.allocs
    counts = group_counts(allocs, opts.services)
    ports = free_ports(f"{NET}.2", opts.services)
    ctl = Controller(ControllerConfig(
        name="bench-ctl", bind=f"{NET}.1:0", rpc_addr=f"{NET}.1:0", metrics_addr=f"{NET}.1:0",
        http_addr="", data_dir=str(workdir / "ctl")))
    agent: Agent | None = None
    await ctl.start()
    try:
        if ctl.gossip is None:
            raise RuntimeError("the controller has no gossip member")
        agent = ag = Agent(AgentConfig(
            name="bench-agent", bind=f"{NET}.2:0", join=[f"{NET}.1:{ctl.gossip.addr[1]}"],
            rpc_addr=f"{NET}.2:0", metrics_addr=f"{NET}.2:0", lb_bind=f"{NET}.2",
            data_dir=str(workdir / "agent"), drivers=["process"]))
        await agent.start()
        node = agent.node_id
        took = await wait_for("the agent to register", lambda: ctl.cluster.connected(node), 30)
        progress(f"controller and agent up, registered in {took:.1f} s")

        t0 = time.monotonic()
        await ctl.jobs.register(parse_job(job_text(counts, ports, opts.checks), "bench", "json"))
        mesh = agent.mesh
        if mesh is None:
            raise RuntimeError("the agent runs no load balancer")

        def all_healthy() -> bool:
            """Every allocation runs (and passes its check) on the agent, and the controller
            knows that they run. (The controller's own ``healthy`` mark can come later: it
            is set by the scheduling loop's next health pass.)"""
            here = sum(1 for s in ag.runtime.statuses()
                       if s.client_status == "running" and s.healthy)
            there = sum(1 for a in ctl.cluster.state.allocs.values() if a.client_status == RUNNING)
            return here == there == allocs

        def published() -> bool:
            stats = mesh.stats()
            return len(stats) == opts.services and all(
                s.listening and s.endpoints.get("healthy", 0) == counts[int(s.name[4:])]
                for s in stats.values())

        await wait_for(f"{opts.allocs} allocations running and healthy", all_healthy, 90)
        healthy_s = time.monotonic() - t0
        await wait_for(f"the load balancer publishing {opts.services} services", published, 30)
        progress(f"{opts.allocs} allocations healthy after {healthy_s:.1f} s, "
                 f"{opts.services} services published after {time.monotonic() - t0:.1f} s")
        await agent.runtime.sample_usage()  # CPU and memory series now, not in 10 s
        result["start_s"] = healthy_s
        progress(f"this process quiet after {await settle():.1f} s more")
        freeze_startup_heap()  # as orch.daemon.run does once a daemon serves

        if agent.metrics is None or ctl.metrics is None or agent.gossip is None:
            raise RuntimeError("a daemon serves no metrics")
        daemons = [
            Daemon("agent", agent.metrics.host, agent.metrics.port, agent.metrics.registry,
                   {"gossip": GossipCollector(agent.gossip),
                    "runtime": RuntimeCollector(agent.runtime), "lb": LbCollector(mesh)}),
            Daemon("controller", ctl.metrics.host, ctl.metrics.port, ctl.metrics.registry,
                   {"controller": ControllerCollector(ctl.leader, ctl.evaluator, ctl.authz),
                    "gossip": GossipCollector(ctl.gossip)})]
        result.update(await measure(daemons, opts.rounds, opts.scrapes))
        return report(opts, counts, result["agent"], result["controller"])
    finally:
        if agent is not None:
            await agent.stop(stop_tasks=True)
        await ctl.stop(grace=0.5)


# --- the report ---------------------------------------------------------------------------------


def report(opts: argparse.Namespace, counts: list[int], a: dict[str, Any],
           c: dict[str, Any]) -> list[str]:
    def verdict(d: dict[str, Any]) -> str:
        return "missing" if d["promtool"] is None else ("clean" if not d["promtool"] else "NOT clean")

    rows = [[name, d["series"], d["families"], f"{d['bytes']:,}", d["p50_ms"], d["p99_ms"],
             d["max_ms"], d["render_cpu_p50_ms"], d["generate_latest_cpu_p50_ms"], verdict(d)]
            for name, d in (("agent", a), ("controller", c))]
    within = "within" if a["p99_ms"] <= TARGET_MS else "OVER"
    checks = f", {opts.allocs} exec checks" if opts.checks else ""
    out = [table(f"One /metrics scrape over HTTP keep-alive, one at a time: {opts.rounds} rounds "
                 f"of {opts.scrapes} per daemon (agent: {opts.allocs} allocations in "
                 f"{len(counts)} groups, {opts.services} published services{checks}); agent p99 "
                 f"{a['p99_ms']:.2f} ms ({within} the {TARGET_MS:g} ms target)",
                 ["daemon", "series", "families", "bytes", "p50 ms", "p99 ms", "max ms",
                  "CPU ms", "CPU ms (generate_latest)", "promtool"], rows),
           "  p99: the median of the rounds' p99 (" + ", ".join(
               f"{x:.1f}" for x in a["round_p99_ms"]) + " ms on the agent); CPU: the daemon's "
           "CPU time to render one scrape (p50), with orch.metrics.render and with "
           "prometheus_client's generate_latest (the same bytes)"]
    for name, d in (("agent", a), ("controller", c)):
        parts = [[part, p["series"], f"{p['bytes']:,}", p["cpu_p50_ms"]]
                 for part, p in d["collectors"].items()]
        out.append(table(f"{name}: CPU time to render one scrape, by collector (p50)",
                         ["collector", "series", "bytes", "CPU ms"], parts))
    for name, d in (("agent", a), ("controller", c)):
        if d["promtool"]:
            out.append(f"\npromtool check metrics ({name}):\n{d['promtool']}")
    return out


# --- the run ------------------------------------------------------------------------------------


def sweep(workdir: Path) -> int:
    """Kill the tasks under ``workdir`` whose supervisor still runs (after a failure): how many."""
    killed = 0
    for state in workdir.glob("agent/alloc/*/*/state.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            if (state.parent / "exit.json").exists():
                continue
            pids = json.loads(state.read_text())
            shim = int(pids["shim_pid"])
            cmdline = Path(f"/proc/{shim}/cmdline").read_bytes()
            if str(state.parent).encode() not in cmdline:
                continue  # gone, and its pid reused
            os.killpg(int(pids["pgid"]), signal.SIGKILL)
            os.kill(shim, signal.SIGKILL)
            killed += 1
    return killed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--allocs", type=int, default=200, help="allocations on the agent (200)")
    ap.add_argument("--services", type=int, default=50,
                    help="groups, each with one published service (50)")
    ap.add_argument("--scrapes", type=int, help="scrapes per daemon and round (100; quick: 20)")
    ap.add_argument("--rounds", type=int, help="rounds (5; quick: 2): p99 is their median")
    ap.add_argument("--no-checks", dest="checks", action="store_false",
                    help="services without an exec check")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 2 rounds of 20 scrapes")
    ap.add_argument("--keep", action="store_true", help="keep the data folder")
    ap.add_argument("--json", action="store_true", help="end with one JSON line")
    opts = ap.parse_args(argv)
    # grpc's C core logs a line per fork (the exec checks fork) when other threads use it
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    if opts.scrapes is None:
        opts.scrapes = 20 if opts.quick else 100
    if opts.rounds is None:
        opts.rounds = 2 if opts.quick else 5
    if not 0 < opts.services <= min(opts.allocs, 100):
        ap.error("--services must be between 1 and min(--allocs, 100)")
    result: dict[str, Any] = {"quick": opts.quick, "allocs": opts.allocs,
                              "services": opts.services, "checks": opts.checks,
                              "scrapes": opts.scrapes, "rounds": opts.rounds,
                              "target_ms": TARGET_MS, "loadavg_before": os.getloadavg()[0],
                              "cpus": os.cpu_count(), "python": platform.python_version()}
    print(f"orch metrics benchmark: a controller and an agent (process driver) in one process "
          f"on {NET}.x, {os.cpu_count()} CPUs, Python {platform.python_version()}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="orch-bench-metrics-"))
    bound = 90 + 0.25 * opts.allocs + 0.25 * opts.scrapes * opts.rounds
    ok = False
    try:
        import uvloop

        async def bounded() -> list[str]:
            async with asyncio.timeout(bound):
                return await run(opts, workdir, result)

        lines = uvloop.run(bounded())
        print("\n".join(lines), flush=True)
        ok = True
    except (RuntimeError, OSError, TimeoutError) as e:
        print(f"bench.metrics failed: {e!r} (data in {workdir})", file=sys.stderr)
        opts.keep = True
    finally:
        left = sweep(workdir)
        if left:
            print(f"bench.metrics: killed {left} task(s) left behind", file=sys.stderr)
        if not opts.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if not ok:
        return 1
    a, c = result["agent"], result["controller"]
    checks = [a["promtool"], c["promtool"]]
    result.update(
        scrape_ms=a["p99_ms"], scrape_ms_is="agent p99 (median of the rounds' p99)",
        scrape_p50_ms=a["p50_ms"], scrape_max_ms=a["max_ms"],
        scrape_cpu_ms=a["render_cpu_p50_ms"], scrape_bytes=a["bytes"], series=a["series"],
        within_target=a["p99_ms"] <= TARGET_MS,
        controller_scrape_ms=c["p99_ms"], controller_scrape_bytes=c["bytes"],
        controller_series=c["series"],
        promtool_clean=None if None in checks else not any(checks))
    print(f"\nWhile the scrapes ran the machine's CPUs were {result['machine_busy_pct']:.0f} % "
          f"busy, this process {result['process_busy_pct']:.0f} % of them (load average "
          f"{result['loadavg_before']:.2f} before the run): other work on the machine shows "
          f"in the p99 and the max, much less in the CPU time.", flush=True)
    if opts.json:
        print(json.dumps(_finite(result)))
    return 0


def _finite(v: Any) -> Any:
    """JSON without NaN or infinities (null instead)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


if __name__ == "__main__":
    raise SystemExit(main())
