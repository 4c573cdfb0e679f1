"""Scheduler benchmark: placements per second, memory of a big snapshot, packing quality.

    python -m bench.scheduler            # the full run (a few minutes), a table on stdout
    python -m bench.scheduler --quick    # a smoke run (seconds)
    python -m bench.scheduler --json     # ... and a last line with one JSON object

Synthetic clusters: nodes of four sizes (4 to 32 cores), three datacenters,
twenty racks, a few node classes and operating systems, and existing load
(background allocations using 0-60 % of each node). The workload is 10,000
allocations in jobs of one group each, groups of 10 to 1,000 replicas, with
varied sizes; a quarter of the groups ask for a dynamic port. Each job is one
``schedule()`` call; its plan is recorded in the snapshot before the next job,
as a commit would (``bench.scheduler_rounds``) (one more row splits the same 10,000 allocations into
1,000 jobs of 10, the worst case for per-call overhead). Times are the median
of several runs on one core
(the process is pinned to one CPU when the OS allows); ``placements/s``
counts the time spent in ``schedule()``; ``apply`` is the cost of recording the
plans in the snapshot, reported apart.

Packing: an empty cluster of identical nodes receives the same kind of
workload with bin-packing; nodes used are compared with the lower bound
``ceil(max(total CPU / node CPU, total memory / node memory))``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import platform
import random
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass

from bench.scheduler_rounds import apply_plan
from controller.scheduler import (
    AllocInfo,
    ClusterSnapshot,
    NodeInfo,
    SchedulerConfig,
    schedule,
)
from orch.jobspec.model import (
    Constraint,
    Group,
    Job,
    Network,
    Port,
    Resources,
    Spread,
    Task,
)

NODE_SIZES = ((4000, 8192), (8000, 16384), (16000, 32768), (32000, 65536))
NODE_SIZE_WEIGHTS = (2, 4, 3, 1)
ALLOC_SIZES = ((100, 128), (100, 256), (250, 256), (250, 512), (500, 512), (500, 1024),
               (1000, 1024), (1000, 2048))
GROUP_SIZES = (10, 20, 50, 100, 200, 500, 1000)
CLASSES = ("", "", "compute", "memory", "gpu")
DATACENTERS = ("dc1", "dc2", "dc3")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- synthetic clusters and workloads --------------------------------------------------------


def make_nodes(n: int, rng: random.Random, *, uniform: tuple[int, int] | None = None
               ) -> list[NodeInfo]:
    """``n`` nodes of varied capacity and attributes (or all of size ``uniform``)."""
    nodes = []
    for i in range(n):
        cpu, mem = uniform or rng.choices(NODE_SIZES, NODE_SIZE_WEIGHTS)[0]
        nodes.append(NodeInfo(
            id=f"node-{i:05d}", name=f"node-{i:05d}", datacenter=DATACENTERS[i % 3],
            node_class=rng.choice(CLASSES),
            attributes={"kernel.name": "linux" if rng.random() < 0.95 else "windows",
                        "cpu.arch": "amd64" if rng.random() < 0.8 else "arm64",
                        "os.version": rng.choice(("5.10", "5.15", "6.1"))},
            meta={"rack": f"r{rng.randrange(20):02d}",
                  "storage": "ssd" if rng.random() < 0.6 else "hdd"},
            cpu_millicores=cpu, memory_mb=mem, reserved_cpu_millicores=100,
            reserved_memory_mb=256))
    return nodes


def background_allocs(nodes: list[NodeInfo], rng: random.Random, *, per_node: int = 0
                      ) -> list[AllocInfo]:
    """Existing load: each node 0-60 % used (or exactly ``per_node`` small allocations)."""
    allocs: list[AllocInfo] = []
    for node in nodes:
        if per_node:
            shares = [(node.cpu_millicores // (per_node * 2), node.memory_mb // (per_node * 2))] \
                * per_node
        else:
            target = rng.uniform(0.0, 0.6)
            shares = []
            used = 0
            while used < target * node.cpu_millicores:
                cpu, mem = rng.choice(ALLOC_SIZES)
                if cpu > node.cpu_millicores * 0.6 - used:
                    break
                shares.append((cpu, mem))
                used += cpu
        for j, (cpu, mem) in enumerate(shares):
            allocs.append(AllocInfo(
                id=f"bg-{node.id}-{j}", job=f"background-{j % 50}", group="main",
                index=len(allocs), node_id=node.id, cpu_millicores=cpu, memory_mb=mem,
                client="running", healthy=True))
    return allocs


def make_jobs(total: int, rng: random.Random, *, constraints: bool, spread: bool,
              ports: bool = True, sizes: tuple[int, ...] = GROUP_SIZES) -> list[Job]:
    """Jobs of one group each whose counts (10 to 1,000) add up to ``total``."""
    jobs: list[Job] = []
    left = total
    while left > 0:
        count = min(left, rng.choice(sizes))
        left -= count
        cpu, mem = rng.choice(ALLOC_SIZES)
        cons: tuple[Constraint, ...] = ()
        if constraints:
            cons = (Constraint(attribute="${attr.kernel.name}", value="linux"),
                    Constraint(attribute="${node.class}", operator="!=", value="gpu"),
                    Constraint(attribute="${attr.os.version}", operator="version",
                               value=">= 5.10"))
        spreads: tuple[Spread, ...] = ()
        if spread:
            spreads = (Spread(attribute="${node.datacenter}", weight=70),
                       Spread(attribute="${meta.rack}", weight=30))
        net = Network()
        if ports and rng.random() < 0.25:
            net = Network(ports=(Port(label="http", to=8080),))
        group = Group(name="main", count=count, constraints=cons, spreads=spreads, network=net,
                      tasks=(Task(name="app", image="app:1", resources=Resources(
                          cpu_millicores=cpu, memory_mb=mem)),))
        jobs.append(Job(name=f"job-{len(jobs):04d}", groups=(group,), version=1))
    return jobs


# --- measurements ------------------------------------------------------------------------


@dataclass
class Result:
    scenario: str
    nodes: int
    allocs: int
    jobs: int
    placed: int
    seconds: float
    apply_seconds: float

    @property
    def per_second(self) -> float:
        return self.placed / self.seconds if self.seconds else 0.0


def pin_one_core() -> tuple[str, set[int] | None]:
    """Pin this process to one CPU; (what was done, the affinity to restore)."""
    try:
        before = os.sched_getaffinity(0)
        cpu = min(before)
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}", before
    except (AttributeError, OSError):
        return "not pinned", None


def run_workload(nodes: int, jobs: list[Job], seed: int, config: SchedulerConfig,
                 load: bool = True) -> tuple[int, float, float, ClusterSnapshot]:
    """Schedule ``jobs`` one after the other; (placed, seconds in schedule, seconds applying)."""
    rng = random.Random(seed)
    infos = make_nodes(nodes, rng)
    snap = ClusterSnapshot(infos, background_allocs(infos, rng) if load else ())
    placed = 0
    in_schedule = in_apply = 0.0
    gc.collect()
    gc.disable()
    try:
        for i, job in enumerate(jobs):
            t0 = time.perf_counter()
            plan = schedule(job, snap, now=1_000.0 + i, seed=seed + i, config=config)
            t1 = time.perf_counter()
            apply_plan(snap, plan, job, now=1_000.0 + i)
            t2 = time.perf_counter()
            in_schedule += t1 - t0
            in_apply += t2 - t1
            placed += len(plan.placements)
    finally:
        gc.enable()
    return placed, in_schedule, in_apply, snap


def median_of(runs: int, fn: Callable[[int], tuple[int, float, float]]
              ) -> tuple[int, float, float]:
    results = [fn(r) for r in range(runs)]
    results.sort(key=lambda r: r[1])
    return results[len(results) // 2]


def throughput(scenario: str, nodes: int, total: int, runs: int, *, constraints: bool,
               spread: bool, config: SchedulerConfig,
               sizes: tuple[int, ...] = GROUP_SIZES) -> Result:
    jobs = make_jobs(total, random.Random(7), constraints=constraints, spread=spread,
                     sizes=sizes)

    def one(r: int) -> tuple[int, float, float]:
        placed, secs, apply_secs, _ = run_workload(nodes, jobs, 11, config)
        log(f"  {scenario} on {nodes} nodes, run {r + 1}/{runs}: {placed} placed in "
            f"{secs:.3f} s ({placed / secs:,.0f}/s)")
        return placed, secs, apply_secs

    placed, secs, apply_secs = median_of(runs, one)
    return Result(scenario, nodes, total, len(jobs), placed, secs, apply_secs)


def one_big_job(nodes: int, count: int, runs: int, config: SchedulerConfig) -> Result:
    job = make_jobs(count, random.Random(3), constraints=False, spread=False, ports=False)[0]
    job = dataclasses.replace(job, groups=(dataclasses.replace(job.groups[0], count=count),))

    def one(r: int) -> tuple[int, float, float]:
        placed, secs, apply_secs, _ = run_workload(nodes, [job], 5, config)
        log(f"  one job of {count} on {nodes} nodes, run {r + 1}/{runs}: {secs:.3f} s")
        return placed, secs, apply_secs

    placed, secs, apply_secs = median_of(runs, one)
    return Result(f"one job of {count} allocations", nodes, count, 1, placed, secs, apply_secs)


def snapshot_memory(nodes: int, allocs: int) -> dict[str, float]:
    """Memory held by a snapshot of ``nodes`` nodes and ``allocs`` allocations (MiB)."""
    rng = random.Random(1)
    gc.collect()
    rss0 = _rss_mib()
    tracemalloc.start()
    infos = make_nodes(nodes, rng)
    bg = background_allocs(infos, rng, per_node=max(1, allocs // nodes))[:allocs]
    snap = ClusterSnapshot(infos, bg)
    del infos, bg
    gc.collect()
    traced, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = _rss_mib()
    result = {"nodes": len(snap), "allocs": len(snap.allocs), "traced_mib": traced / 2**20,
              "rss_growth_mib": rss1 - rss0}
    del snap
    return result


def _rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def packing(nodes: int, total: int, seed: int, config: SchedulerConfig) -> dict[str, float]:
    """Nodes used against the lower bound on an empty cluster of identical nodes."""
    size = (8000, 16384)
    jobs = make_jobs(total, random.Random(seed), constraints=False, spread=False, ports=False)
    snap = ClusterSnapshot(make_nodes(nodes, random.Random(seed), uniform=size))
    placed = 0
    for i, job in enumerate(jobs):
        plan = schedule(job, snap, now=float(i), seed=seed + i, config=config)
        apply_plan(snap, plan, job, now=float(i))
        placed += len(plan.placements)
    used = [n for n in snap.order if n.allocs]
    cpu = sum(n.cpu_used for n in snap.order)
    mem = sum(n.mem_used for n in snap.order)
    cap_cpu, cap_mem = used[0].cpu_total, used[0].mem_total
    lower = math.ceil(max(cpu / cap_cpu, mem / cap_mem))
    stranded_cpu = sum(n.cpu_total - n.cpu_used for n in used) / (len(used) * cap_cpu)
    stranded_mem = sum(n.mem_total - n.mem_used for n in used) / (len(used) * cap_mem)
    return {"nodes": nodes, "allocs": placed, "jobs": len(jobs), "nodes_used": len(used),
            "lower_bound": lower, "overhead_pct": 100.0 * (len(used) - lower) / lower,
            "stranded_cpu_pct": 100.0 * stranded_cpu, "stranded_mem_pct": 100.0 * stranded_mem}


# --- main --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scheduler", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small clusters, one run: a smoke test")
    ap.add_argument("--json", action="store_true", help="end with one line of JSON")
    ap.add_argument("--runs", type=int, default=0, help="runs per figure (default 5; quick 1)")
    opts = ap.parse_args(argv)
    runs = opts.runs or (1 if opts.quick else 5)
    pinned, before = pin_one_core()
    try:
        return _run(opts.quick, opts.json, runs, pinned)
    finally:
        if before is not None:
            os.sched_setaffinity(0, before)


def _run(quick: bool, as_json: bool, runs: int, pinned: str) -> int:
    sizes = (200, 500) if quick else (1000, 5000)
    total = 1000 if quick else 10_000
    big = 200 if quick else 1000
    config = SchedulerConfig()
    log(f"scheduler benchmark: {'quick' if quick else 'full'}, {runs} run(s) per figure, "
        f"{pinned}")

    results: list[Result] = []
    for constraints, spread, name in ((False, False, "plain"),
                                      (True, False, "constraints"),
                                      (False, True, "spread"),
                                      (True, True, "constraints + spread")):
        for n in sizes:
            results.append(throughput(name, n, total, runs, constraints=constraints,
                                      spread=spread, config=config))
    results.append(throughput("plain, every job 10 allocations", sizes[-1], total, runs,
                              constraints=False, spread=False, config=config, sizes=(10,)))
    results.append(one_big_job(sizes[-1], big, runs, config))
    log("  measuring the memory of a big snapshot")
    mem_nodes, mem_allocs = (sizes[-1], 10 * sizes[-1])
    memory = snapshot_memory(mem_nodes, mem_allocs)
    log("  measuring packing")
    pack = packing(200 if quick else 1000, total, 21, config)

    print(_table(results, memory, pack, runs, pinned))
    if as_json:
        plain_big = next(r for r in results if r.scenario == "plain" and r.nodes == sizes[-1])
        summary = {
            "quick": quick, "runs": runs, "python": platform.python_version(),
            f"placements_per_s_{sizes[-1]}": round(plain_big.per_second),
            "placements_per_s_5000": round(plain_big.per_second) if not quick else None,
            "scenarios": [{"scenario": r.scenario, "nodes": r.nodes, "allocs": r.allocs,
                           "jobs": r.jobs, "placed": r.placed, "seconds": round(r.seconds, 4),
                           "placements_per_s": round(r.per_second),
                           "apply_us_per_alloc": round(1e6 * r.apply_seconds / max(r.placed, 1),
                                                       1)}
                          for r in results],
            "snapshot_memory": {k: round(v, 1) for k, v in memory.items()},
            "packing": {k: round(v, 2) for k, v in pack.items()},
            "packing_overhead_pct": round(pack["overhead_pct"], 2),
        }
        print(json.dumps(summary, separators=(",", ":")))
    return 0


def _table(results: list[Result], memory: dict[str, float], pack: dict[str, float], runs: int,
           pinned: str) -> str:
    lines = [f"scheduler benchmark — Python {platform.python_version()}, one core ({pinned}), "
             f"median of {runs} run(s)", ""]
    head = (f"{'scenario':<32} {'nodes':>6} {'allocs':>7} {'jobs':>5} {'placed':>7} "
            f"{'time s':>8} {'placements/s':>13} {'apply µs/alloc':>15}")
    lines += [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r.scenario:<32} {r.nodes:>6} {r.allocs:>7} {r.jobs:>5} {r.placed:>7} "
                     f"{r.seconds:>8.3f} {r.per_second:>13,.0f} "
                     f"{1e6 * r.apply_seconds / max(r.placed, 1):>15.1f}")
    lines += ["",
              f"snapshot memory: {memory['nodes']:.0f} nodes + {memory['allocs']:.0f} allocations"
              f" = {memory['traced_mib']:.1f} MiB allocated (tracemalloc), resident set grew "
              f"{memory['rss_growth_mib']:.1f} MiB",
              f"packing: {pack['allocs']:.0f} allocations ({pack['jobs']:.0f} jobs) onto "
              f"{pack['nodes']:.0f} empty nodes of 8 cores / 16 GiB: {pack['nodes_used']:.0f} "
              f"nodes used, lower bound {pack['lower_bound']:.0f} "
              f"(+{pack['overhead_pct']:.1f} %); capacity stranded on used nodes: "
              f"CPU {pack['stranded_cpu_pct']:.1f} %, memory {pack['stranded_mem_pct']:.1f} %"]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
