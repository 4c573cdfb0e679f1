"""Failover benchmark: the leader controller killed with SIGKILL until the new leader's first write.

    python -m bench.failover                    # 10 trials, lease TTL 5 s (about 80 s on 2 CPUs)
    python -m bench.failover --quick            # 3 trials, TTL 2 s, fewer registrations (< 60 s)
    python -m bench.failover --json             # the last line of stdout is one JSON object
    python -m bench.failover --etcd-members 3   # a three-member etcd cluster instead of one

The cluster (``bench.ha_cluster``): real processes on the loopback block
127.0.80.x (``--net``): etcd (one member unless ``--etcd-members 3``; Debian's
etcd 3.4, data on the same disk as SQLite's), three ``orch-controller`` processes
on it (``--leader-ttl``, gossip fast profile, no rate limit) and three
``orch-agent`` processes (process driver; two with ``--quick``) running a job of
one sleeping allocation per agent.

failover  Each trial finds the leader (``GetLeader``), makes one write there (a new
          version of a probe job, acknowledged), kills it with SIGKILL, and then
          tries the same write against the surviving controllers in a loop (every
          20 ms: each survivor in turn, no redirect followed, so a write that
          succeeds was accepted by the controller asked, the new leader). Measured
          from the kill: *elected* (the new leader's "elected leader" log line, ms
          precision), *first write* (its answer arrived: the figure), *agents*
          (every agent's stream is held by the new leader). The killed controller
          is started again and the trial ends once it follows the new leader. Checked
          on the way: the first write's version follows the one acknowledged before
          the kill (nothing acknowledged lost), and the job's allocations and their
          task processes are the same ones after every trial (nothing started twice).
          Target: the first write within the lease TTL + 1 s.
writes    The same N job registrations through the API (``RegisterJob`` of a one-group
          job of count 0: a job version, an evaluation and their events, two
          commits), one at a time and 8 in flight, on the etcd cluster's leader and on
          one controller on SQLite (synchronous=FULL, the default), both on the same
          disk; registrations per second and the ratio etcd / SQLite.

Timings are figures, never a verdict: a loaded machine shows up in them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench.etcd_cluster import binary
from bench.ha_cluster import Daemon, HaCluster, log_time, sleep_job, wait
from bench.report import pct, progress, table
from orch.v1 import controller_pb2

PROBE = "failover-probe"
WEB = "web"
PACE = 0.02
"""Seconds between rounds of write attempts (each survivor once per round)."""


class Interrupted(Exception):
    """SIGTERM: stop, and clean up on the way out."""


@dataclass(slots=True)
class Trial:
    killed: str
    new_leader: str
    elected_s: float
    write_s: float
    agents_s: float
    attempts: int
    version: int
    acked: int


def probe(version_note: str) -> controller_pb2.RegisterJobRequest:
    """A new version of the probe job (count 0: the write itself, no task to start)."""
    return controller_pb2.RegisterJobRequest(job=sleep_job(PROBE, 0, {"note": version_note}))


def elected_after(d: Daemon, kill_wall: float) -> float:
    """Seconds from the kill to ``d``'s first "elected leader" log line after it."""
    times = [log_time(r) for r in d.log_lines("elected leader")]
    after = [t for t in times if t >= kill_wall - 0.001]
    return min(after) - kill_wall if after else math.nan


def failover_trial(c: HaCluster, k: int, before: set[str], shims: set[int]) -> Trial:
    leader = c.leader()
    acked = c.stub(leader).RegisterJob(probe(f"trial {k} before the kill"), timeout=10).version
    survivors = [d for d in c.controllers if d is not leader]
    kill_wall = time.time()
    t0 = time.monotonic()
    c.kill(leader)
    new, reply, attempts = c.write_until_accepted(
        survivors, lambda n: probe(f"trial {k} attempt {n}"), within=10 * c.ttl + 30, pace=PACE)
    write_s, version = time.monotonic() - t0, reply.version
    info = c.leader_info(new)
    if info is None or not info.is_self:
        raise RuntimeError(f"{new.name} accepted a write but does not say it leads")
    if version <= acked:
        raise RuntimeError(f"trial {k}: the new leader wrote version {version}, but version "
                           f"{acked} was acknowledged before the kill: it was lost")
    wait(f"every agent connected to {new.name}", lambda: c.agents_connected_to(new), 60,
         every=0.05)
    agents_s = time.monotonic() - t0
    c.start(leader)
    c.wait_follower(leader, new, within=60)
    c.wait_settled(60)
    running = set(c.running_allocations(new, WEB))
    if running != before or set(c.task_shims()) != shims:
        raise RuntimeError(f"trial {k}: the job's allocations or task processes changed: "
                           f"{sorted(running)} != {sorted(before)}")
    return Trial(leader.name, new.name, elected_after(new, kill_wall), write_s, agents_s,
                 attempts, version, acked)


def failover_section(c: HaCluster, result: dict[str, Any], trials: int) -> str:
    leader = c.leader()
    c.stub(leader).RegisterJob(controller_pb2.RegisterJobRequest(
        job=sleep_job(WEB, len(c.agents))), timeout=30)
    wait("the job's allocations to run", lambda: len(c.running_allocations(leader, WEB))
         == len(c.agents), 60)
    wait("the agents to report them", lambda: sum(
        len(v) for v in c.agents_running().values()) == len(c.agents), 60)
    before = set(c.running_allocations(leader, WEB))
    shims = set(c.task_shims())
    if len(shims) != len(before):
        raise RuntimeError(f"{len(before)} allocations run but {len(shims)} task processes")
    rows: list[Trial] = []
    for k in range(1, trials + 1):
        row = failover_trial(c, k, before, shims)
        rows.append(row)
        progress(f"trial {k}/{trials}: {row.killed} killed; {row.new_leader} elected after "
                 f"{row.elected_s:.2f} s, first write after {row.write_s:.2f} s "
                 f"({row.attempts} attempts), agents after {row.agents_s:.2f} s")
    per_agent = c.agents_running()
    twice = sum(len(v) for v in per_agent.values()) - len({x for v in per_agent.values() for x in v})
    writes = [r.write_s for r in rows]
    elected = [r.elected_s for r in rows]
    agents = [r.agents_s for r in rows]
    target = c.ttl + 1.0
    result.update(
        failover_p50_s=pct(writes, 50), failover_max_s=max(writes), failover_all_s=writes,
        elected_p50_s=pct(elected, 50), elected_max_s=max(elected),
        agents_p50_s=pct(agents, 50), agents_max_s=max(agents),
        lease_ttl_s=c.ttl, trials=trials, target_s=target,
        target_held=max(writes) <= target, lost_acknowledged=0, started_twice=twice,
        allocations=len(before))
    out: list[list[Any]] = [[str(i + 1), r.killed, r.new_leader, r.elected_s, r.write_s,
                             r.agents_s, r.attempts] for i, r in enumerate(rows)]
    out.append(["p50", "", "", pct(elected, 50), pct(writes, 50), pct(agents, 50), ""])
    out.append(["max", "", "", max(elected), max(writes), max(agents), ""])
    members = c.etcd_members
    return table(
        f"Leader killed (SIGKILL) until the new leader's first write: {trials} trials, lease TTL "
        f"{c.ttl} s, 3 controllers, etcd x{members}, {len(c.agents)} agents",
        ["trial", "killed", "new leader", "elected s", "first write s", "agents s", "attempts"],
        out)


def verdict(result: dict[str, Any]) -> str:
    held = "held" if result["target_held"] else "NOT held"
    return (f"target: the new leader's first write within the lease TTL + 1 s "
            f"({result['target_s']:g} s): {held} (p50 {result['failover_p50_s']:.2f} s, max "
            f"{result['failover_max_s']:.2f} s); acknowledged writes lost: "
            f"{result['lost_acknowledged']}; allocations started twice: {result['started_twice']}")


# --- write throughput -----------------------------------------------------------------------


def register_many(c: HaCluster, d: Daemon, prefix: str, n: int,
                  window: int) -> tuple[float, float, float]:
    """``n`` registrations of fresh jobs through ``d``'s API, ``window`` in flight: (per second,
    p50 and p99 latency in ms)."""
    stub = c.stub(d)
    lat: list[float] = []
    pending: list[tuple[float, Any]] = []
    t0 = time.perf_counter()
    for i in range(n):
        req = controller_pb2.RegisterJobRequest(job=sleep_job(f"{prefix}-{i}", 0))
        pending.append((time.perf_counter(), stub.RegisterJob.future(req, timeout=30)))
        if len(pending) >= window:
            sent, fut = pending.pop(0)
            fut.result()
            lat.append(time.perf_counter() - sent)
    for sent, fut in pending:
        fut.result()
        lat.append(time.perf_counter() - sent)
    took = time.perf_counter() - t0
    return n / took, pct(lat, 50) * 1000, pct(lat, 99) * 1000


def writes_rows(c: HaCluster, d: Daemon, label: str, n: int) -> list[list[Any]]:
    slug = "".join(ch if ch.isalnum() else "-" for ch in label.lower())
    register_many(c, d, f"warm-{slug}", min(50, n), 1)
    rows = []
    for window in (1, 8):
        rate, p50, p99 = register_many(c, d, f"reg-{slug}-w{window}", n, window)
        rows.append([label, window, rate, p50, p99])
        progress(f"{n} registrations on {label}, {window} in flight: {rate:,.0f}/s")
    return rows


def writes_section(etcd_rows: list[list[Any]], sqlite_rows: list[list[Any]], n: int,
                   members: int, result: dict[str, Any]) -> str:
    e1, e8 = etcd_rows[0][2], etcd_rows[1][2]
    s1, s8 = sqlite_rows[0][2], sqlite_rows[1][2]
    result.update(registrations=n, registrations_per_s_etcd=e1, registrations_per_s_sqlite=s1,
                  ratio=e1 / s1, registrations_per_s_etcd_8=e8,
                  registrations_per_s_sqlite_8=s8, ratio_8=e8 / s8,
                  registration_p50_ms_etcd=etcd_rows[0][3],
                  registration_p50_ms_sqlite=sqlite_rows[0][3],
                  registration_p99_ms_etcd=etcd_rows[0][4],
                  registration_p99_ms_sqlite=sqlite_rows[0][4])
    rows = [*etcd_rows, *sqlite_rows,
            ["ratio etcd / SQLite", 1, e1 / s1, "", ""], ["ratio etcd / SQLite", 8, e8 / s8, "", ""]]
    return table(f"Job registrations through the API (RegisterJob, count 0): {n} each, etcd x"
                 f"{members} (3 controllers) against SQLite FULL (1 controller), same disk",
                 ["store", "in flight", "registrations/s", "p50 ms", "p99 ms"], rows)


def summary(result: dict[str, Any]) -> str:
    """The headline figures, one per row."""
    rows: list[list[Any]] = [
        ["failover_p50_s", result["failover_p50_s"]],
        ["failover_max_s", result["failover_max_s"]],
        ["lease_ttl_s", result["lease_ttl_s"]],
        ["trials", result["trials"]],
        ["registrations/s etcd (1 in flight)", result["registrations_per_s_etcd"]],
        ["registrations/s SQLite (1 in flight)", result["registrations_per_s_sqlite"]],
        ["ratio etcd / SQLite (1 in flight)", result["ratio"]],
        ["registrations/s etcd (8 in flight)", result["registrations_per_s_etcd_8"]],
        ["registrations/s SQLite (8 in flight)", result["registrations_per_s_sqlite_8"]],
        ["ratio etcd / SQLite (8 in flight)", result["ratio_8"]],
    ]
    return table("Summary", ["figure", "value"], rows)


# --- the run -----------------------------------------------------------------------------------


def etcd_version() -> str:
    out = subprocess.run([binary(), "--version"], capture_output=True, text=True, check=False)
    first = out.stdout.splitlines()[0] if out.stdout else ""
    return first.split(":")[-1].strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, help="leader kills (10; quick: 3)")
    ap.add_argument("--ttl", type=int, help="the leader's lease TTL, seconds (5; quick: 2)")
    ap.add_argument("--registrations", type=int, help="registrations per row (500; quick: 100)")
    ap.add_argument("--agents", type=int, help="agents (3; quick: 2)")
    ap.add_argument("--etcd-members", type=int, choices=(1, 3), default=1,
                    help="etcd members (1 or 3; default 1)")
    ap.add_argument("--net", default="127.0.80", help="the loopback block (default 127.0.80)")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 3 trials, TTL 2 s, 100 registrations, 2 agents")
    ap.add_argument("--keep", action="store_true", help="keep the data and log folder")
    ap.add_argument("--json", action="store_true", help="end with one JSON line")
    opts = ap.parse_args(argv)
    for key, full, quick in (("trials", 10, 3), ("ttl", 5, 2), ("registrations", 500, 100),
                             ("agents", 3, 2)):
        if getattr(opts, key) is None:
            setattr(opts, key, quick if opts.quick else full)
    if opts.trials < 1 or opts.ttl < 1 or opts.registrations < 1 or not 1 <= opts.agents <= 8:
        ap.error("--trials, --ttl and --registrations must be positive, --agents within 1..8")
    if not opts.net.startswith("127."):
        ap.error("--net must be a loopback block (127.x.y)")
    try:
        version = etcd_version()
    except RuntimeError as e:
        print(f"bench.failover: {e}", file=sys.stderr)
        return 1
    result: dict[str, Any] = {"quick": opts.quick, "etcd": version, "etcd_members": opts.etcd_members,
                              "controllers": 3, "agents": opts.agents, "cpus": os.cpu_count(),
                              "python": platform.python_version()}
    print(f"orch failover benchmark: 3 controllers on etcd {version} x{opts.etcd_members} "
          f"({'one member' if opts.etcd_members == 1 else 'three members'}), {opts.agents} agents "
          f"(process driver), real processes on {opts.net}.x; lease TTL {opts.ttl} s; "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="orch-bench-failover-"))
    bound = 90 + opts.trials * (3 * opts.ttl + 30) + opts.registrations // 10
    clusters: list[HaCluster] = []
    ok = False
    own_alarm = signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None)
    if own_alarm:  # a bound on the whole run, unless something else owns SIGALRM (pytest-timeout)
        signal.signal(signal.SIGALRM, _too_long)
        signal.alarm(bound)
    old_term = signal.signal(signal.SIGTERM, _terminated)
    try:
        progress("starting etcd, 3 controllers and the agents")
        c = HaCluster(workdir / "ha", agents_n=opts.agents, etcd_members=opts.etcd_members,
                      ttl=opts.ttl, net=opts.net, etcd_on_disk=True)
        clusters.append(c)
        c.start_all()
        progress(f"{c.leader().name} leads; every agent is connected to it")
        print(failover_section(c, result, opts.trials), flush=True)
        print(verdict(result), flush=True)
        etcd_rows = writes_rows(c, c.leader(), f"etcd x{opts.etcd_members}", opts.registrations)
        c.close()
        progress("starting one controller on SQLite")
        s = HaCluster(workdir / "sqlite", controllers_n=1, agents_n=0, store="sqlite", net=opts.net)
        clusters.append(s)
        s.start_all()
        sqlite_rows = writes_rows(s, s.leader(), "SQLite FULL", opts.registrations)
        s.close()
        print(writes_section(etcd_rows, sqlite_rows, opts.registrations, opts.etcd_members,
                             result), flush=True)
        print(summary(result), flush=True)
        ok = True
    except (RuntimeError, OSError, grpc.RpcError, TimeoutError, Interrupted) as e:
        print(f"bench.failover failed: {e!r} (logs in {workdir})", file=sys.stderr)
        opts.keep = True
    except KeyboardInterrupt:
        print(f"bench.failover interrupted (logs in {workdir})", file=sys.stderr)
        opts.keep = True
    finally:
        if own_alarm:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
        for cluster in clusters:
            cluster.close()
        signal.signal(signal.SIGTERM, old_term)
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


def _terminated(signum: int, frame: object) -> None:
    raise Interrupted("terminated (SIGTERM)")


if __name__ == "__main__":
    raise SystemExit(main())
