"""Soak benchmark: a month of a cluster's life, accelerated, against a real controller.

    python -m bench.soak                   # SQLite, then etcd: the full month (tens of minutes)
    python -m bench.soak --quick           # a smoke run (a few hundred versions, seconds)
    python -m bench.soak --store sqlite    # one store only
    python -m bench.soak --json            # the last line of stdout is one JSON object

The cluster: a real ``orch-controller`` process, bootstrapped (a CA, mTLS everywhere, the
management token), on a loopback block of its own (127.0.91.x), storing in SQLite or in a
one-member etcd; and simulated agents in this process, each one joined with the agent join
token (its own key and certificate) and streaming through the agents' own client code
(``agent.controller_link.ControllerLink``, over mTLS): they run nothing, and report every
allocation of their desired set running at once, and every one that left it complete.

The month, by default: 10,000 job versions over 50 jobs (scales that place and stop whole
groups, updates that replace them, reverts), about 200,000 allocations placed and stopped,
and 1,000 nodes that join and later leave for good (30 live at a time). Time is compressed:
the month lasts ``--month`` seconds (default 300), and every garbage-collection threshold
is Nomad's default compressed by the same factor (job 4 h, evaluation and deployment 1 h,
node 24 h; the collection interval too, but never below 1 s), as are the windows that count
nodes going down (the half-down brake, flap doubling) and the SQLite store's daily rewrite
(``store_defrag_interval``). What cannot be compressed is not:
an agent's stream is given up after ``node_grace`` (1 s here), as on a real network.

Figures (per store):

store_rows_end_over_live        the records the store keeps at the end (after the month and
                                the longest threshold), over those the live objects need:
                                each job's kept versions (the newest 6, the stable one), its
                                latest deployment and evaluation, the allocations that run,
                                the nodes that are up (or down within the node threshold),
                                and the meta (minus keys of nodes gone). The event log is a
                                ring of its own (max_events) and is not counted.
rss_slope_mb_per_10k_versions   the controller's resident memory against versions made, a
                                least-squares line over the second half of the month,
                                through a reading every 0.25 s (rss_readings_second_half).
commit_p99_ratio_end_over_start the 99th percentile of the store's commit time (from the
                                controller's own histogram, interpolated within buckets) in
                                each tenth of the month: the median of the last three tenths
                                over the median of the first three (a shared machine's noise
                                moves one tenth, not three).
commit_p99_ratio_end_over_start_paired
                                the same ratio taken side by side after the month: the
                                store as it was at the start and as it is at the end (from
                                snapshots: SQLite's file; etcd's own snapshot, restored
                                into a member of its own with etcdctl) take the same
                                commits in alternating blocks, so that the machine's load,
                                which moves between the tenths above, falls on both alike.
reschedule_after_churn_s        after the month, a node whose agent dies: seconds until all
                                of its allocations run elsewhere (goal: node_grace + 1 s).
restore_roundtrip_ok            a snapshot saved, the store wiped, the controller started
                                again from the snapshot: the same jobs, versions and
                                allocations, and every agent applies the restored desired
                                sets (of a newer store epoch, with lower versions).

Goals: rows <= 1.5, slope <= 1 MB, commit p99 ratio <= 1.2, reschedule within grace + 1 s,
restore true. The run is bounded: every wait has a deadline, the churn stops at its counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from agent.controller_link import ControllerLink
from agent.desired import DesiredSet
from bench.report import progress, table
from controller.snapshot import open_file
from controller.store.base import Changes, Store, StoreSnapshot
from controller.store.sqlite import SQLiteStore
from orch import join, pki
from orch.jobspec import parse_job
from orch.tls import TlsConfig, open_channel
from orch.v1 import controller_pb2, controller_pb2_grpc, job_pb2, node_pb2
from orchctl.client import connect

NET = "127.0.91"
ETCD_PREFIX = "/soak"
CTL_HOST = f"{NET}.1"
RPC = f"{CTL_HOST}:4647"
METRICS = f"http://{CTL_HOST}:9647/metrics"
MONTH = 30 * 86400.0
NODE_GRACE = 1.0
MAX_VERSIONS = 6
RSS_EVERY = 0.25
"""Seconds between readings of the controller's resident memory during the month (a read of
/proc/PID/status). The slope is fitted to every reading: the heap swings by half a megabyte
either way within seconds, and a line through the 25 scrapes of the second half alone
differed from one through every reading by up to 0.9 MB per 10,000 versions in the same
month (``rss_slope_at_scrapes`` is that line, for comparison)."""
RUN = node_pb2.DESIRED_STATUS_RUN
RUNNING, COMPLETE = node_pb2.CLIENT_STATUS_RUNNING, node_pb2.CLIENT_STATUS_COMPLETE
TERMINAL = (COMPLETE, node_pb2.CLIENT_STATUS_FAILED, node_pb2.CLIENT_STATUS_LOST)
READY, DOWN = node_pb2.NODE_STATUS_READY, node_pb2.NODE_STATUS_DOWN


@dataclass(frozen=True)
class Month:
    """What one soak drives."""

    versions: int = 10_000
    allocations: int = 200_000
    nodes: int = 1_000
    jobs: int = 50
    live_nodes: int = 30
    month_s: float = 300.0
    workers: int = 4

    @property
    def factor(self) -> float:
        """Real seconds per simulated second."""
        return self.month_s / MONTH

    @property
    def group_size(self) -> int:
        """A group's count when scaled up (it alternates with 0): allocations per version."""
        return max(1, round(2 * self.allocations / self.versions))


QUICK = Month(versions=300, allocations=3_000, nodes=24, jobs=8, live_nodes=6, month_s=20.0,
              workers=2)


JOB = """\
name: {name}
update: {{max_parallel: 1000, min_healthy_time: 0s, healthy_deadline: 1h, progress_deadline: 2h}}
groups:
  - name: app
    count: {count}
    tasks:
      - name: main
        driver: process
        command: /bin/sleep
        args: ["3600"]
        env: {{ROUND: "{round}"}}
        resources: {{cpu_millicores: 10, memory_mb: 8}}
"""


def controller_toml(workdir: Path, m: Month, store: str, etcd: list[str]) -> str:
    f = m.factor

    def compress(seconds: float, floor: float = 0.05) -> float:
        return max(floor, seconds * f)
    lines = [
        'name = "soak-controller"', f'bind = "{CTL_HOST}:7946"', f'rpc_addr = "{RPC}"',
        f'metrics_addr = "{CTL_HOST}:9647"', f'http_addr = "{CTL_HOST}:4646"',
        f'data_dir = "{workdir / "controller"}"',
        "bootstrap = true", 'log_format = "json"', 'log_level = "warning"',
        'store_sync = "normal"', f"node_grace = {NODE_GRACE}", "failover_grace = 3.0",
        "rate_limit = 0.0", "autoscale_interval = 86400.0", "reconcile_interval = 60.0",
        f"gc_interval = {compress(300.0, 1.0):.3f}",
        f"job_gc_threshold = {compress(4 * 3600.0):.3f}",
        f"eval_gc_threshold = {compress(3600.0):.3f}",
        f"deployment_gc_threshold = {compress(3600.0):.3f}",
        f"node_gc_threshold = {compress(24 * 3600.0):.3f}",
        f"store_defrag_interval = {compress(24 * 3600.0):.3f}",
        f"brake_window = {compress(600.0):.3f}",
        f'store = "{store}"',
    ]
    if store == "etcd":
        lines += [f"etcd_endpoints = {json.dumps(etcd)}", f'etcd_prefix = "{ETCD_PREFIX}"']
    return "\n".join(lines) + "\n"


# --- the controller process -------------------------------------------------------------------


class ControllerProcess:
    def __init__(self, workdir: Path, m: Month, store: str, etcd: list[str]) -> None:
        self.workdir = workdir
        self.config = workdir / "controller.toml"
        self.config.write_text(controller_toml(workdir, m, store, etcd))
        self.log = workdir / "controller.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.workdir / "controller"

    @property
    def operator(self) -> Path:
        return self.data_dir / "pki" / "operator"

    def start(self, *extra: str) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "controller.main", "--config", str(self.config), *extra],
                stdout=out, stderr=out, start_new_session=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return math.nan

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def scrape() -> dict[str, float]:
    """The controller's metrics, as ``name{labels}`` -> value."""
    out: dict[str, float] = {}
    with urllib.request.urlopen(METRICS, timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[key] = float(value)
    return out


def commit_buckets(metrics: dict[str, float]) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of the commit-time histogram."""
    out = []
    for key, value in metrics.items():
        if key.startswith("orch_controller_store_commit_seconds_bucket{"):
            le = key.split('le="', 1)[1].split('"', 1)[0]
            out.append((math.inf if le == "+Inf" else float(le), value))
    return sorted(out)


def quantile(before: list[tuple[float, float]], after: list[tuple[float, float]],
             q: float) -> float:
    """The ``q`` quantile of the observations between two scrapes of one histogram, linearly
    interpolated within its bucket (as Prometheus' histogram_quantile)."""
    counts = [(le, b - a) for (le, b), (_, a) in zip(after, before, strict=True)]
    total = counts[-1][1] if counts else 0
    if total <= 0:
        return math.nan
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in counts:
        if c >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-12)
        prev_le, prev_c = le, c
    return prev_le


# --- simulated agents ------------------------------------------------------------------------------


class SimAgent:
    """An agent that runs nothing: it joins with the token, streams through ControllerLink,
    and reports each allocation of its desired set running, and each that left it complete."""

    def __init__(self, i: int, workdir: Path) -> None:
        self.node_id = str(uuid.uuid4())
        self.name = f"sim-{i:04d}"
        self.dir = workdir / "agents" / self.name
        self.allocs: dict[str, node_pb2.Allocation] = {}
        self.epochs: set[int] = set()
        self.applied_version = 0
        self.tls = TlsConfig()
        self.link: ControllerLink | None = None

    async def join(self, token: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        bundle = pki.Bundle.of(self.dir)
        await join.join(pki.JoinToken.parse(token), [RPC], bundle, data_dir=str(self.dir),
                        name=self.name, node_id=self.node_id, ips=[])
        self.tls = TlsConfig.of_bundle(bundle)

    def registration(self) -> node_pb2.Node:
        return node_pb2.Node(
            id=self.node_id, name=self.name, address=f"{NET}.200:1", drivers=["process"],
            attributes={"kernel.name": "linux", "driver.process": "1", "cpu.arch": "amd64"},
            capacity=job_pb2.Resources(cpu_millicores=1_000_000, memory_mb=1_000_000))

    def _channel(self, addr: str, options: list[tuple[str, Any]]) -> grpc.aio.Channel:
        return open_channel(addr, self.tls, options, server=pki.role_dns("controller"))

    def start(self) -> None:
        self.link = ControllerLink(self.registration, lambda: [RPC], self._desired,
                                   self._current, connect=self._channel, backoff_max=1.0)
        self.link.start()

    async def leave(self) -> None:
        """Its process dies: the stream ends, nothing is said."""
        if self.link is not None:
            await self.link.stop()

    def _current(self) -> list[node_pb2.Allocation]:
        return [_report(a.id, RUNNING) for a in self.allocs.values()]

    async def _desired(self, d: DesiredSet) -> None:
        want = {a.id: a for a in d.allocations}
        out = [_report(aid, RUNNING) for aid in want if aid not in self.allocs]
        out += [_report(aid, COMPLETE) for aid in self.allocs if aid not in want]
        self.allocs = want
        self.epochs.add(d.epoch)
        self.applied_version = d.version
        if out and self.link is not None:
            self.link.report(out)


def _report(aid: str, status: node_pb2.ClientStatus.ValueType) -> node_pb2.Allocation:
    state = "running" if status == RUNNING else "dead"
    return node_pb2.Allocation(id=aid, client_status=status,
                               tasks={"main": node_pb2.TaskState(state=state)})


# --- one store's month ----------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    versions: int
    rss_mb: float
    buckets: list[tuple[float, float]]
    records: float


@dataclass
class Soak:
    m: Month
    store: str
    workdir: Path
    etcd: list[str] = field(default_factory=list)
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    agents: list[SimAgent] = field(default_factory=list)
    gone: list[SimAgent] = field(default_factory=list)
    versions: int = 0
    placed: int = 0
    stopped: int = 0
    joins: int = 0
    samples: list[Sample] = field(default_factory=list)
    rss: list[tuple[int, float]] = field(default_factory=list)
    """(versions made, the controller's resident MB), every RSS_EVERY seconds of the month."""

    async def run(self) -> dict[str, Any]:
        self.ctl = ControllerProcess(self.workdir, self.m, self.store, self.etcd)
        self.ctl.start()
        try:
            await self._wait_files()
            self.stub = self._stub()
            await self._agents_up()
            started = time.monotonic()
            await self._jobs()
            await self._save(self.workdir / "start.snap")  # the store as the month starts
            await self._churn()
            churn_s = time.monotonic() - started
            await self._settle()
            reschedule_s = await self._reschedule()
            ratio, kept, needed = await self._rows()
            paired = await paired_commit_p99(self.workdir / "start.snap",
                                             self.workdir / "end.snap", self.workdir, self.store)
            restore_ok, restore_detail = await self._restore()
            return self._figures(churn_s, reschedule_s, ratio, kept, needed, restore_ok,
                                 restore_detail, paired)
        finally:
            for a in self.agents:
                await a.leave()
            if hasattr(self, "channel"):
                await self.channel.close()
            self.ctl.stop()

    # --- setting up ----------------------------------------------------------------------------

    async def _wait_files(self) -> None:
        op = self.ctl.operator
        await until("the controller's bootstrap", lambda: (op / "management.token").exists()
                    and (op / "join-agent.token").exists(), 60, self.ctl)
        self.token = (op / "join-agent.token").read_text().strip()

    def _stub(self) -> controller_pb2_grpc.ControllerServiceAsyncStub:
        op = self.ctl.operator
        tls = TlsConfig(ca_file=str(op / "ca.pem"), cert_file=str(op / "cli.pem"),
                        key_file=str(op / "cli-key.pem"))
        self.channel = connect(RPC, 60.0, tls, (op / "management.token").read_text().strip())
        return controller_pb2_grpc.ControllerServiceStub(self.channel)

    async def _join_one(self) -> SimAgent:
        a = SimAgent(self.joins, self.workdir)
        self.joins += 1
        await a.join(self.token)
        a.start()
        self.agents.append(a)
        return a

    async def _agents_up(self) -> None:
        for _ in range(self.m.live_nodes):
            await self._join_one()
        await until("the simulated agents registered", lambda: self._ready_sync() >= len(
            self.agents), 60, self.ctl)
        progress(f"[{self.store}] controller and {len(self.agents)} simulated agents up")

    def _ready_sync(self) -> int:
        return sum(1 for a in self.agents if a.link is not None and a.link.connected)

    async def _jobs(self) -> None:
        for i in range(self.m.jobs):
            job = parse_job(JOB.format(name=f"soak-{i:02d}", count=0, round=0))
            await self.stub.RegisterJob(controller_pb2.RegisterJobRequest(job=job))
            self.versions += 1

    # --- the month ---------------------------------------------------------------------------------

    async def _churn(self) -> None:
        m = self.m
        every = max(1, m.versions // max(m.nodes - m.live_nodes, 1))
        per_job: dict[int, dict[str, int]] = {i: {"count": 0, "round": 0}
                                               for i in range(m.jobs)}
        lock = asyncio.Lock()
        next_sample = 0
        step = max(1, m.versions // 50)
        self._sample()
        watch = asyncio.create_task(self._watch_rss())

        async def worker(w: int) -> None:
            nonlocal next_sample
            mine = [i for i in range(m.jobs) if i % m.workers == w]
            while self.versions < m.versions:
                i = self.rng.choice(mine)
                await self._op(i, per_job[i])
                async with lock:
                    if self.versions // every > self.joins - m.live_nodes \
                            and self.joins < m.nodes:
                        await self._replace_a_node()
                    if self.versions >= next_sample:
                        next_sample += step
                        s = self._sample()
                        progress(f"[{self.store}] {self.versions:,} versions, {self.placed:,} "
                                 f"placed, {self.joins:,} nodes joined, controller RSS "
                                 f"{s.rss_mb:.0f} MB, {s.records:,.0f} records")
        try:
            await asyncio.gather(*(worker(w) for w in range(m.workers)))
        finally:
            watch.cancel()
        self._sample()

    async def _watch_rss(self) -> None:
        """Read the controller's resident memory every RSS_EVERY seconds (until cancelled)."""
        while True:
            self.rss.append((self.versions, self.ctl.rss_mb()))
            await asyncio.sleep(RSS_EVERY)

    async def _op(self, i: int, job: dict[str, int]) -> None:
        name = f"soak-{i:02d}"
        roll = self.rng.random()
        try:
            if roll < 0.1 and job["count"]:  # an update: every allocation replaced
                job["round"] += 1
                resp = await self.stub.RegisterJob(controller_pb2.RegisterJobRequest(
                    job=parse_job(JOB.format(name=name, count=job["count"], round=job["round"]))))
            elif roll < 0.2:  # a revert to the version before the last
                hist = await self.stub.JobHistory(controller_pb2.JobHistoryRequest(name=name))
                if len(hist.versions) < 3:
                    return
                target = hist.versions[2].job
                resp = await self.stub.RevertJob(controller_pb2.RevertJobRequest(
                    name=name, version=target.version))
                job["count"] = target.groups[0].count
                job["round"] = int(target.groups[0].tasks[0].env.get("ROUND", "0"))
            else:  # a scale: up to the group size, or down to nothing
                job["count"] = 0 if job["count"] else self.m.group_size
                resp = await self.stub.ScaleJob(controller_pb2.ScaleJobRequest(
                    name=name, group="app", count=job["count"]))
        except grpc.aio.AioRpcError as e:
            progress(f"[{self.store}] {name}: {e.code().name}: {e.details()}")
            return
        if resp.changed:
            self.versions += 1
        self.placed += sum(1 for c in resp.plan.changes if c.kind in ("create", "replace"))
        self.stopped += sum(1 for c in resp.plan.changes if c.kind == "stop")

    async def _replace_a_node(self) -> None:
        """The oldest live node leaves for good; a new one joins."""
        old = self.agents.pop(0)
        await old.leave()
        self.gone.append(old)
        await self._join_one()

    def _sample(self) -> Sample:
        metrics = scrape()
        records = sum(v for k, v in metrics.items()
                      if k.startswith("orch_controller_store_records{")
                      and 'kind="events"' not in k)
        s = Sample(time.monotonic(), self.versions, self.ctl.rss_mb(), commit_buckets(metrics),
                   records)
        self.samples.append(s)
        return s

    # --- after the month ------------------------------------------------------------------------------

    async def _settle(self) -> None:
        """Wait for the scheduling queue to drain and for the longest threshold to pass (and
        a collection after it)."""
        await until("the scheduling queue to drain", lambda: scrape().get(
            "orch_controller_eval_queue", 1) == 0, 120, self.ctl)
        wait = max(24 * 3600.0, 4 * 3600.0) * self.m.factor + 2 * max(300 * self.m.factor, 1.0)
        progress(f"[{self.store}] churn done; waiting {wait:.1f} s for the longest threshold "
                 "and a collection")
        await asyncio.sleep(wait + 1.0)

    async def _node_allocs(self, node_id: str) -> list[node_pb2.Allocation]:
        resp = await self.stub.ListAllocations(controller_pb2.ListAllocationsRequest(
            node_id=node_id))
        return [a for a in resp.allocations if a.desired_status == RUN
                and a.client_status not in TERMINAL]

    async def _reschedule(self) -> float:
        """A node with allocations loses its agent: seconds until they all run elsewhere."""
        victim = None
        for cand in self.agents:
            if await self._node_allocs(cand.node_id):
                victim = cand
                break
        if victim is None:  # every job scaled to nothing: scale one up
            await self.stub.ScaleJob(controller_pb2.ScaleJobRequest(
                name="soak-00", group="app", count=self.m.group_size))
            await asyncio.sleep(1.0)
            for cand in self.agents:
                if await self._node_allocs(cand.node_id):
                    victim = cand
                    break
        assert victim is not None
        moving = {a.id: (a.job, a.index) for a in await self._node_allocs(victim.node_id)}
        t0 = time.monotonic()
        await victim.leave()
        self.agents.remove(victim)
        self.gone.append(victim)

        async def replaced() -> bool:
            resp = await self.stub.ListAllocations(controller_pb2.ListAllocationsRequest())
            live = [a for a in resp.allocations if a.desired_status == RUN
                    and a.client_status == RUNNING and a.node_id != victim.node_id]
            have = {(a.job, a.index) for a in live}
            return all(slot in have for slot in moving.values())
        deadline = t0 + 60
        while not await replaced():
            if time.monotonic() > deadline:
                return math.inf
            await asyncio.sleep(0.05)
        took = time.monotonic() - t0
        progress(f"[{self.store}] a dead node's {len(moving)} allocations ran elsewhere after "
                 f"{took:.2f} s (node grace {NODE_GRACE:g} s)")
        return took

    async def _save(self, path: Path) -> None:
        with path.open("wb") as f:
            async for chunk in self.stub.SaveSnapshot(controller_pb2.SaveSnapshotRequest()):
                f.write(chunk.data)

    async def _rows(self) -> tuple[float, int, int]:
        snap_file = self.workdir / "end.snap"
        await self._save(snap_file)
        _, snap = open_file(snap_file, self.workdir)
        kept, needed = rows_kept_and_needed(snap, self.m.factor)
        ratio = kept / max(needed, 1)
        progress(f"[{self.store}] the store keeps {kept:,} records; the live objects need "
                 f"{needed:,} (x{ratio:.2f})")
        return ratio, kept, needed

    async def _restore(self) -> tuple[bool, str]:
        """Save, wipe the store, start the controller from the snapshot: the same state, and
        every agent follows it."""
        snap_file = self.workdir / "backup.snap"
        before = await self._state()
        await self._save(snap_file)
        # the cluster goes on after the backup: the agents apply sets of higher versions
        for count in (self.m.group_size, 0, self.m.group_size):
            await self.stub.ScaleJob(controller_pb2.ScaleJobRequest(
                name="soak-01", group="app", count=count))
        await asyncio.sleep(1.0)
        self.ctl.stop()
        if self.store == "sqlite":
            for p in self.ctl.data_dir.glob("controller.db*"):
                p.unlink()
        else:
            from controller.store.etcd_client import EtcdClient, prefix_end
            client = EtcdClient(self.etcd)
            await client.open()
            try:
                root = f"{ETCD_PREFIX}/".encode()
                await client.delete(root, prefix_end(root))
            finally:
                await client.close()
        epochs = {a.node_id: max(a.epochs) for a in self.agents}
        versions = {a.node_id: a.applied_version for a in self.agents}
        self.ctl.start("--restore-snapshot", str(snap_file))
        await until("the restored controller", lambda: _answers(), 60, self.ctl)
        after = await self._state()
        if after != before:
            diff = {k for k in before if before[k] != after.get(k)}
            return False, f"the restored state differs: {sorted(diff)[:5]}"

        async def followed() -> bool:
            resp = await self.stub.ListAllocations(controller_pb2.ListAllocationsRequest())
            want: dict[str, set[str]] = {}
            for a in resp.allocations:
                if a.desired_status == RUN:
                    want.setdefault(a.node_id, set()).add(a.id)
            return all(max(a.epochs) > epochs[a.node_id] and set(a.allocs) ==
                       want.get(a.node_id, set()) for a in self.agents)
        deadline = time.monotonic() + 60
        while not await followed():
            if time.monotonic() > deadline:
                return False, "the agents did not follow the restored desired sets in 60 s"
            await asyncio.sleep(0.2)
        lower = sum(1 for a in self.agents if a.applied_version < versions[a.node_id])
        progress(f"[{self.store}] restored: the same state; {len(self.agents)} agents follow it "
                 f"({lower} applied a lower version, of the newer epoch)")
        return True, f"{lower} of {len(self.agents)} agents applied a lower version"

    async def _state(self) -> dict[str, Any]:
        jobs = await self.stub.ListJobs(controller_pb2.ListJobsRequest())
        out: dict[str, Any] = {}
        for j in jobs.jobs:
            hist = await self.stub.JobHistory(controller_pb2.JobHistoryRequest(name=j.name))
            out[f"job/{j.name}"] = sorted(v.version for v in hist.versions)
        allocs = await self.stub.ListAllocations(controller_pb2.ListAllocationsRequest(
            include_stopped=True))
        for a in allocs.allocations:
            out[f"alloc/{a.id}"] = (a.node_id, a.desired_status, a.job_version)
        return out

    # --- figures ---------------------------------------------------------------------------------------

    def _figures(self, churn_s: float, reschedule_s: float, ratio: float, kept: int,
                 needed: int, restore_ok: bool, restore_detail: str,
                 paired: tuple[float, float]) -> dict[str, Any]:
        half = [(v, mb) for v, mb in self.rss if v >= self.m.versions / 2]
        slope = _slope([v for v, _ in half], [mb for _, mb in half]) * 10_000
        scraped = [s for s in self.samples if s.versions >= self.m.versions / 2]
        slope_scraped = _slope([s.versions for s in scraped], [s.rss_mb for s in scraped]) * 10_000
        tenths = p99_by_tenth(self.samples, self.m.versions)
        start, end = statistics.median(tenths[:3]), statistics.median(tenths[-3:])
        return {
            "store": self.store, "versions": self.versions, "allocations_placed": self.placed,
            "allocations_stopped": self.stopped, "nodes_joined": self.joins,
            "churn_s": churn_s, "month_s": self.m.month_s,
            "store_rows_end": kept, "store_rows_live": needed,
            "store_rows_end_over_live": ratio,
            "rss_mb_start": self.samples[0].rss_mb, "rss_mb_end": self.samples[-1].rss_mb,
            "rss_slope_mb_per_10k_versions": slope, "rss_readings_second_half": len(half),
            "rss_slope_at_scrapes": slope_scraped,
            "commit_p99_start_s": start, "commit_p99_end_s": end,
            "commit_p99_by_tenth_s": tenths,
            "commit_p99_ratio_end_over_start": end / start if start else math.nan,
            "commit_p99_paired_start_s": paired[0], "commit_p99_paired_end_s": paired[1],
            "commit_p99_ratio_end_over_start_paired":
                paired[1] / paired[0] if paired[0] else math.nan,
            "reschedule_after_churn_s": reschedule_s,
            "reschedule_goal_s": NODE_GRACE + 1.0,
            "reschedule_goal_met": reschedule_s <= NODE_GRACE + 1.0,
            "restore_roundtrip_ok": restore_ok, "restore_detail": restore_detail,
        }


PAIRED_ROUNDS = 160
"""Rounds of the paired commit measurement: each gives both stores a block of commits
(4,000 commits each in all: a p99 of fewer moves with the machine's hiccups)."""
PAIRED_BLOCK = 25
"""Commits in a block (the stores take turns, the first one alternating)."""


async def paired_commit_p99(start: Path, end: Path, workdir: Path, store: str = "sqlite",
                            rounds: int = PAIRED_ROUNDS) -> tuple[float, float]:
    """The store's commit p99 (seconds) at the month's start and at its end, side by side:
    the store as it was when the month started and as it is at the end (each from its
    snapshot: SQLite's database file; for etcd, a member of its own started from etcd's
    snapshot, the keys with their history) take the same commits in alternating blocks, so
    that a shared machine's load falls on both alike (the controller's own histogram
    compares tenths of the month minutes apart, whose load differs)."""
    times: tuple[list[float], list[float]] = ([], [])
    async with contextlib.AsyncExitStack() as stack:
        stores = [await stack.enter_async_context(_snapshot_store(snap, store, workdir, i))
                  for i, snap in enumerate((start, end))]
        for r in range(rounds):
            for which in ((0, 1) if r % 2 == 0 else (1, 0)):
                for _ in range(PAIRED_BLOCK):
                    changes = _probe_commit(len(times[which]))
                    t0 = time.perf_counter()
                    await stores[which].commit(changes)
                    times[which].append(time.perf_counter() - t0)
    p99 = [sorted(t)[int(0.99 * (len(t) - 1))] for t in times]
    return p99[0], p99[1]


@contextlib.asynccontextmanager
async def _snapshot_store(snap: Path, store: str, workdir: Path,
                          i: int) -> AsyncIterator[Store]:
    """A store of ``store``'s kind holding what snapshot file ``snap`` holds, open."""
    payload = workdir / f"paired-{snap.stem}.{'db' if store == 'sqlite' else 'etcd'}"
    with snap.open("rb") as f, payload.open("wb") as out:
        f.readline()  # the header: open_file checked the end's; the payload is the store's
        shutil.copyfileobj(f, out)
    with contextlib.ExitStack() as members:
        opened: Store
        if store == "sqlite":
            opened = SQLiteStore(payload)
        else:
            from bench.etcd_cluster import EtcdCluster
            from controller.store.etcd import EtcdStore
            home = workdir / f"paired-{snap.stem}"
            home.mkdir()
            cluster = members.enter_context(contextlib.closing(
                EtcdCluster(1, first_host=70 + i, net=NET, dir=home)))
            cluster.restore(payload)
            cluster.start()
            opened = EtcdStore(cluster.endpoints, prefix=ETCD_PREFIX)
        await opened.open()
        try:
            yield opened
        finally:
            await opened.close()


def _probe_commit(k: int) -> Changes:
    """A commit like the month's: an evaluation's placements (allocations of a few hundred
    bytes, written again as they cycle over 400 ids) with their events."""
    allocs = []
    for i in range(8):
        a = _report(f"probe-{(8 * k + i) % 400:04d}", RUNNING)
        a.name, a.namespace, a.job, a.node_id = f"probe.app[{i}]", "default", "probe", "n" * 36
        a.description = "placed on a node: new" + " " * 200
        allocs.append(a)
    events = [controller_pb2.Event(topic="allocation", type="AllocationPlaced", key=a.id,
                                   message=f"{a.name} placed", allocation=a) for a in allocs]
    ev = controller_pb2.Evaluation(id=str(uuid.uuid4()), namespace="default", job="probe",
                                   triggered_by="job-register", status="complete")
    return Changes(put_allocs=allocs, events=events, put_evaluations=[ev])


def p99_by_tenth(samples: list[Sample], versions: int) -> list[float]:
    """The commit p99 of each tenth of the month (by versions made)."""
    out = []
    for k in range(10):
        lo, hi = versions * k / 10, versions * (k + 1) / 10
        inside = [s for s in samples if lo <= s.versions <= hi] or samples[-2:]
        out.append(quantile(inside[0].buckets, inside[-1].buckets, 0.99))
    return out


def rows_kept_and_needed(snap: StoreSnapshot, factor: float) -> tuple[int, int]:
    """(records the store keeps, records the live objects need), as the docstring says."""
    kept = (sum(len(v) for v in snap.jobs.values()) + len(snap.allocs) + len(snap.nodes)
            + len(snap.deployments) + len(snap.evaluations) + len(snap.meta))
    needed = 0
    newest_ns = max((n.status_time_ns for n in snap.nodes.values()), default=0)
    for versions in snap.jobs.values():
        keep = {v.version for v in versions[-MAX_VERSIONS:]}
        stable = [v.version for v in versions if v.stable and not v.stop]
        if stable:
            keep.add(stable[-1])
        needed += len(keep)
    jobs = {(ns or "default", name) for ns, name in snap.jobs}
    needed += len({(d.namespace or "default", d.job) for d in snap.deployments.values()
                   if (d.namespace or "default", d.job) in jobs})
    needed += len({(e.namespace or "default", e.job) for e in snap.evaluations
                   if (e.namespace or "default", e.job) in jobs})
    needed += sum(1 for a in snap.allocs.values() if a.desired_status == RUN)
    node_window = int(24 * 3600 * factor * 1e9)
    live_nodes = {n.id for n in snap.nodes.values() if n.status == READY
                  or newest_ns - n.status_time_ns < node_window}
    needed += len(live_nodes)
    needed += sum(1 for k in snap.meta if not k.startswith("node-key/")
                  or k[len("node-key/"):] in live_nodes)
    return kept, needed


def _slope(xs: list[int], ys: list[float]) -> float:
    if len(xs) < 2:
        return math.nan
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def _answers() -> bool:
    try:
        scrape()
        return True
    except OSError:
        return False


async def until(what: str, check: Callable[[], bool], within: float,
                ctl: ControllerProcess | None = None) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            if check():
                return
        except OSError:
            pass
        if ctl is not None and not ctl.alive():
            raise RuntimeError(f"the controller exited while waiting for {what}; see {ctl.log}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {within:g} s")
        await asyncio.sleep(0.1)


# --- running ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def etcd_members(store: str, workdir: Path) -> Iterator[list[str]]:
    if store != "etcd":
        yield []
        return
    from bench.etcd_cluster import EtcdCluster
    with EtcdCluster(1, first_host=60, net=NET) as cluster:
        yield cluster.endpoints


async def one_store(m: Month, store: str) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"orch-soak-{store}-"))
    try:
        with etcd_members(store, workdir) as endpoints:
            return await Soak(m, store, workdir, etcd=endpoints).run()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def report(results: dict[str, dict[str, Any]]) -> str:
    heads = ["store", "versions", "placed", "nodes", "churn s", "rows/live", "RSS MB/10k ver",
             "commit p99 end/start", "paired", "reschedule s", "restore"]
    rows = [[r["store"], r["versions"], r["allocations_placed"], r["nodes_joined"],
             r["churn_s"], r["store_rows_end_over_live"], r["rss_slope_mb_per_10k_versions"],
             r["commit_p99_ratio_end_over_start"], r["commit_p99_ratio_end_over_start_paired"],
             r["reschedule_after_churn_s"],
             r["restore_roundtrip_ok"]] for r in results.values()]
    return table("soak: a month of churn, accelerated (goals: rows/live <= 1.5, RSS slope <= 1 "
                 f"MB, commit p99 ratio <= 1.2, reschedule <= {NODE_GRACE + 1:g} s, restore "
                 "true)", heads, rows)


def main(argv: list[str] | None = None) -> int:
    logging.getLogger("agent").setLevel(logging.ERROR)  # the agents' reconnections: expected
    logging.getLogger("join").setLevel(logging.ERROR)
    ap = argparse.ArgumentParser(prog="bench.soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run of a few hundred versions")
    ap.add_argument("--store", choices=("sqlite", "etcd", "both"), default="both")
    ap.add_argument("--month", type=float, default=None, metavar="SECONDS",
                    help="real seconds one simulated month lasts (default 300; --quick 20)")
    ap.add_argument("--json", action="store_true", help="end with one JSON line")
    args = ap.parse_args(argv)
    m = QUICK if args.quick else Month()
    if args.month:
        m = Month(**{**m.__dict__, "month_s": args.month})
    stores = ["sqlite", "etcd"] if args.store == "both" else [args.store]
    if "etcd" in stores and (shutil.which("etcd") is None or shutil.which("etcdctl") is None):
        print("bench.soak: etcd or etcdctl is missing (apt-get install etcd-server "
              "etcd-client)", file=sys.stderr)
        return 2
    results: dict[str, dict[str, Any]] = {}
    for store in stores:
        progress(f"[{store}] a month of {m.versions:,} versions, about {m.allocations:,} "
                 f"allocations, {m.nodes:,} nodes, in {m.month_s:g} s")
        results[store] = asyncio.run(one_store(m, store))
    print(report(results))
    if args.json:
        print(json.dumps({"quick": args.quick, "month_s": m.month_s,
                          "stores": {k: {kk: _finite(vv) for kk, vv in v.items()}
                                     for k, v in results.items()}}))
    return 0


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


if __name__ == "__main__":
    raise SystemExit(main())
