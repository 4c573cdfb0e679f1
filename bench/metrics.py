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
listen): the series are all there, their values stay at zero.

For each daemon:
scrape   ``--scrapes`` GETs of /metrics one after the other (as a Prometheus server
         scrapes a target) over one HTTP/1.1 keep-alive connection, from a client thread
         of this process; the time to the last byte of the body: p50, p99, max. The
         issue's bound: 50 ms on the agent (``scrape_ms`` in the JSON is the agent's p99).
render   the same registry rendered on the daemon's event loop (``generate_latest``): the
         time the loop is busy per scrape, in all and per collector (p50).
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
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from bench.report import pct, progress, table

NET = "127.0.88"
"""The benchmark's own loopback block: controller .1, agent .2."""
TARGET_MS = 50.0
"""The issue's bound on one scrape of the agent."""
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


async def render_times(registry: CollectorRegistry, n: int) -> list[float]:
    """``generate_latest`` on this loop ``n`` times, yielding between renders (the daemon's
    gossip and streams go on): seconds each."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        generate_latest(registry)
        out.append(time.perf_counter() - t0)
        await asyncio.sleep(0.005)
    return out


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


async def measure(name: str, host: str, port: int, registry: CollectorRegistry,
                  parts: dict[str, Collector], n: int) -> dict[str, Any]:
    """Scrape, render and check one daemon's /metrics."""
    await asyncio.to_thread(scrape_series, host, port, 3)  # warm up: connection, caches
    times, body = await asyncio.to_thread(scrape_series, host, port, n)
    renders = await render_times(registry, n)
    text = body.decode()
    series, families = shape(text)
    by_part: dict[str, dict[str, float]] = {}
    for part, collector in parts.items():
        reg = CollectorRegistry(auto_describe=False)
        reg.register(collector)
        one = generate_latest(reg).decode()
        by_part[part] = {"series": shape(one)[0], "bytes": len(one.encode()),
                         "render_p50_ms": 1000 * pct(await render_times(reg, max(5, n // 4)),
                                                     50)}
    complaints = await asyncio.to_thread(promtool, text)
    progress(f"{name}: {series} series, {len(body):,} bytes, scrape p50 "
             f"{1000 * pct(times, 50):.2f} ms, p99 {1000 * pct(times, 99):.2f} ms")
    return {"scrapes": n, "p50_ms": 1000 * pct(times, 50), "p99_ms": 1000 * pct(times, 99),
            "max_ms": 1000 * max(times), "render_p50_ms": 1000 * pct(renders, 50),
            "render_p99_ms": 1000 * pct(renders, 99), "bytes": len(body), "series": series,
            "families": families, "promtool": complaints, "collectors": by_part}


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
    from agent.gossip.metrics import GossipCollector
    from agent.lb.metrics import LbCollector
    from agent.runtime.metrics import RuntimeCollector
    from agent.server import Agent
    from controller.config import ControllerConfig
    from controller.metrics import ControllerCollector
    from controller.server import Controller
    from orch.jobspec import parse_job
    from orch.v1.node_pb2 import CLIENT_STATUS_RUNNING as RUNNING

    allocs: int = opts.allocs
    counts = group_counts(allocs, opts.services)
    ports = free_ports(f"{NET}.2", opts.services)
    ctl = Controller(ControllerConfig(
        name="bench-ctl", bind=f"{NET}.1:0", rpc_addr=f"{NET}.1:0", metrics_addr=f"{NET}.1:0",
        data_dir=str(workdir / "ctl")))
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

        if agent.metrics is None or ctl.metrics is None or agent.gossip is None:
            raise RuntimeError("a daemon serves no metrics")
        agent_parts: dict[str, Collector] = {
            "gossip": GossipCollector(agent.gossip), "runtime": RuntimeCollector(agent.runtime),
            "lb": LbCollector(mesh)}
        ctl_parts: dict[str, Collector] = {
            "controller": ControllerCollector(ctl), "gossip": GossipCollector(ctl.gossip)}
        a = await measure("agent", agent.metrics.host, agent.metrics.port,
                          agent.metrics.registry, agent_parts, opts.scrapes)
        c = await measure("controller", ctl.metrics.host, ctl.metrics.port,
                          ctl.metrics.registry, ctl_parts, opts.scrapes)
        result["agent"], result["controller"] = a, c
        return report(opts, counts, a, c)
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
             d["max_ms"], d["render_p50_ms"], verdict(d)]
            for name, d in (("agent", a), ("controller", c))]
    within = "within" if a["p99_ms"] <= TARGET_MS else "OVER"
    checks = f", {opts.allocs} exec checks" if opts.checks else ""
    out = [table(f"One /metrics scrape: {opts.scrapes} scrapes per daemon over HTTP keep-alive, "
                 f"one at a time (agent: {opts.allocs} allocations in {len(counts)} groups, "
                 f"{opts.services} published services{checks}); agent p99 {a['p99_ms']:.2f} ms "
                 f"({within} the {TARGET_MS:g} ms target)",
                 ["daemon", "series", "families", "bytes", "p50 ms", "p99 ms", "max ms",
                  "render p50 ms", "promtool"], rows)]
    for name, d in (("agent", a), ("controller", c)):
        parts = [[part, p["series"], f"{p['bytes']:,}", p["render_p50_ms"]]
                 for part, p in d["collectors"].items()]
        out.append(table(f"{name}: render time by collector (generate_latest on the daemon's "
                         f"loop, p50)", ["collector", "series", "bytes", "render p50 ms"], parts))
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
    ap.add_argument("--scrapes", type=int, help="scrapes per daemon (200; quick: 30)")
    ap.add_argument("--no-checks", dest="checks", action="store_false",
                    help="services without an exec check")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 30 scrapes per daemon")
    ap.add_argument("--keep", action="store_true", help="keep the data folder")
    ap.add_argument("--json", action="store_true", help="end with one JSON line")
    opts = ap.parse_args(argv)
    # grpc's C core logs a line per fork (the exec checks fork) when other threads use it
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    if opts.scrapes is None:
        opts.scrapes = 30 if opts.quick else 200
    if not 0 < opts.services <= min(opts.allocs, 100):
        ap.error("--services must be between 1 and min(--allocs, 100)")
    result: dict[str, Any] = {"quick": opts.quick, "allocs": opts.allocs,
                              "services": opts.services, "checks": opts.checks,
                              "scrapes": opts.scrapes, "target_ms": TARGET_MS,
                              "cpus": os.cpu_count(), "python": platform.python_version()}
    print(f"orch metrics benchmark: a controller and an agent (process driver) in one process "
          f"on {NET}.x, {os.cpu_count()} CPUs, Python {platform.python_version()}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="orch-bench-metrics-"))
    bound = 90 + 0.25 * opts.allocs + 0.2 * opts.scrapes
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
        scrape_ms=a["p99_ms"], scrape_ms_is="agent p99", scrape_p50_ms=a["p50_ms"],
        scrape_max_ms=a["max_ms"], scrape_bytes=a["bytes"], series=a["series"],
        within_target=a["p99_ms"] <= TARGET_MS,
        controller_scrape_ms=c["p99_ms"], controller_scrape_bytes=c["bytes"],
        controller_series=c["series"],
        promtool_clean=None if None in checks else not any(checks))
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
