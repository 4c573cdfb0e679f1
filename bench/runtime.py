"""Runtime benchmark: ``python -m bench.runtime [--json] [--runs N] [--idle-seconds S]``.

Needs a Docker engine (``./run test`` or ``dockerd &``) and builds the test image
(deploy/images/build.sh test) if it is missing. Prints a table; with ``--json``
the last stdout line is one JSON object.

start20  Time from a new desired set of 20 allocations (one busybox container each)
         to all 20 reported running, against ``docker run -d`` of the same 20
         containers (same image, limits and labels) in the same run: all 20 at once
         (the anchor of the ratio) and one after the other. Median of ``--runs``
         runs, the order of orch and docker alternating.
idle     An agent process (the runtime under uvloop, default settings: usage sampled
         every 10 s, GC every 60 s) running 50 containers, measured while idle:
         CPU (% of one core) and resident memory.

Every container is labelled ``orch.bench=<run id>`` and removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "orch/busybox:test"
BENCH_LABEL = "orch.bench"


def _bench_allocs(n: int, run: str) -> list[Any]:
    from agent.runtime.state import AllocSpec
    from orch.jobspec.model import Group, Task
    task = Task(name="main", image=IMAGE, command="sleep", args=("3600",),
                kill_signal="SIGKILL", kill_timeout=1.0, labels={BENCH_LABEL: run})
    return [AllocSpec(id=f"{run}-{i:02d}", name=f"bench.g[{i}]", job="bench", index=i,
                      group=Group(name="g", tasks=(task,))) for i in range(n)]


def _runtime(node: str, data: str, **settings: Any) -> Any:
    from agent.runtime.config import RuntimeConfig
    from agent.runtime.docker import DockerDriver
    from agent.runtime.runtime import Runtime
    cfg = RuntimeConfig(node_id=node, data_dir=Path(data), **settings)
    return Runtime(cfg, {"docker": DockerDriver(node_id=node)})


async def _until_running(rt: Any, ids: set[str]) -> None:
    from agent.runtime.state import AllocStatus
    running: set[str] = set()
    while running != ids:
        for u in await rt.next_updates():
            if isinstance(u, AllocStatus) and u.client_status == "running":
                running.add(u.alloc_id)
            elif isinstance(u, AllocStatus) and u.client_status == "failed":
                raise SystemExit(f"allocation {u.alloc_id} failed: {u.tasks}")


async def orch_start(n: int) -> float:
    run = f"b{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as data:
        rt = _runtime(f"bench-{run}", data, usage_interval=3600, gc_interval=3600)
        await rt.start()
        allocs = _bench_allocs(n, run)
        try:
            began = time.perf_counter()
            await rt.apply(1, allocs)
            await _until_running(rt, {a.id for a in allocs})
            took = time.perf_counter() - began
        finally:
            await rt.close(stop_tasks=True)
    return took


def _docker_run_args(run: str, i: int) -> list[str]:
    return ["docker", "run", "-d", "--name", f"{run}-{i:02d}", "--label", f"{BENCH_LABEL}={run}",
            "--cpus", "0.1", "--cpu-shares", "102", "--memory", "64m", "--memory-swap", "64m",
            "--log-opt", "max-size=10240k", "--log-opt", "max-file=3", IMAGE, "sleep", "3600"]


async def docker_run_start(n: int, *, parallel: bool) -> float:
    run = f"d{uuid.uuid4().hex[:8]}"
    began = time.perf_counter()
    try:
        if parallel:
            procs = [await asyncio.create_subprocess_exec(
                *_docker_run_args(run, i), stdout=subprocess.DEVNULL) for i in range(n)]
            codes = await asyncio.gather(*(p.wait() for p in procs))
        else:
            codes = []
            for i in range(n):
                p = await asyncio.create_subprocess_exec(*_docker_run_args(run, i),
                                                         stdout=subprocess.DEVNULL)
                codes.append(await p.wait())
        took = time.perf_counter() - began
        if any(codes):
            raise SystemExit(f"docker run failed: exit codes {codes}")
    finally:
        remove_labelled(run)
    return took


def remove_labelled(run: str) -> None:
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={BENCH_LABEL}={run}"],
                         capture_output=True, text=True, check=False).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)


# --- the idle agent (a child process, so that its CPU and memory are its own) ----------------

async def _idle_agent(n: int, run: str) -> None:
    with tempfile.TemporaryDirectory() as data:
        rt = _runtime(f"bench-{run}", data)
        await rt.start()
        allocs = _bench_allocs(n, run)
        try:
            await rt.apply(1, allocs)
            await _until_running(rt, {a.id for a in allocs})
            await rt.settle()
            print("ready", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        finally:
            await rt.close(stop_tasks=True)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def idle(n: int, seconds: float) -> tuple[float, float]:
    run = f"i{uuid.uuid4().hex[:8]}"
    child = subprocess.Popen([sys.executable, "-m", "bench.runtime", "--idle-agent", str(n), run],
                             cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        if child.stdout.readline().strip() != "ready":
            raise SystemExit("the idle agent did not start its containers")
        time.sleep(2)  # let the start-up settle
        cpu0, t0 = _cpu_seconds(child.pid), time.monotonic()
        time.sleep(seconds)
        cpu1, t1 = _cpu_seconds(child.pid), time.monotonic()
        rss = _rss_mb(child.pid)
        child.stdin.write("stop\n")
        child.stdin.flush()
        child.wait(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
        remove_labelled(run)
    return 100 * (cpu1 - cpu0) / (t1 - t0), rss


def _engine() -> str:
    done = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit("no Docker engine answers: start one (./run test does, or dockerd &)")
    subprocess.run([str(ROOT / "deploy" / "images" / "build.sh"), "test"], check=True,
                   stdout=subprocess.DEVNULL)
    return done.stdout.strip()


def runs(xs: list[float]) -> str:
    return " ".join(f"{x:.2f}" for x in xs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="end with one JSON line")
    ap.add_argument("--runs", type=int, default=5, help="start20 runs (median)")
    ap.add_argument("--idle-seconds", type=float, default=30.0)
    ap.add_argument("--idle-containers", type=int, default=50)
    ap.add_argument("--idle-agent", nargs=2, help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    if opts.idle_agent:
        import uvloop
        uvloop.run(_idle_agent(int(opts.idle_agent[0]), opts.idle_agent[1]))
        return 0

    version = _engine()
    orch, par, seq = [], [], []
    for i in range(opts.runs):
        first_orch = i % 2 == 0
        if first_orch:
            orch.append(asyncio.run(orch_start(20)))
        par.append(asyncio.run(docker_run_start(20, parallel=True)))
        seq.append(asyncio.run(docker_run_start(20, parallel=False)))
        if not first_orch:
            orch.append(asyncio.run(orch_start(20)))
    cpu, rss = idle(opts.idle_containers, opts.idle_seconds)

    m_orch, m_par, m_seq = (statistics.median(x) for x in (orch, par, seq))
    result: dict[str, Any] = {
        "start20_orch_s": round(m_orch, 3),
        "start20_docker_run_parallel_s": round(m_par, 3),
        "start20_docker_run_sequential_s": round(m_seq, 3),
        "start20_ratio_vs_docker_run": round(m_orch / m_par, 3),
        "start20_ratio_vs_docker_run_sequential": round(m_orch / m_seq, 3),
        "idle_containers": opts.idle_containers,
        "idle_cpu_pct": round(cpu, 2),
        "idle_rss_mb": round(rss, 1),
        "runs": opts.runs,
        "docker": version,
        "cpus": os.cpu_count(),
    }
    print(f"orch runtime benchmark: Docker {version}, {os.cpu_count()} CPUs, "
          f"median of {opts.runs} runs")
    print(f"{'measure':<46}{'value':>10}  {'target':<10}runs")
    print(f"{'start 20: orch (desired set -> all running)':<46}{m_orch:>9.2f}s  "
          f"{'':<10}{runs(orch)}")
    print(f"{'start 20: docker run -d, all at once':<46}{m_par:>9.2f}s  {'':<10}{runs(par)}")
    print(f"{'start 20: docker run -d, one after another':<46}{m_seq:>9.2f}s  {'':<10}{runs(seq)}")
    print(f"{'ratio orch / docker run (all at once)':<46}{m_orch / m_par:>9.2f}x  {'<= 1.3':<10}")
    print(f"{'ratio orch / docker run (one after another)':<46}{m_orch / m_seq:>9.2f}x")
    print(f"{f'idle agent, {opts.idle_containers} containers: CPU of one core':<46}"
          f"{cpu:>9.2f}%  {'< 2 %':<10}")
    print(f"{f'idle agent, {opts.idle_containers} containers: resident memory':<46}"
          f"{rss:>8.1f}MB  {'< 80 MB':<10}")
    if opts.json:
        print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
