"""Store benchmark: commits per second and commit latency of the SQLite store, FULL vs NORMAL.

    python -m bench.store              # the full run (about half a minute), a table on stdout
    python -m bench.store --quick      # a smoke run (a second or two)
    python -m bench.store --json       # ... and a last line with one JSON object
    python -m bench.store --dir PATH   # where the database files go (default bench/results/)

Each commit is a job registration as the controller writes it: a new version of
a job (one group, one docker task with a port, a service and an HTTP check),
three allocations carrying the group, and a JobRegistered event carrying the
job. Two hundred jobs get new versions in turn, so the file grows as a
controller's does. Latency is the time ``await store.commit(...)`` takes, as
the controller sees it; p50 and p99 are over every commit of every run;
commits/s is the median over the runs. Rows with several tasks commit
concurrently (the store serialises them on its one worker thread, so they show
queueing, not more throughput). ``load`` is the time to read the whole file back,
which is what a restart costs.

``synchronous = FULL`` (the default) fsyncs the write-ahead log at every commit:
durable across power loss. ``NORMAL`` fsyncs only at checkpoints: durable across
a crash of the process, not of the machine. Put ``--dir`` on the disk a
controller would use: on tmpfs fsync costs nothing and the two look alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import uvloop
from google.protobuf import duration_pb2

from controller.store import Changes, SQLiteStore
from controller.store.sqlite import Synchronous
from orch.v1 import controller_pb2, job_pb2, node_pb2

JOBS = 200
ALLOCS_PER_COMMIT = 3
DEFAULT_DIR = Path(__file__).resolve().parent / "results"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- the workload ----------------------------------------------------------------------------


def registration(i: int) -> Changes:
    """Commit ``i``: version ``i // JOBS + 1`` of job ``i % JOBS``, its allocations, an event."""
    name, version = f"job-{i % JOBS:03d}", i // JOBS + 1
    group = job_pb2.TaskGroup(
        name="web", count=ALLOCS_PER_COMMIT,
        tasks=[job_pb2.Task(
            name="app", driver="docker", image=f"registry.local/web:{version}",
            args=["--port", "${NOMAD_PORT_http}", "--log-format", "json"],
            env={"MODE": "production", "LOG_LEVEL": "info", "REGION": "eu-west"},
            resources=job_pb2.Resources(cpu_millicores=250, memory_mb=256),
            kill_timeout=duration_pb2.Duration(seconds=10))],
        network=job_pb2.Network(ports=[job_pb2.Port(label="http", to=8080)]),
        services=[job_pb2.Service(
            name=name, port="http", published_port=8000 + i % JOBS, tags=["web", "v1"],
            check=job_pb2.Check(type="http", port="http", path="/health",
                                interval=duration_pb2.Duration(seconds=10),
                                timeout=duration_pb2.Duration(seconds=2)))])
    job = job_pb2.Job(name=name, namespace="default", version=version,
                      type=job_pb2.JOB_TYPE_SERVICE, priority=50, datacenters=["dc1"],
                      meta={"team": "web", "owner": "platform"}, groups=[group],
                      submit_time_ns=time.time_ns())
    allocs = [node_pb2.Allocation(
        id=f"{i:08x}-{k:04x}-4000-8000-{i * 7 + k:012x}", name=f"{name}.web[{k}]",
        namespace="default", job=name, job_version=version, group="web", index=k,
        node_id=f"node-{(i + k) % 50:02d}", desired_status=node_pb2.DESIRED_STATUS_RUN,
        client_status=node_pb2.CLIENT_STATUS_PENDING, spec=group, ports={"http": 20000 + k},
        resources=job_pb2.Resources(cpu_millicores=250, memory_mb=256),
        create_time_ns=job.submit_time_ns, modify_time_ns=job.submit_time_ns)
        for k in range(ALLOCS_PER_COMMIT)]
    event = controller_pb2.Event(time_ns=job.submit_time_ns, topic="job", type="JobRegistered",
                                 key=name, message=f"version {version}", job=job)
    return Changes(put_jobs=[job], put_allocs=allocs, events=[event])


def bytes_per_commit() -> int:
    c = registration(0)
    return sum(m.ByteSize() for m in (*c.put_jobs, *c.put_allocs, *c.events))


# --- measuring -------------------------------------------------------------------------------


@dataclass(slots=True)
class Row:
    synchronous: Synchronous
    tasks: int
    commits: int
    rates: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    load_s: list[float] = field(default_factory=list)
    file_mib: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.synchronous.upper()}, {self.tasks} task{'s' if self.tasks > 1 else ''}"

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return 1e3 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> dict[str, float | int | str]:
        return {"synchronous": self.synchronous, "tasks": self.tasks, "commits": self.commits,
                "commits_per_s": round(statistics.median(self.rates), 1),
                "p50_ms": round(self.percentile_ms(0.50), 3),
                "p99_ms": round(self.percentile_ms(0.99), 3),
                "max_ms": round(1e3 * max(self.latencies), 3),
                "load_ms": round(1e3 * statistics.median(self.load_s), 1),
                "file_mib": round(self.file_mib, 2)}


async def one_run(row: Row, where: Path) -> None:
    path = where / "state.db"
    store = SQLiteStore(path, synchronous=row.synchronous)
    await store.open()
    work = [registration(i) for i in range(row.commits)]
    latencies: list[float] = []

    async def worker(mine: list[Changes]) -> None:
        for c in mine:
            t0 = time.perf_counter()
            await store.commit(c)
            latencies.append(time.perf_counter() - t0)

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(work[k::row.tasks]) for k in range(row.tasks)))
        elapsed = time.perf_counter() - t0
    finally:
        await store.close()
    row.rates.append(row.commits / elapsed)
    row.latencies += latencies
    row.file_mib = file_mib(where)
    store = SQLiteStore(path, synchronous=row.synchronous)
    await store.open()
    try:
        t0 = time.perf_counter()
        snap = await store.load()
        row.load_s.append(time.perf_counter() - t0)
    finally:
        await store.close()
    assert snap.index == row.commits
    assert len(snap.allocs) == row.commits * ALLOCS_PER_COMMIT


def file_mib(where: Path) -> float:
    """The size of the database and its write-ahead log."""
    return sum(p.stat().st_size for p in where.iterdir() if p.name.startswith("state.db")) / 2**20


def filesystem(path: Path) -> str:
    """The type of the file system holding ``path`` (from /proc/mounts; "?" elsewhere)."""
    best, kind = "", "?"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mount = parts[1]
                if str(path).startswith(mount) and len(mount) > len(best):
                    best, kind = mount, parts[2]
    except OSError:
        pass
    return kind


# --- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.store", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few commits, one run: a smoke test")
    ap.add_argument("--json", action="store_true", help="end with one line of JSON")
    ap.add_argument("--runs", type=int, default=0, help="runs per row (default 3; quick 1)")
    ap.add_argument("--commits", type=int, default=0,
                    help="commits per run (default 2000; quick 100)")
    ap.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                    help="where the database files go (default %(default)s)")
    opts = ap.parse_args(argv)
    runs = opts.runs or (1 if opts.quick else 3)
    commits = opts.commits or (100 if opts.quick else 2000)
    opts.dir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="bench-store-", dir=opts.dir)).resolve()
    try:
        rows = uvloop.run(_measure(base, runs, commits))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    fs = filesystem(base)
    print(_table(rows, runs, base.parent, fs))
    if opts.json:
        summary: dict[str, object] = {
            "quick": opts.quick, "runs": runs, "commits": commits, "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version, "filesystem": fs, "bytes_per_commit": bytes_per_commit(),
            "rows": [r.summary() for r in rows]}
        for r in rows:
            if r.tasks == 1:
                s = r.summary()
                for key in ("commits_per_s", "p50_ms", "p99_ms"):
                    summary[f"{key}_{r.synchronous}"] = s[key]
        print(json.dumps(summary, separators=(",", ":")))
    return 0


async def _measure(base: Path, runs: int, commits: int) -> list[Row]:
    rows = [Row(s, tasks, commits) for tasks in (1, 8) for s in ("full", "normal")]
    log(f"store benchmark: {runs} run(s) of {commits} commits per row, in {base}")
    for run in range(runs):
        for row in rows:  # interleaved, so that a slow moment of the disk hits every row
            where = base / f"{row.synchronous}-{row.tasks}-{run}"
            where.mkdir()
            await one_run(row, where)
            shutil.rmtree(where)
        log(f"  run {run + 1}/{runs} done")
    return rows


def _table(rows: list[Row], runs: int, where: Path, fs: str) -> str:
    lines = [f"store benchmark — SQLite {sqlite3.sqlite_version}, Python "
             f"{platform.python_version()}, files in {where} ({fs}); {rows[0].commits} job "
             f"registrations of {bytes_per_commit():,} bytes (a job version, {ALLOCS_PER_COMMIT} "
             f"allocations, an event) per run, {runs} run(s)", ""]
    head = (f"{'synchronous, writers':<22} {'commits/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'max ms':>8} {'load ms':>8} {'file MiB':>9}")
    lines += [head, "-" * len(head)]
    for r in rows:
        s = r.summary()
        lines.append(f"{r.name:<22} {s['commits_per_s']:>10,.0f} {s['p50_ms']:>8.2f} "
                     f"{s['p99_ms']:>8.2f} {s['max_ms']:>8.2f} {s['load_ms']:>8.1f} "
                     f"{s['file_mib']:>9.2f}")
    if fs in ("tmpfs", "ramfs"):
        lines.append(f"\nnote: {where} is on {fs}: fsync costs nothing there, so FULL looks like "
                     "NORMAL; use --dir on a real disk")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
