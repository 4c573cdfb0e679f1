"""Controller benchmark: a real controller and three process-driver agents.

    python -m bench.controller            # the full run (about two minutes)
    python -m bench.controller --quick    # a smoke run (20 allocations, 2 trials, 1 s of load)
    python -m bench.controller --json     # the last line of stdout is one JSON object
    python -m bench.controller --fast     # short daemon timings (gossip "fast", grace 1 s)

The cluster is ``orchctl.demo``'s: real ``orch-controller`` and ``orch-agent``
processes with the demo's timings (gossip at orch's LAN profile, node grace
3 s; ``--fast``: the fast profile, grace 1 s), moved to a loopback block of its
own (controller 127.0.77.1, agents 127.0.77.2-4) so that a demo or a test suite
running at the same time on 127.0.0.x cannot join it. Every allocation is
``/bin/sleep 3600`` (process driver, 10 millicores, 8 MB, no ports): what is
measured is the orchestrator, not the task. Times come from the controller's
event stream (``orchctl events``: nanosecond times from the controller's clock,
the host clock the benchmark reads too), except the moment a plan is made, which
is read from the controller's log (see ``Cluster.plan_made``).

job run    ``orchctl job run --detach`` of a fresh job of 100 allocations on 3 agents,
           until the controller has heard from the agents that all 100 run; median of
           3 runs (between runs the job is stopped, its tasks gone, and it is purged).
           Split: cli (orchctl started to JobRegistered), scheduling (JobRegistered to
           the plan placing all 100 made) and start (plan made to the last ``is
           running``: commit, desired sets to the agents, tasks started, reports back).
rpc        Status requests per second from one client process (grpc.aio, one channel
           per client, each client sends its next request when the last one answered):
           ``GetJob`` of the 100-allocation job and ``ListJobs``, with 1 and 8 concurrent
           clients, p50/p99 latency. The client shares the machine's cores with the
           controller: both CPU figures are shown.
reschedule An agent killed with SIGKILL (the one running most of a 6-allocation job)
           until its allocations run elsewhere; p50 and max of 10 trials. Split:
           detection (kill to NodeDown), scheduling (NodeDown to the plan placing the
           replacements) and start (plan made to the replacements running). The agent
           is started again after each trial and the cluster settles. A node that goes
           down again within the controller's flap window (10 minutes) waits twice the
           grace, then four times...; so that every trial measures a first failure and
           not that brake, each agent is killed once per cluster and a fresh cluster
           takes over after that.

Timings are figures, never a verdict: a loaded machine shows up in them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc

from bench.report import pct, progress, table
from orch.v1 import controller_pb2, controller_pb2_grpc, node_pb2
from orchctl.client import Settings, connect, tls_from, token
from orchctl.demo import Demo, wait

NET = "127.0.77"
"""The benchmark's own loopback block (not the demo's 127.0.0.x), so that a demo or a test
suite started at the same time on this machine cannot join its cluster, nor it theirs."""
ADDR = f"{NET}.1:4647"
AGENTS = 3
NS = 1_000_000_000
RUN = node_pb2.DESIRED_STATUS_RUN
RUNNING = node_pb2.CLIENT_STATUS_RUNNING
TERMINAL = (node_pb2.CLIENT_STATUS_COMPLETE, node_pb2.CLIENT_STATUS_FAILED,
            node_pb2.CLIENT_STATUS_LOST)
READY = node_pb2.NODE_STATUS_READY

JOB = """\
# written by bench/controller.py: {count} allocations that only sleep
name: {name}
type: service
groups:
  - name: sleep
    count: {count}
    tasks:
      - name: sleep
        driver: process
        command: /bin/sleep
        args: ["3600"]
        kill_timeout: 2s
        resources: {{cpu_millicores: 10, memory_mb: 8}}
"""






def secs(ns: int) -> float:
    return ns / NS


# --- the cluster ------------------------------------------------------------------------------


class Cluster:
    """``Demo``'s processes, watched through the controller's API (not through orchctl
    subprocesses, which would load the two cores while they are measured)."""

    def __init__(self, workdir: Path, fast: bool) -> None:
        self.demo = Demo(workdir, AGENTS, fast, "process", net=NET,
                         controller_flags=("--rate-limit", "0"))  # it measures the API's peak

    def start(self) -> None:
        self.demo.start_controller()
        self.channel = self.demo.channel()
        self.stub = controller_pb2_grpc.ControllerServiceStub(self.channel)
        for i in range(1, AGENTS + 1):
            self.demo.start_agent(i)
        took = wait("the agents to register", lambda: self.ready() == AGENTS, 60)
        progress(f"controller and {AGENTS} agents up, registered in {took:.1f} s")

    def close(self) -> None:
        """Stop every process and task of this cluster (again: harmless)."""
        self.channel.close()
        self.demo.stop_all()
        self.demo.cleanup_tasks()

    # --- reads -----------------------------------------------------------------------------

    def nodes(self) -> list[node_pb2.Node]:
        try:
            return list(self.stub.ListNodes(controller_pb2.ListNodesRequest(), timeout=5).nodes)
        except grpc.RpcError:
            return []

    def ready(self) -> int:
        return sum(n.status == READY for n in self.nodes())

    def node_ids(self) -> dict[str, str]:
        return {n.name: n.id for n in self.nodes()}

    def job(self, name: str) -> controller_pb2.JobStatusReply:
        return self.stub.GetJob(controller_pb2.GetJobRequest(name=name), timeout=10)

    def running(self, name: str) -> dict[str, node_pb2.Allocation]:
        """The job's allocations that should run and do, by id."""
        try:
            st = self.job(name)
        except grpc.RpcError:
            return {}
        return {a.id: a for a in st.allocations
                if a.desired_status == RUN and a.client_status == RUNNING}

    def last_index(self) -> int:
        evs = list(self.stub.Watch(controller_pb2.WatchRequest(tail=1), timeout=10))
        return evs[-1].index if evs else 0

    def events_after(self, index: int) -> list[controller_pb2.Event]:
        return list(self.stub.Watch(controller_pb2.WatchRequest(since_index=index), timeout=30))

    def plan_made(self, job: str, after_ns: int) -> int | None:
        """When the controller logged the first evaluation of ``job`` after ``after_ns`` that
        placed something: the plan is made and about to be committed (ms precision).

        AllocationPlaced events carry the evaluation's start time, so they cannot tell
        the scheduler's own work apart from what follows it; this log line can."""
        log = self.demo.dir / "controller.log"
        for line in log.read_text(errors="replace").splitlines():
            if '"evaluation"' not in line:
                continue
            try:
                rec = json.loads(line)
                ts = round(datetime.fromisoformat(rec["ts"]).timestamp() * 1000) * 1_000_000
            except (ValueError, KeyError, TypeError):
                continue
            if (rec.get("msg") == "evaluation" and rec.get("job") == job and rec.get("placed")
                    and ts >= after_ns - 1_000_000):  # the log's times are truncated to ms
                return max(ts, after_ns)
        return None

    # --- jobs ------------------------------------------------------------------------------

    def job_file(self, name: str, count: int) -> Path:
        path = self.demo.dir / f"{name}.yaml"
        path.write_text(JOB.format(name=name, count=count))
        return path

    def run_job(self, name: str, count: int) -> None:
        """Run a job of ``count`` sleeping allocations and wait until all of them run."""
        self.demo.orchctl("job", "run", "--detach", str(self.job_file(name, count)), show=False)
        wait(f"{name} to run", lambda: len(self.running(name)) == count, 60)

    def stop_job(self, name: str) -> None:
        """Stop the job, wait until none of its tasks runs, and purge it."""
        self.demo.orchctl("job", "stop", name, show=False)
        wait(f"{name} to stop", lambda: all(
            a.client_status in TERMINAL for a in self.job(name).allocations), 120)
        self.demo.orchctl("job", "stop", "--purge", name, show=False)


# --- job run ----------------------------------------------------------------------------------


def job_run_once(c: Cluster, name: str, count: int) -> dict[str, float]:
    """``orchctl job run --detach`` of a fresh job, until the controller knows all of it runs."""
    path = c.job_file(name, count)
    mark = c.last_index()
    t0 = time.time_ns()
    c.demo.orchctl("job", "run", "--detach", str(path), show=False)
    cli_back = time.time_ns()
    wait(f"{count} allocations of {name} to run", lambda: len(c.running(name)) >= count, 180)
    seen = time.time_ns()
    evs = c.events_after(mark)
    reg = next(e.time_ns for e in evs if e.type == "JobRegistered" and e.key == name)
    placed = {e.key: e.time_ns for e in evs
              if e.type == "AllocationPlaced" and e.allocation.job == name}
    running: dict[str, int] = {}
    for e in evs:
        if (e.type == "AllocationRunning" and e.key in placed
                and e.allocation.client_status == RUNNING):
            running.setdefault(e.key, e.time_ns)
    if len(placed) != count or len(running) != count:
        raise RuntimeError(f"{name}: {len(placed)} placed and {len(running)} running events "
                           f"for {count} allocations")
    last_running = max(running.values())
    planned = c.plan_made(name, reg) or max(placed.values())
    per_alloc = [secs(running[a] - placed[a]) for a in placed]
    return {"total_s": secs(last_running - t0), "cli_s": secs(reg - t0),
            "schedule_s": secs(planned - reg), "start_s": secs(last_running - planned),
            "first_running_s": secs(min(running.values()) - t0),
            "alloc_start_p50_s": pct(per_alloc, 50), "orchctl_returned_s": secs(cli_back - t0),
            "observed_s": secs(seen - t0)}


def job_run_section(c: Cluster, result: dict[str, Any], count: int, runs: int) -> str:
    """Run ``runs`` fresh jobs of ``count`` allocations; the last one is left running."""
    rows: list[dict[str, float]] = []
    for r in range(1, runs + 1):
        name = f"bench-{count}-r{r}"
        row = job_run_once(c, name, count)
        rows.append(row)
        progress(f"job run {r}/{runs}: {count} running after {row['total_s']:.2f} s "
                 f"(scheduling {row['schedule_s']:.3f} s, start {row['start_s']:.2f} s)")
        if r < runs:
            c.stop_job(name)
            time.sleep(1.0)  # let the agents and the controller go idle
    keys = list(rows[0])
    med = {k: statistics.median(row[k] for row in rows) for k in keys}
    # job_run_100_s is the agreed key; job_run_allocs says how many allocations it is of
    result.update(job_run_allocs=count, job_run_runs=runs, job_run_100_s=med["total_s"],
                  job_run_cli_s=med["cli_s"], job_run_schedule_s=med["schedule_s"],
                  job_run_start_s=med["start_s"], job_run_first_running_s=med["first_running_s"],
                  job_run_alloc_start_p50_s=med["alloc_start_p50_s"],
                  job_run_all_s=[row["total_s"] for row in rows])
    heads = ["run", "total s", "cli s", "scheduling s", "start s", "first running s",
             "start p50/alloc s", "orchctl returned s"]
    table_rows: list[list[Any]] = [
        [str(i + 1), row["total_s"], row["cli_s"], row["schedule_s"], row["start_s"],
         row["first_running_s"], row["alloc_start_p50_s"], row["orchctl_returned_s"]]
        for i, row in enumerate(rows)]
    table_rows.append(["median", med["total_s"], med["cli_s"], med["schedule_s"], med["start_s"],
                       med["first_running_s"], med["alloc_start_p50_s"], med["orchctl_returned_s"]])
    verdict = "within" if med["total_s"] <= 10 else "OVER"
    return table(f"orchctl job run of {count} allocations on {AGENTS} agents (process driver) "
                 f"to all running: median {med['total_s']:.2f} s ({verdict} the 10 s target)",
                 heads, table_rows)


# --- gRPC throughput --------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def hammer(rpc: str, job: str, clients: int, seconds: float,
                 operator: Settings) -> dict[str, float]:
    """``clients`` concurrent callers of one RPC for ``seconds``, one channel each (mTLS with
    the operator's certificate and token, as orchctl's)."""
    tls, secret = tls_from(None, None, None, operator), token(None, None, operator)
    channels = [connect(ADDR, 60.0, tls, secret) for _ in range(clients)]
    try:
        stubs = [controller_pb2_grpc.ControllerServiceStub(ch) for ch in channels]
        get = controller_pb2.GetJobRequest(name=job)
        lst = controller_pb2.ListJobsRequest()
        size = 0
        for s in stubs:  # connect and warm up
            reply = await (s.GetJob(get, timeout=10) if rpc == "GetJob"
                           else s.ListJobs(lst, timeout=10))
            size = reply.ByteSize()
        lat: list[float] = []
        end = time.perf_counter() + seconds

        async def client(s: controller_pb2_grpc.ControllerServiceAsyncStub) -> None:
            while time.perf_counter() < end:
                t = time.perf_counter()
                if rpc == "GetJob":
                    await s.GetJob(get, timeout=10)
                else:
                    await s.ListJobs(lst, timeout=10)
                lat.append(time.perf_counter() - t)

        t0, cpu0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(client(s) for s in stubs))
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        for ch in channels:
            await ch.close()
    return {"rps": len(lat) / elapsed, "p50_ms": 1000 * pct(lat, 50),
            "p99_ms": 1000 * pct(lat, 99), "client_cpu_pct": 100 * cpu / elapsed,
            "reply_bytes": float(size), "elapsed_s": elapsed}


def rpc_section(c: Cluster, result: dict[str, Any], job: str, allocs: int, seconds: float) -> str:
    ctl_pid = c.demo.procs["controller"].pid
    rows = []
    for rpc in ("GetJob", "ListJobs"):
        for clients in (1, 8):
            cpu0 = cpu_seconds(ctl_pid)
            r = asyncio.run(hammer(rpc, job, clients, seconds, c.demo.operator_settings()))
            ctl_cpu = 100 * (cpu_seconds(ctl_pid) - cpu0) / r["elapsed_s"]
            progress(f"{rpc} x{clients}: {r['rps']:.0f} req/s, p99 {r['p99_ms']:.1f} ms")
            rows.append([rpc, clients, int(r["reply_bytes"]), r["rps"], r["p50_ms"],
                         r["p99_ms"], ctl_cpu, r["client_cpu_pct"]])
            tag = f"{rpc.lower()}_c{clients}"
            result[f"rpc_{tag}_rps"] = r["rps"]
            result[f"rpc_{tag}_p50_ms"] = r["p50_ms"]
            result[f"rpc_{tag}_p99_ms"] = r["p99_ms"]
    return table(f"Status requests: {seconds:g} s each from one grpc.aio client process "
                 f"(GetJob of a job of {allocs} allocations; CPU in % of one core)",
                 ["rpc", "clients", "reply bytes", "req/s", "p50 ms", "p99 ms",
                  "controller CPU %", "client CPU %"], rows)


# --- rescheduling -----------------------------------------------------------------------------


def pick_victim(c: Cluster, name: str, spent: set[str]) -> str | None:
    """Of the agents not killed yet in this cluster, the one running most of the job (the
    lowest number among equals); None when none of them runs any of it."""
    ids = c.node_ids()
    on: dict[str, int] = {}
    for a in c.running(name).values():
        on[a.node_id] = on.get(a.node_id, 0) + 1
    fresh = [f"agent-{i}" for i in range(1, AGENTS + 1) if f"agent-{i}" not in spent
             and on.get(ids.get(f"agent-{i}", ""), 0) > 0]
    return min(fresh, key=lambda n: (-on[ids[n]], n)) if fresh else None


def reschedule_once(c: Cluster, name: str, victim: str) -> dict[str, Any]:
    vid = c.node_ids()[victim]
    lost = {a for a, al in c.running(name).items() if al.node_id == vid}
    mark = c.last_index()
    t_kill = time.time_ns()
    c.demo.kill(victim)

    def replaced() -> bool:
        try:
            allocs = c.job(name).allocations
        except grpc.RpcError:
            return False
        done = {a.previous_allocation for a in allocs
                if a.previous_allocation in lost and a.desired_status == RUN
                and a.client_status == RUNNING}
        return done == lost

    wait(f"{victim}'s allocations to run elsewhere", replaced, 120)
    evs = c.events_after(mark)
    down = next(e.time_ns for e in evs if e.type == "NodeDown" and e.key == vid)
    placed = {e.key: e.time_ns for e in evs if e.type == "AllocationRescheduled"
              and e.allocation.previous_allocation in lost}
    running: dict[str, int] = {}
    for e in evs:
        if (e.type == "AllocationRunning" and e.key in placed
                and e.allocation.client_status == RUNNING):
            running.setdefault(e.key, e.time_ns)
    if len(placed) < len(lost) or set(running) != set(placed):
        raise RuntimeError(f"events of {len(lost)} lost allocations: {len(placed)} placed, "
                           f"{len(running)} running")
    last_running = max(running.values())
    planned = c.plan_made(name, down) or max(placed.values())
    return {"victim": victim, "moved": len(lost), "total_s": secs(last_running - t_kill),
            "detect_s": secs(down - t_kill), "schedule_s": secs(planned - down),
            "start_s": secs(last_running - planned)}


def bring_back(c: Cluster, victim: str, name: str, count: int) -> None:
    c.demo.start_agent(int(victim.split("-")[1]))
    wait("every node ready", lambda: c.ready() == AGENTS, 60)
    wait(f"{name} to run {count} allocations", lambda: len(c.running(name)) == count, 60)
    time.sleep(2.0)  # the returning agent stops what now runs elsewhere; gossip settles


class Clusters:
    """One cluster at a time on the benchmark's addresses, each in a folder of its own."""

    def __init__(self, workdir: Path, fast: bool) -> None:
        self.workdir = workdir
        self.fast = fast
        self.made = 0
        self.current: Cluster | None = None

    def fresh(self) -> Cluster:
        self.close()
        self.made += 1
        folder = self.workdir / f"cluster-{self.made}"
        folder.mkdir()
        self.current = Cluster(folder, self.fast)
        self.current.start()
        return self.current

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None


def reschedule_section(clusters: Clusters, result: dict[str, Any], trials: int, count: int,
                       fast: bool) -> str:
    """Kill agents until ``trials`` are done. A node that goes down again within the
    controller's flap window waits longer, so each agent is killed once per cluster: a
    fresh cluster takes over when every agent still running part of the job has been."""
    name = f"bench-resched-{count}"
    rows: list[dict[str, Any]] = []
    c: Cluster | None = None
    spent: set[str] = set()
    used = 0
    while len(rows) < trials:
        victim = pick_victim(c, name, spent) if c is not None else None
        if c is None or victim is None:
            c, spent = clusters.fresh(), set()
            used += 1
            c.run_job(name, count)
            continue
        row = reschedule_once(c, name, victim)
        spent.add(victim)
        rows.append(row)
        progress(f"trial {len(rows)}/{trials}: {victim} killed, {row['moved']} allocation(s) "
                 f"running elsewhere after {row['total_s']:.2f} s "
                 f"(detection {row['detect_s']:.2f} s)")
        bring_back(c, victim, name, count)
    clusters.close()
    cols = ("total_s", "detect_s", "schedule_s", "start_s")
    p50 = {k: pct([r[k] for r in rows], 50) for k in cols}
    mx = {k: max(r[k] for r in rows) for k in cols}
    result.update(reschedule_trials=trials, reschedule_job_allocs=count,
                  reschedule_p50_s=p50["total_s"], reschedule_max_s=mx["total_s"],
                  reschedule_detect_p50_s=p50["detect_s"],
                  reschedule_schedule_p50_s=p50["schedule_s"],
                  reschedule_start_p50_s=p50["start_s"], reschedule_detect_max_s=mx["detect_s"],
                  reschedule_all_s=[r["total_s"] for r in rows], reschedule_clusters=used)
    timings = ("gossip fast profile, node grace 1 s" if fast
               else "gossip LAN profile, node grace 3 s: the demo's defaults")
    out = [[str(i + 1), r["victim"], r["moved"], r["total_s"], r["detect_s"], r["schedule_s"],
            r["start_s"]] for i, r in enumerate(rows)]
    out.append(["p50", "", "", p50["total_s"], p50["detect_s"], p50["schedule_s"],
                p50["start_s"]])
    out.append(["max", "", "", mx["total_s"], mx["detect_s"], mx["schedule_s"], mx["start_s"]])
    return table(f"Agent killed (SIGKILL) until its allocations run elsewhere: {trials} trials, "
                 f"a job of {count} allocations ({timings}; each agent killed once per cluster, "
                 f"{used} clusters)",
                 ["trial", "killed", "moved", "total s", "detection s", "scheduling s",
                  "start s"], out)


# --- the report -------------------------------------------------------------------------------






def ports_free() -> str | None:
    """The benchmark needs the demo's fixed addresses: say which one is taken, if any."""
    for host, port, kind in ((f"{NET}.1", 4647, socket.SOCK_STREAM),
                             (f"{NET}.1", 7946, socket.SOCK_DGRAM)):
        with socket.socket(socket.AF_INET, kind) as s:
            if kind == socket.SOCK_STREAM:  # past connections in TIME_WAIT do not count
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                return f"{host}:{port} is in use (another controller benchmark running?)"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--allocs", type=int, help="allocations of the job run (100; quick: 20)")
    ap.add_argument("--runs", type=int, help="job runs, the median is shown (3; quick: 1)")
    ap.add_argument("--seconds", type=float, help="seconds per throughput row (3; quick: 1)")
    ap.add_argument("--trials", type=int, help="agent kills (10; quick: 2)")
    ap.add_argument("--resched-allocs", type=int, default=6,
                    help="allocations of the job whose agent is killed")
    ap.add_argument("--fast", action="store_true", help="short daemon timings")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 20 allocations, 1 run, 1 s of load, 2 trials")
    ap.add_argument("--keep", action="store_true", help="keep the data and log folder")
    ap.add_argument("--json", action="store_true", help="end with one JSON line")
    opts = ap.parse_args(argv)
    for key, full, quick in (("allocs", 100, 20), ("runs", 3, 1), ("seconds", 3.0, 1.0),
                             ("trials", 10, 2)):
        if getattr(opts, key) is None:
            setattr(opts, key, quick if opts.quick else full)
    busy = ports_free()
    if busy:
        print(f"bench.controller: {busy}", file=sys.stderr)
        return 1
    result: dict[str, Any] = {"quick": opts.quick, "fast": opts.fast, "agents": AGENTS,
                              "cpus": os.cpu_count(), "python": platform.python_version()}
    print(f"orch controller benchmark: a controller and {AGENTS} agents (process driver) as real "
          f"processes on {NET}.x, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          + ("fast timings (gossip fast profile, node grace 1 s)" if opts.fast else
             "the demo's default timings (gossip LAN profile, node grace 3 s)"), flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="orch-bench-controller-"))
    workdir.chmod(0o711)  # tasks run as an unprivileged user: they pass through to their own
    clusters = Clusters(workdir, opts.fast)
    deadline = 120 + 20 * opts.runs + 8 * opts.seconds + 60 * opts.trials
    ok = False
    # a bound on the whole run, unless something else owns SIGALRM (pytest-timeout does)
    own_alarm = signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None)
    if own_alarm:
        signal.signal(signal.SIGALRM, _too_long)
        signal.alarm(int(deadline))
    try:
        c = clusters.fresh()
        print(job_run_section(c, result, opts.allocs, opts.runs), flush=True)
        last = f"bench-{opts.allocs}-r{opts.runs}"
        print(rpc_section(c, result, last, opts.allocs, opts.seconds), flush=True)
        print(reschedule_section(clusters, result, opts.trials, opts.resched_allocs, opts.fast),
              flush=True)
        ok = True
    except (RuntimeError, OSError, grpc.RpcError, StopIteration, TimeoutError) as e:
        print(f"bench.controller failed: {e!r} (logs in {workdir})", file=sys.stderr)
        opts.keep = True
    finally:
        if own_alarm:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
        clusters.close()
        if not opts.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if opts.json and ok:
        print(json.dumps(_finite(result)))
    return 0 if ok else 1


def _finite(v: Any) -> Any:
    """JSON without NaN or infinities (null instead)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


def _too_long(signum: int, frame: object) -> None:
    raise TimeoutError("the benchmark ran past its time bound")


if __name__ == "__main__":
    raise SystemExit(main())
