"""Store benchmark: commits per second and commit latency of the SQLite store (FULL vs NORMAL)
and of the etcd store, in one run.

    python -m bench.store              # the full run (about a minute), a table on stdout
    python -m bench.store --quick      # a smoke run (a few seconds)
    python -m bench.store --json       # ... and a last line with one JSON object
    python -m bench.store --dir PATH   # where the database files go (default bench/results/)
    python -m bench.store --etcd-cluster   # also a local cluster of three etcd members
    python -m bench.store --no-etcd    # SQLite only

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

etcd rows run the same commits through ``EtcdStore`` against local etcd members
the benchmark starts (``etcd`` 3.4 with the store's required flags and default
raft timings, data in ``--dir``, one loopback address each on 127.0.78.x, all
stopped at the end): one member, and with ``--etcd-cluster`` three. etcd fsyncs
its write-ahead log at every commit, as FULL does; a client round trip (gRPC, on
loopback) comes on top, and with three members a round of raft replication.
Commits that wait together go in one etcd transaction (each keeps its index), so
the 8-task rows show what concurrent writers share. ``big`` is one registration of
a job with 1,000 allocations (one commit: the case that needs etcd's
``--max-txn-ops``): its size and its commit latency on SQLite FULL and on etcd
(median of 5).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import uvloop
from google.protobuf import duration_pb2

from bench.etcd_cluster import EtcdCluster
from controller.store import Changes, EtcdStore, SQLiteStore, Store
from controller.store.etcd import REQUIRED_FLAGS
from controller.store.sqlite import Synchronous
from orch.v1 import controller_pb2, job_pb2, node_pb2

JOBS = 200
ALLOCS_PER_COMMIT = 3
DEFAULT_DIR = Path(__file__).resolve().parent / "results"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- the workload ----------------------------------------------------------------------------


def registration(i: int, allocs_per_commit: int = ALLOCS_PER_COMMIT) -> Changes:
    """Commit ``i``: version ``i // JOBS + 1`` of job ``i % JOBS``, its allocations, an event."""
    name, version = f"job-{i % JOBS:03d}", i // JOBS + 1
    group = job_pb2.TaskGroup(
        name="web", count=allocs_per_commit,
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
        for k in range(allocs_per_commit)]
    event = controller_pb2.Event(time_ns=job.submit_time_ns, topic="job", type="JobRegistered",
                                 key=name, message=f"version {version}", job=job)
    return Changes(put_jobs=[job], put_allocs=allocs, events=[event])


def bytes_per_commit(c: Changes | None = None) -> int:
    c = c or registration(0)
    return sum(m.ByteSize() for m in (*c.put_jobs, *c.put_allocs, *c.events))


# --- measuring -------------------------------------------------------------------------------


@dataclass(slots=True)
class Row:
    synchronous: Synchronous
    tasks: int
    commits: int
    members: int = 0
    """etcd members (0: a SQLite row)."""
    rates: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    load_s: list[float] = field(default_factory=list)
    file_mib: float = 0.0

    @property
    def name(self) -> str:
        tasks = f"{self.tasks} task{'s' if self.tasks > 1 else ''}"
        if self.members:
            return f"etcd x{self.members}, {tasks}"
        return f"{self.synchronous.upper()}, {tasks}"

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return 1e3 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> dict[str, float | int | str]:
        first: dict[str, float | int | str] = (
            {"backend": "etcd", "members": self.members} if self.members
            else {"synchronous": self.synchronous})
        out = {**first, "tasks": self.tasks, "commits": self.commits,
               "commits_per_s": round(statistics.median(self.rates), 1),
               "p50_ms": round(self.percentile_ms(0.50), 3),
               "p99_ms": round(self.percentile_ms(0.99), 3),
               "max_ms": round(1e3 * max(self.latencies), 3),
               "load_ms": round(1e3 * statistics.median(self.load_s), 1)}
        if not self.members:
            out["file_mib"] = round(self.file_mib, 2)
        return out


def open_store(row: Row, where: Path, endpoints: list[str]) -> Store:
    if row.members:
        return EtcdStore(endpoints, prefix=f"/bench/{where.name}")
    return SQLiteStore(where / "state.db", synchronous=row.synchronous)


async def one_run(row: Row, where: Path, endpoints: list[str]) -> None:
    store = open_store(row, where, endpoints)
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
    if not row.members:
        row.file_mib = file_mib(where)
    store = open_store(row, where, endpoints)
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
    ap.add_argument("--etcd-cluster", action="store_true",
                    help="also measure a local cluster of three etcd members")
    ap.add_argument("--no-etcd", action="store_true", help="measure SQLite only")
    opts = ap.parse_args(argv)
    runs = opts.runs or (1 if opts.quick else 3)
    commits = opts.commits or (100 if opts.quick else 2000)
    members = [] if opts.no_etcd else [1, 3] if opts.etcd_cluster else [1]
    version = etcd_version() if members else ""
    if members and not version:
        log("etcd is not installed (apt-get install etcd-server): SQLite only")
        members = []
    opts.dir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="bench-store-", dir=opts.dir)).resolve()
    try:
        rows, big = uvloop.run(_measure(base, runs, commits, members, big_runs=1 if opts.quick else 5))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    fs = filesystem(base)
    print(_table(rows, big, runs, base.parent, fs, version))
    if opts.json:
        summary: dict[str, object] = {
            "quick": opts.quick, "runs": runs, "commits": commits, "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version, "filesystem": fs, "bytes_per_commit": bytes_per_commit(),
            "rows": [r.summary() for r in rows if not r.members],
            "etcd": version or None, "etcd_flags": list(REQUIRED_FLAGS) if version else None,
            "etcd_rows": [r.summary() for r in rows if r.members], "big": big.summary()}
        for r in rows:
            if r.tasks == 1 and not r.members:
                s = r.summary()
                for key in ("commits_per_s", "p50_ms", "p99_ms"):
                    summary[f"{key}_{r.synchronous}"] = s[key]
        for m, prefix in ((1, "etcd"), (3, "etcd3")):
            mine = {r.tasks: r.summary() for r in rows if r.members == m}
            for key in ("commits_per_s", "p50_ms", "p99_ms"):
                summary[f"{prefix}_{key}"] = mine[1][key] if mine else None
            summary[f"{prefix}_commits_per_s_8_tasks"] = mine[8]["commits_per_s"] if mine else None
        print(json.dumps(summary, separators=(",", ":")))
    return 0


def etcd_version() -> str:
    """The etcd server's version ("3.4.23"), or "" when there is no etcd binary."""
    if shutil.which("etcd") is None:
        return ""
    out = subprocess.run(["etcd", "--version"], capture_output=True, text=True, check=False,
                         timeout=10).stdout
    return out.split("\n", 1)[0].removeprefix("etcd Version:").strip()


@dataclass(slots=True)
class Big:
    """One registration of a job with ``allocs`` allocations: its size, and its commit latency."""

    allocs: int = 1000
    sqlite_s: list[float] = field(default_factory=list)
    etcd_s: list[float] = field(default_factory=list)

    @property
    def record_bytes(self) -> int:
        return bytes_per_commit(registration(0, self.allocs))

    @property
    def etcd_ops(self) -> int:
        """The puts in its etcd transaction: the job, the allocations, the event, the state."""
        return self.allocs + 3

    def summary(self) -> dict[str, object]:
        def ms(xs: list[float]) -> float | None:
            return round(1e3 * statistics.median(xs), 1) if xs else None
        return {"allocs": self.allocs, "record_bytes": self.record_bytes,
                "etcd_ops": self.etcd_ops, "sqlite_full_ms": ms(self.sqlite_s),
                "etcd_ms": ms(self.etcd_s)}


async def measure_big(big: Big, store: Store, into: list[float], runs: int) -> None:
    await store.open()
    try:
        for i in range(runs):
            c = registration(i * JOBS, big.allocs)  # successive versions of one job
            t0 = time.perf_counter()
            await store.commit(c)
            into.append(time.perf_counter() - t0)
    finally:
        await store.close()


async def _measure(base: Path, runs: int, commits: int, members: list[int], *,
                   big_runs: int) -> tuple[list[Row], Big]:
    rows = [Row(s, tasks, commits) for tasks in (1, 8) for s in ("full", "normal")]
    rows += [Row("full", tasks, commits, members=m) for m in members for tasks in (1, 8)]
    clusters: dict[int, EtcdCluster] = {}
    try:
        for i, m in enumerate(members):
            where = base / f"etcd-{m}"
            where.mkdir()
            clusters[m] = EtcdCluster(m, first_host=1 + 10 * i, net="127.0.78", extra_flags=(),
                                      dir=where)
            clusters[m].start()
        log(f"store benchmark: {runs} run(s) of {commits} commits per row, in {base}"
            + (f"; etcd members: {', '.join(map(str, members))}" if members else ""))
        for run in range(runs):
            for row in rows:  # interleaved, so that a slow moment of the disk hits every row
                where = base / f"{row.synchronous}-{row.tasks}-{row.members}-{run}"
                where.mkdir()
                endpoints = clusters[row.members].endpoints if row.members else []
                await one_run(row, where, endpoints)
                shutil.rmtree(where)
            log(f"  run {run + 1}/{runs} done")
        big = Big()
        where = base / "big"
        where.mkdir()
        await measure_big(big, SQLiteStore(where / "state.db"), big.sqlite_s, big_runs)
        if 1 in clusters:
            await measure_big(big, EtcdStore(clusters[1].endpoints,
                                             prefix=f"/bench/big-{uuid.uuid4().hex[:8]}"),
                              big.etcd_s, big_runs)
        return rows, big
    finally:
        for cluster in clusters.values():
            cluster.close()


def _table(rows: list[Row], big: Big, runs: int, where: Path, fs: str, etcd: str) -> str:
    lines = [f"store benchmark — SQLite {sqlite3.sqlite_version}"
             + (f", etcd {etcd} (local members, data on the same disk)" if etcd else "")
             + f", Python {platform.python_version()}, files in {where} ({fs}); "
             f"{rows[0].commits} job registrations of {bytes_per_commit():,} bytes (a job version, "
             f"{ALLOCS_PER_COMMIT} allocations, an event) per run, {runs} run(s)", ""]
    head = (f"{'store, writers':<22} {'commits/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'max ms':>8} {'load ms':>8} {'file MiB':>9}")
    lines += [head, "-" * len(head)]
    for r in rows:
        s = r.summary()
        size = f"{s['file_mib']:>9.2f}" if "file_mib" in s else f"{'-':>9}"
        lines.append(f"{r.name:<22} {s['commits_per_s']:>10,.0f} {s['p50_ms']:>8.2f} "
                     f"{s['p99_ms']:>8.2f} {s['max_ms']:>8.2f} {s['load_ms']:>8.1f} {size}")
    full = {r.tasks: statistics.median(r.rates) for r in rows
            if r.synchronous == "full" and not r.members}
    ratios = [f"etcd x{r.members} / SQLite FULL, {r.tasks} task{'s' if r.tasks > 1 else ''} each: "
              f"{statistics.median(r.rates) / full[r.tasks]:.2f}x the commits/s"
              for r in rows if r.members]
    if ratios:
        lines += ["", *ratios]
    b = big.summary()
    lines.append(f"\nbig: one registration of {big.allocs:,} allocations = {b['record_bytes']:,} "
                 f"bytes of records, {b['etcd_ops']:,} etcd operations; commit p50: SQLite FULL "
                 f"{b['sqlite_full_ms']} ms" + (f", etcd x1 {b['etcd_ms']} ms" if big.etcd_s else ""))
    if fs in ("tmpfs", "ramfs"):
        lines.append(f"\nnote: {where} is on {fs}: fsync costs nothing there, so FULL looks like "
                     "NORMAL; use --dir on a real disk")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
