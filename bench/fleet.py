"""A fleet on one controller: thousands of simulated nodes and a million allocations.

    python -m bench.fleet --json                       # the full run: 5,000 nodes, 1,000 jobs
                                                       # of 1,000 allocations (about an hour)
    python -m bench.fleet --nodes 500 --jobs 100 --allocs-per-job 100    # scaled down
    python -m bench.fleet --quick                      # a smoke run (seconds; no etcd part)

Nomad's C1M placed 1,000,000 containers on 5,000 hosts in under 5 minutes with 5
servers (about 3,750 placements per second end to end). This benchmark runs the
same shape against one ``orch-controller`` process on SQLite (bootstrapped: mTLS
everywhere, tokens on the API, synchronous=full) on this machine, with the nodes
simulated by ``bench.nodesim`` (real joins, real ``NodeService`` streams through
the agent's ``ControllerLink``, a driver that reports every allocation pending at
once and running ``--run-delay`` seconds later, usage reports every 10 s). The
controller, the simulator's processes and the clients share the machine's cores.

place      ``--jobs`` service jobs of ``--allocs-per-job`` allocations (one group,
           one process task, 10 millicores and 8 MB each) registered through the
           gRPC API by ``--clients`` concurrent clients (``RegisterJob`` answers once
           the job's first evaluation committed its plan), until the controller has
           heard that every allocation runs (its metrics, polled every second):
           ``alloc_running_s`` and ``placements_per_s_e2e``; the controller's CPU per
           allocation (``controller_cpu_us_per_alloc``) and the allocation records and
           commits the store took per allocation (``alloc_writes_per_alloc_placed``,
           ``store_commits_per_alloc_placed``), and the same once ``--settle`` seconds
           more let the health reports in (``..._settled``).
idle       every node streaming, nothing changing, for ``--idle-seconds``: the
           controller's CPU (``idle_cpu_pct``, % of one core) and memory
           (``controller_rss_mb_per_100k_allocs``: resident set with the allocations
           placed minus before, per 100,000).
reschedule one node in 50 loses its stream at once (its agent "dies"); time until
           every allocation desired to run runs again (``reschedule_nodes_s``;
           the goal is the node grace + 5 s).
rolling    a new version of ``--rolling-jobs`` jobs (a destructive change: the task's
           arguments), max_parallel a fifth of the count, until every deployment is
           successful and every allocation runs the new version.
commits    the controller's commit latency (store, memory, events, agents' queues:
           ``orch_controller_commit_seconds``) over the idle, reschedule and rolling
           phases, with the whole state in memory: ``commit_p99_ms``.
restart    the controller stopped (SIGTERM) and started again on the same data:
           time from the new process to its first acknowledged write
           (``restart_load_s``), the nodes reconnecting meanwhile.
etcd       (``--etcd-allocs``, 0 to skip) three controllers on a one-member etcd
           (``bench.ha_cluster``, plain text on loopback) with that many allocations
           on ``--etcd-nodes`` simulated nodes; the leader gets SIGKILL: time until
           another controller accepts a write with the whole state loaded
           (``etcd_failover_s``; the goal is the lease TTL + 3 s).
spread     the pure scheduler (one core, no I/O): a job of 1,000 allocations with a
           spread block over 5,000 nodes, placed into a snapshot that already holds
           ``--spread-background`` allocations, and with the spread over a value every
           node has its own of (``${node.unique.id}``): ``spread_placements_per_s``.

Keys are named for the full size (``alloc_running_1m_s``, ...) only when the run has
that size; a scaled-down run prints the same keys with its own size in them. Figures,
never a verdict: a loaded machine shows up in them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from prometheus_client.parser import text_string_to_metric_families

from bench.ha_cluster import free_port, wait
from bench.nodesim import Fleet, SimConfig, cpu_seconds, node_id, rss_mb
from bench.report import pct, progress, table
from orch.v1 import controller_pb2, controller_pb2_grpc, job_pb2
from orchctl.client import blocking_channel, settings

ROOT = Path(__file__).resolve().parent.parent
NET = "127.0.78"
"""The benchmark's own loopback block: the controller on .1, nothing else listens there."""
ETCD_NET = "127.0.79"
"""The etcd part's block (controllers on .1-.3, etcd on .21)."""


def sleep_job(name: str, count: int, *, args: tuple[str, ...] = ("3600",)) -> job_pb2.Job:
    """A service job of ``count`` allocations that sleep; rolling updates go max_parallel a
    fifth of the count at a time, each allocation healthy once it has run for a second."""
    update = job_pb2.UpdateStrategy(max_parallel=max(1, count // 5))
    update.min_healthy_time.FromSeconds(1)
    update.healthy_deadline.FromSeconds(120)
    update.progress_deadline.FromSeconds(300)
    return job_pb2.Job(
        name=name, type=job_pb2.JOB_TYPE_SERVICE,
        groups=[job_pb2.TaskGroup(name="sleep", count=count, update=update, tasks=[job_pb2.Task(
            name="sleep", driver="process", command="/bin/sleep", args=list(args),
            resources=job_pb2.Resources(cpu_millicores=10, memory_mb=8))])])


# --- metrics ----------------------------------------------------------------------------------


@dataclass
class Scrape:
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)

    def get(self, name: str, **labels: str) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def total(self, name: str, **labels: str) -> float:
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= set(ls))

    def buckets(self, name: str) -> list[tuple[float, float]]:
        """(upper bound, cumulative count) of a histogram, in order."""
        out = [(float(dict(ls)["le"]), v) for (n, ls), v in self.samples.items()
               if n == f"{name}_bucket"]
        return sorted(out)


def scrape(url: str) -> Scrape:
    with urllib.request.urlopen(url, timeout=30) as r:
        text = r.read().decode()
    s = Scrape()
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            s.samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return s


def hist_quantile(before: list[tuple[float, float]], after: list[tuple[float, float]],
                  q: float) -> tuple[float, int]:
    """The q-quantile (0..1) of what a histogram observed between two scrapes, interpolated
    within its bucket (as Prometheus' histogram_quantile); and how many were observed."""
    b = dict(before)
    counts = [(le, c - b.get(le, 0.0)) for le, c in after]
    if not counts or counts[-1][1] <= 0:
        return float("nan"), 0
    total = counts[-1][1]
    rank = q * total
    lo_le, lo_c = 0.0, 0.0
    for le, c in counts:
        if c >= rank:
            if le == float("inf"):
                return lo_le, int(total)
            width = c - lo_c
            return lo_le + (le - lo_le) * ((rank - lo_c) / width if width else 1.0), int(total)
        lo_le, lo_c = le, c
    return lo_le, int(total)


# --- the controller ---------------------------------------------------------------------------


class ControllerProc:
    """One ``orch-controller`` process on SQLite, bootstrapped, on ``NET``.1."""

    def __init__(self, workdir: Path, node_grace: float, extra: tuple[str, ...] = ()) -> None:
        self.dir = workdir
        self.host = f"{NET}.1"
        self.rpc = f"{self.host}:{free_port(self.host)}"
        self.gossip = f"{self.host}:{free_port(self.host)}"
        self.metrics_port = free_port(self.host)
        self.node_grace = node_grace
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "controller.log"
        self.started_at = 0.0

    @property
    def operator(self) -> Path:
        return self.dir / "controller" / "pki" / "operator"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def start(self) -> None:
        argv = [sys.executable, "-m", "controller.main", "--name", "controller", "--bootstrap",
                "--bind", self.gossip, "--rpc-addr", self.rpc, "--data-dir",
                str(self.dir / "controller"), "--log-format", "json", "--log-level", "warning",
                "--metrics-addr", f"{self.host}:{self.metrics_port}",
                "--node-grace", f"{self.node_grace:g}", *self.extra]
        setpriv = shutil.which("setpriv")
        if setpriv:
            argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                             if p)}
        self.started_at = time.monotonic()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         env=env, cwd=ROOT, start_new_session=True)

    def wait_trust(self, within: float = 60.0) -> None:
        wait("the controller's trust", lambda: (self.operator / "join-agent.token").exists()
             and (self.operator / "management.token").exists(), within, every=0.2)

    def channel(self) -> grpc.Channel:
        return blocking_channel(self.rpc, settings({"ORCH_CONFIG": str(self.operator /
                                                                       "orchctl.toml")}))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> float:
        return rss_mb(self.pid)

    def scrape(self) -> Scrape:
        return scrape(self.metrics_url)

    def stop(self, grace: float = 60.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


class Sampler:
    """The controller's CPU and resident set, sampled every second in a thread."""

    def __init__(self, ctl: ControllerProc) -> None:
        self.ctl = ctl
        self.samples: list[tuple[float, float, float]] = []
        """(monotonic time, CPU seconds, RSS MiB)"""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            with contextlib.suppress(Exception):
                self.samples.append((time.monotonic(), self.ctl.cpu(), self.ctl.rss()))

    def peak_rss(self) -> float:
        return max((s[2] for s in self.samples), default=0.0)

    def busy(self) -> float:
        """The share of wall time the controller was on a CPU (1.0: one core)."""
        if len(self.samples) < 2:
            return float("nan")
        (t0, c0, _), (t1, c1, _) = self.samples[0], self.samples[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else float("nan")


# --- the run ----------------------------------------------------------------------------------


@dataclass
class Run:
    args: argparse.Namespace
    workdir: Path
    result: dict[str, Any] = field(default_factory=dict)
    rows: list[tuple[str, Any, str]] = field(default_factory=list)
    place_base: Scrape | None = None
    """The controller's metrics as the jobs were about to be registered."""
    place_cpu0 = 0.0
    """Its CPU seconds then."""

    def key(self, name: str, value: Any, goal: str = "") -> None:
        self.result[name] = value
        self.rows.append((name, value, goal))

    @property
    def total(self) -> int:
        return int(self.args.jobs * self.args.allocs_per_job)

    def size_tag(self) -> str:
        """"1m" for a million allocations, else the count (100k, 2k...)."""
        n = self.total
        if n >= 1_000_000 and n % 1_000_000 == 0:
            return f"{n // 1_000_000}m"
        if n >= 1000 and n % 1000 == 0:
            return f"{n // 1000}k"
        return str(n)


def running_count(s: Scrape) -> int:
    return int(s.get("orch_controller_allocations", desired="run", client="running"))


def pending_count(s: Scrape) -> int:
    return int(s.get("orch_controller_allocations", desired="run", client="pending"))


def place(run: Run, ctl: ControllerProc) -> None:
    """Register every job with ``clients`` concurrent clients; until every allocation runs."""
    a = run.args
    names = [f"job-{j:04d}" for j in range(a.jobs)]
    todo = iter(names)
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    submitted_at: list[float] = []
    stop = threading.Event()
    """Set when the run ends early (an error, SIGTERM): the clients register nothing more."""

    def client() -> None:
        ch = ctl.channel()
        stub = controller_pb2_grpc.ControllerServiceStub(ch)
        try:
            while True:
                with lock:
                    name = next(todo, None)
                if name is None or stop.is_set():
                    return
                req = controller_pb2.RegisterJobRequest(job=sleep_job(name, a.allocs_per_job))
                for attempt in range(20):
                    t0 = time.monotonic()
                    try:
                        stub.RegisterJob(req, timeout=300)
                        break
                    except grpc.RpcError as e:
                        if attempt == 19 or stop.is_set() or e.code() not in (
                                grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
                            with lock:
                                errors.append(f"{name}: {e}")
                            break
                        time.sleep(0.2)
                with lock:
                    latencies.append(time.monotonic() - t0)
        finally:
            ch.close()

    base = ctl.scrape()
    run.place_base, run.place_cpu0 = base, ctl.cpu()
    rss0 = ctl.rss()
    run.result["controller_rss_mb_before"] = round(rss0, 1)
    progress(f"placing {run.total:,} allocations: {a.jobs} jobs of {a.allocs_per_job} from "
             f"{a.clients} clients")
    with Sampler(ctl) as sampler:
        t0 = time.monotonic()
        threads = [threading.Thread(target=client, daemon=True) for _ in range(a.clients)]
        for t in threads:
            t.start()
        marks: dict[int, float] = {}
        last_report = t0
        timeline = (run.workdir / "timeline.jsonl").open("a")
        try:
            while True:
                time.sleep(1.0)
                s = ctl.scrape()
                running = running_count(s) - running_count(base)
                now = time.monotonic()
                timeline.write(json.dumps({"t": round(now - t0, 1), "running": running,
                                           "pending": pending_count(s), "cpu_s": ctl.cpu(),
                                           "rss_mb": ctl.rss()}) + "\n")
                timeline.flush()
                for q in (25, 50, 75, 100):
                    if q not in marks and running >= run.total * q / 100:
                        marks[q] = now - t0
                if not any(t.is_alive() for t in threads) and not submitted_at:
                    submitted_at.append(now - t0)
                if now - last_report >= 15:
                    last_report = now
                    progress(f"{now - t0:6.0f} s: {running:,} running, "
                             f"{pending_count(s):,} pending, controller "
                             f"{sampler.busy() * 100:.0f} % CPU, {ctl.rss():,.0f} MiB")
                if running >= run.total:
                    break
                if errors:
                    raise RuntimeError(f"registrations failed: {errors[:3]}")
                if now - t0 > a.place_timeout:
                    raise RuntimeError(f"only {running:,} of {run.total:,} running after "
                                       f"{a.place_timeout:g} s")
            took = time.monotonic() - t0
        finally:
            stop.set()
            timeline.close()
        for t in threads:
            t.join()
    tag = run.size_tag()
    run.key(f"alloc_running_{tag}_s", round(took, 1), "<= 300 (1m)")
    run.key("placements_per_s_e2e", round(run.total / took, 1), ">= 3,750")
    run.result["submitted_s"] = round(submitted_at[0] if submitted_at else took, 1)
    run.result["register_p50_s"] = round(pct(latencies, 50), 3)
    run.result["register_p99_s"] = round(pct(latencies, 99), 3)
    run.result["running_25_50_75_pct_s"] = [round(marks.get(q, took), 1) for q in (25, 50, 75)]
    run.result["controller_cpu_during_place_pct"] = round(sampler.busy() * 100, 1)
    cpu = sampler.samples[-1][1] - sampler.samples[0][1] if len(sampler.samples) > 1 else 0.0
    run.result["controller_cpu_us_per_alloc"] = round(cpu / run.total * 1e6, 1)
    run.result["controller_peak_rss_mb"] = round(sampler.peak_rss(), 1)
    writes(run, "placed", ctl.scrape())


def writes(run: Run, when: str, s: Scrape) -> None:
    """The store's work per allocation since the jobs were registered: allocation records
    written and commits (``when``: placed, when every allocation runs; settled, once the
    health reports that follow have been written too)."""
    base = run.place_base
    if base is None:
        return
    for metric, key in (("orch_controller_allocation_writes_total", "alloc_writes"),
                        ("orch_controller_store_commit_seconds_count", "store_commits")):
        run.result[f"{key}_per_alloc_{when}"] = round(
            (s.get(metric) - base.get(metric)) / run.total, 3)


def idle(run: Run, ctl: ControllerProc, fleet: Fleet) -> None:
    a = run.args
    time.sleep(a.settle)
    s = ctl.scrape()
    writes(run, "settled", s)
    run.result["controller_cpu_us_per_alloc_settled"] = round(
        (ctl.cpu() - run.place_cpu0) / run.total * 1e6, 1)
    streaming = int(s.get("orch_controller_connected_agents"))
    c0, t0 = ctl.cpu(), time.monotonic()
    time.sleep(a.idle_seconds)
    busy = (ctl.cpu() - c0) / (time.monotonic() - t0)
    rss = ctl.rss()
    run.key("nodes_streaming", streaming, f"{a.nodes:,}")
    run.key("idle_cpu_pct", round(busy * 100, 1), "<= 10")
    per = (rss - run.result["controller_rss_mb_before"]) / (run.total / 100_000)
    run.result["controller_rss_mb"] = round(rss, 1)
    run.key("controller_rss_mb_per_100k_allocs", round(per, 1), "<= 300")
    st = fleet.stats()
    run.result["nodesim"] = {k: st.get(k) for k in ("nodes", "connected", "running", "messages",
                                                     "full_sets", "rss_mb", "cpu_s")}


def reschedule(run: Run, ctl: ControllerProc, fleet: Fleet) -> None:
    a = run.args
    victims = [node_id("sim", i) for i in range(0, a.nodes, a.kill_one_in)]
    base = running_count(ctl.scrape())
    ch = ctl.channel()
    stub = controller_pb2_grpc.ControllerServiceStub(ch)
    last = list(stub.Watch(controller_pb2.WatchRequest(tail=1), timeout=30))
    progress(f"killing {len(victims)} nodes (one in {a.kill_one_in})")
    t0, t0_ns = time.monotonic(), time.time_ns()
    killed = fleet.kill(victims)
    dipped = False

    def back() -> bool:
        nonlocal dipped
        s = ctl.scrape()
        r = running_count(s)
        dipped = dipped or r < base
        return dipped and r >= base and pending_count(s) == 0
    wait("the killed nodes' allocations to run elsewhere", back, a.node_grace + 300, every=0.25)
    took = time.monotonic() - t0
    run.result["nodes_killed"] = killed
    run.key(f"reschedule_{killed}_nodes_s", round(took, 2), f"<= {a.node_grace + 5:g}")
    events: list[controller_pb2.Event] = []
    index = last[-1].index if last else 0
    while page := list(stub.Watch(controller_pb2.WatchRequest(since_index=index), timeout=120)):
        events += page  # a replay is capped: page on from the last one taken
        index = page[-1].index
    run.result["reschedule_timeline_s"] = reschedule_timeline(events, t0_ns)
    ch.close()


def reschedule_timeline(events: Iterable[controller_pb2.Event], t0_ns: int) -> dict[str, float]:
    """Seconds from the kill until the nodes were marked down, the replacements placed
    (first and last) and running (the last)."""
    down, placed, running = [], [], []
    new: set[str] = set()
    for e in events:
        if e.type == "NodeDown":
            down.append(e.time_ns)
        elif e.type == "AllocationRescheduled":
            placed.append(e.time_ns)
            new.add(e.key)
        elif e.type == "AllocationRunning" and e.key in new:
            running.append(e.time_ns)

    def since(ns: list[int], first: bool = False) -> float:
        return round(((min(ns) if first else max(ns)) - t0_ns) / 1e9, 2) if ns else math.nan
    return {"marked_down": since(down), "first_placed": since(placed, first=True),
            "last_placed": since(placed), "last_running": since(running),
            "replacements": len(new)}


def rolling(run: Run, ctl: ControllerProc) -> None:
    a = run.args
    n = min(a.rolling_jobs, a.jobs)
    names = [f"job-{j:04d}" for j in range(n)]
    ch = ctl.channel()
    stub = controller_pb2_grpc.ControllerServiceStub(ch)
    progress(f"rolling update of {n} jobs")
    t0 = time.monotonic()
    versions = {}
    for name in names:
        r = stub.RegisterJob(controller_pb2.RegisterJobRequest(
            job=sleep_job(name, a.allocs_per_job, args=("3601",))), timeout=300)
        versions[name] = r.version

    def done() -> bool:
        for name in names:
            st = stub.GetJob(controller_pb2.GetJobRequest(name=name), timeout=60)
            if st.latest_deployment.job_version != versions[name] or \
                    st.latest_deployment.status != "successful":
                return False
        return True
    wait("the rolling updates", done, 1800, every=1.0)
    ch.close()
    run.key(f"rolling_update_{n}_jobs_s", round(time.monotonic() - t0, 1))


def commits(run: Run, before: Scrape, after: Scrape) -> None:
    for metric, key in (("orch_controller_commit_seconds", "commit"),
                        ("orch_controller_store_commit_seconds", "store_commit")):
        p50, n = hist_quantile(before.buckets(metric), after.buckets(metric), 0.5)
        p99, _ = hist_quantile(before.buckets(metric), after.buckets(metric), 0.99)
        if key == "commit":
            run.key(f"commit_p99_ms_at_{run.size_tag()}", round(p99 * 1000, 1), "<= 50")
            run.result["commit_p50_ms"] = round(p50 * 1000, 2)
            run.result["commits_measured"] = n
        else:
            run.result["store_commit_p50_ms"] = round(p50 * 1000, 2)
            run.result["store_commit_p99_ms"] = round(p99 * 1000, 1)


def restart(run: Run, ctl: ControllerProc) -> None:
    """Stop the controller, start it again: until it acknowledges a write (a namespace
    applied), then until every job was evaluated again and every node is back."""
    a = run.args
    progress("restarting the controller")
    ctl.stop()
    t0 = time.monotonic()
    ctl.start()
    n = 0

    def writes() -> bool:
        nonlocal n
        n += 1
        try:
            with contextlib.closing(ctl.channel()) as ch:
                controller_pb2_grpc.ControllerServiceStub(ch).ApplyNamespace(
                    controller_pb2.ApplyNamespaceRequest(name="restart-probe",
                                                         description=f"probe {n}"), timeout=5)
            return True
        except grpc.RpcError:
            return False
    wait("the restarted controller's first write", writes, 600, every=0.1)
    took = time.monotonic() - t0
    s = ctl.scrape()
    run.key(f"restart_load_{run.size_tag()}_s", round(took, 1), "<= 30")
    run.result["restart_allocations_loaded"] = int(s.total("orch_controller_allocations"))
    run.result["restart_rss_mb"] = round(ctl.rss(), 1)
    wait("every node back", lambda: int(ctl.scrape().get("orch_controller_connected_agents"))
         >= a.nodes - run.result.get("nodes_killed", 0), 600, every=1.0)
    run.result["restart_nodes_back_s"] = round(time.monotonic() - t0, 1)


# --- etcd -------------------------------------------------------------------------------------


def etcd_failover(run: Run) -> None:
    from bench.etcd_cluster import binary
    from bench.ha_cluster import HaCluster

    a = run.args
    try:
        binary()
    except RuntimeError as e:
        run.result["etcd_failover_s"] = None
        run.result["etcd_skipped"] = str(e)
        progress(f"etcd part skipped: {e}")
        return
    jobs = max(1, a.etcd_allocs // a.allocs_per_job)
    per = a.etcd_allocs // jobs
    progress(f"etcd: 3 controllers, {a.etcd_nodes} nodes, {jobs} jobs of {per}")
    with HaCluster(run.workdir / "ha", controllers_n=3, agents_n=0, ttl=a.leader_ttl,
                   net=ETCD_NET, controller_flags=("--log-level", "warning")) as c:
        leader = c.leader()
        fleet = Fleet(SimConfig(controllers=tuple(d.rpc for d in c.controllers), join_token="",
                                data_dir=run.workdir / "ha-nodes", prefix="sim",
                                run_delay=a.run_delay, insecure=True),
                      a.etcd_nodes, a.processes, run.workdir)
        try:
            fleet.start()
            for j in range(jobs):  # through whoever leads (a busy machine may move the lease)
                job = controller_pb2.RegisterJobRequest(job=sleep_job(f"job-{j:04d}", per))
                for attempt in range(30):
                    try:
                        c.stub(c.leader(within=120)).RegisterJob(job, timeout=120)
                        break
                    except grpc.RpcError as e:  # (registering the same job again is a no-op)
                        if attempt == 29 or e.code() not in (
                                grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE,
                                grpc.StatusCode.DEADLINE_EXCEEDED):
                            raise
                        time.sleep(1.0)

            def all_running() -> bool:
                try:
                    listing: controller_pb2.ListJobsResponse = c.stub(c.leader()).ListJobs(
                        controller_pb2.ListJobsRequest(), timeout=30)
                except (grpc.RpcError, RuntimeError):
                    return False
                return bool(sum(j.running for j in listing.jobs) >= jobs * per)
            wait("the etcd cluster's allocations to run", all_running, 1800, every=1.0)
            time.sleep(a.settle)
            leader = c.wait_settled(within=120)
            run.result["etcd_leader_changes_before_kill"] = sum(
                len(d.log_lines("elected leader")) for d in c.controllers) - 1
            survivors = [d for d in c.controllers if d is not leader]
            t0 = time.monotonic()
            c.kill(leader)
            n = 0

            def req(_: int) -> controller_pb2.RegisterJobRequest:
                return controller_pb2.RegisterJobRequest(job=sleep_job(f"probe-{n}", 0))
            # a follower refuses at once; a new leader loading the state and taking its
            # agents back may answer later than a second, and its answer is what counts
            who, _, _ = c.write_until_accepted(survivors, req, within=120, timeout=30.0)
            took = time.monotonic() - t0
            listing = c.stub(who).ListJobs(controller_pb2.ListJobsRequest(), timeout=30)
            loaded = sum(j.desired for j in listing.jobs)
            run.key(f"etcd_failover_{_tag(jobs * per)}_s", round(took, 2),
                    f"<= {a.leader_ttl + 3} (TTL + 3)")
            run.result["etcd_state_loaded_allocations"] = loaded
            run.result["etcd_leader_ttl_s"] = a.leader_ttl
        finally:
            fleet.close()


def _tag(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


# --- the pure scheduler with spread -----------------------------------------------------------


def spread(run: Run) -> None:
    from bench.scheduler import background_allocs, make_nodes
    from controller.scheduler import ClusterSnapshot, SchedulerConfig, schedule
    from orch.jobspec.model import Group, Job, Resources, Spread, Task

    a = run.args
    rng = random.Random(5)
    nodes = make_nodes(a.spread_nodes, rng, uniform=(32000, 65536))
    per_node = max(0, a.spread_background // max(1, a.spread_nodes))
    snap = ClusterSnapshot(nodes, background_allocs(nodes, rng, per_node=per_node)
                           if per_node else ())
    out: dict[str, float] = {}
    for label, attr in (("datacenter", "${node.datacenter}"), ("rack", "${meta.rack}"),
                        ("node", "${node.unique.id}")):
        times = []
        for r in range(3):
            job = Job(name=f"spread-{label}-{r}", groups=(Group(
                name="main", count=1000, spreads=(Spread(attribute=attr, weight=100),),
                tasks=(Task(name="t", driver="process",
                            resources=Resources(cpu_millicores=10, memory_mb=8)),)),))
            t0 = time.perf_counter()
            plan = schedule(job, snap, 0.0, seed=r, config=SchedulerConfig())
            times.append(time.perf_counter() - t0)
            if len(plan.placements) != 1000:
                raise RuntimeError(f"spread by {label}: placed {len(plan.placements)} of 1000")
        out[label] = 1000 / sorted(times)[1]
    run.key(f"spread_placements_per_s_{a.spread_nodes}", round(min(out.values())), ">= 5,000")
    run.result["spread_placements_per_s_by_attribute"] = {k: round(v) for k, v in out.items()}


# --- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--allocs-per-job", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--processes", type=int, default=3, help="node simulator processes")
    ap.add_argument("--run-delay", type=float, default=1.0,
                    help="seconds a simulated allocation takes to start")
    ap.add_argument("--node-grace", type=float, default=10.0)
    ap.add_argument("--kill-one-in", type=int, default=50)
    ap.add_argument("--rolling-jobs", type=int, default=10)
    ap.add_argument("--idle-seconds", type=float, default=30.0)
    ap.add_argument("--settle", type=float, default=10.0)
    ap.add_argument("--place-timeout", type=float, default=7200.0)
    ap.add_argument("--etcd-allocs", type=int, default=100_000, help="0: skip the etcd part")
    ap.add_argument("--etcd-nodes", type=int, default=500)
    ap.add_argument("--leader-ttl", type=int, default=5)
    ap.add_argument("--spread-nodes", type=int, default=5000)
    ap.add_argument("--spread-background", type=int, default=1_000_000)
    ap.add_argument("--skip", action="append", default=[],
                    choices=["sqlite", "reschedule", "rolling", "restart", "etcd", "spread"],
                    help="leave a part out (sqlite: the whole run on one controller)")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 20 nodes, 4 jobs of 10, short phases, no etcd part")
    ap.add_argument("--workdir", type=Path, help="keep the run's files here (default: a "
                    "temporary directory, removed at the end)")
    ap.add_argument("--json", action="store_true", help="end with one line of JSON")
    args = ap.parse_args(argv)
    if args.quick:
        args.nodes, args.jobs, args.allocs_per_job, args.clients = 20, 4, 10, 2
        args.processes, args.idle_seconds, args.settle, args.node_grace = 1, 2.0, 1.0, 2.0
        args.kill_one_in, args.rolling_jobs, args.run_delay = 10, 2, 0.2
        args.etcd_allocs, args.spread_nodes, args.spread_background = 0, 200, 2000
    if args.etcd_allocs <= 0:
        args.skip.append("etcd")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="orch-fleet-"))
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o711)
    run = Run(args, workdir)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        _run(run)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report(run))
    if args.json:
        print(json.dumps(run.result, sort_keys=True))
    return 0


def _run(run: Run) -> None:
    a = run.args
    run.result.update({"nodes": a.nodes, "jobs": a.jobs, "allocs_per_job": a.allocs_per_job,
                       "allocations": run.total, "clients": a.clients, "cpus": os.cpu_count(),
                       "python": platform.python_version(), "load_before": os.getloadavg()[0],
                       "node_grace_s": a.node_grace})
    if "spread" not in a.skip:
        spread(run)
    if "sqlite" not in a.skip:
        one_controller(run)
    if "etcd" not in a.skip:
        etcd_failover(run)
    run.result["load_after"] = os.getloadavg()[0]


def one_controller(run: Run) -> None:
    """Place, idle, reschedule, rolling, commits and restart on one SQLite controller."""
    a = run.args
    ctl = ControllerProc(run.workdir, a.node_grace)
    fleet: Fleet | None = None
    try:
        ctl.start()
        ctl.wait_trust()
        token = (ctl.operator / "join-agent.token").read_text().strip()
        fleet = Fleet(SimConfig(controllers=(ctl.rpc,), join_token=token,
                                data_dir=run.workdir / "nodes", run_delay=a.run_delay,
                                cpu_millicores=4000, memory_mb=node_memory(run)),
                      a.nodes, a.processes, run.workdir)
        progress(f"starting {a.nodes:,} simulated nodes in {a.processes} processes")
        t0 = time.monotonic()
        started = fleet.start()
        run.result["nodes_joined_and_connected_s"] = round(time.monotonic() - t0, 1)
        run.result["nodes_join_s"] = round(max(s.get("join_s", 0) for s in started), 1)
        wait("every node registered", lambda: int(
            ctl.scrape().get("orch_controller_connected_agents")) >= a.nodes, 300, every=1.0)
        place(run, ctl)
        before = ctl.scrape()
        idle(run, ctl, fleet)
        if "reschedule" not in a.skip:
            reschedule(run, ctl, fleet)
        if "rolling" not in a.skip:
            rolling(run, ctl)
        commits(run, before, ctl.scrape())
        if "restart" not in a.skip:
            restart(run, ctl)
    finally:
        if fleet is not None:
            fleet.close()
        ctl.stop()


def node_memory(run: Run) -> int:
    """MB each simulated node offers: room for a quarter more than its share of the
    allocations (8 MB each), so that bin-packing spreads them over most nodes (as C1M's
    200 a host) and the nodes killed later have somewhere to go."""
    share = run.total / max(1, int(run.args.nodes))
    return int(max(64, math.ceil(share * 1.25) * 8))


def report(run: Run) -> str:
    a = run.args
    parts = []
    if "sqlite" not in a.skip:
        parts.append(f"one controller, {a.nodes:,} simulated nodes, {a.jobs:,} jobs of "
                     f"{a.allocs_per_job:,} allocations from {a.clients} clients")
    if "etcd" not in a.skip:
        parts.append(f"3 controllers on etcd, {a.etcd_nodes:,} nodes, "
                     f"{a.etcd_allocs:,} allocations, lease TTL {a.leader_ttl} s")
    if "spread" not in a.skip:
        parts.append(f"the scheduler with spread over {a.spread_nodes:,} nodes")
    head = (f"A fleet: {'; '.join(parts) or 'nothing run'} "
            f"(load average {run.result.get('load_before', 0):.2f} before)")
    return table(head, ("key", "measured", "goal"), [(k, v, g) for k, v, g in run.rows])


if __name__ == "__main__":
    sys.exit(main())
