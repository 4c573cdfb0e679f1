"""A node simulator (as Nomad's ``nomad-nodesim``): thousands of agents that run nothing.

    python -m bench.nodesim --controller 127.0.0.1:4647 \\
        --join-token-file DATA/pki/operator/join-agent.token --nodes 5000
    python -m bench.nodesim ... --processes 4 --run-delay 1 --usage-interval 10

Each simulated node is a real member of the cluster, as far as the controller can tell:
it joins with the agent join token (``orch.join``: its own key, a certificate naming its
node id), registers with its own node id, attributes and capacity, and holds one
``NodeService/Connect`` stream to the leader through the agent's own client code
(``agent.controller_link.ControllerLink`` over mTLS, the controller's role checked).
What it does not do is run anything: its driver reports a new allocation pending at
once (a ``Received`` task event, as the agent does; the link holds it a little for the
next status) and running ``--run-delay`` seconds later (``Started``), healthy for its
deployment once it has run for its group's ``min_healthy_time`` (as the agent judges
it), an allocation taken out of its desired set complete, and every
``--usage-interval`` seconds the CPU and memory of the allocations of autoscaled groups,
as an agent's usage report does. Gossip is off (the gossip benchmark measures it at scale).

The nodes are split over ``--processes`` worker processes (asyncio under uvloop), each
joining a few nodes at a time. A worker reads commands on its standard input, one a
line, and answers with one JSON object a line on its standard output:

    kill ID [ID ...]     the nodes' streams end at once, as if their agents died (they
                         stay dead); answered {"killed": n}
    stats                {"nodes", "connected", "running", "messages", "full_sets", ...}
    quit                 the worker stops

Workers get SIGKILL when their parent dies (``setpriv --pdeathsig``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from agent.controller_link import ControllerLink
from agent.desired import DesiredSet
from orch import join, pki
from orch.jobspec.model import UpdateStrategy, group_from_proto
from orch.tls import TlsConfig, open_channel
from orch.v1 import controller_pb2, job_pb2, node_pb2

ROOT = Path(__file__).resolve().parent.parent
PENDING, RUNNING, COMPLETE = (node_pb2.CLIENT_STATUS_PENDING, node_pb2.CLIENT_STATUS_RUNNING,
                              node_pb2.CLIENT_STATUS_COMPLETE)
RUN = node_pb2.DESIRED_STATUS_RUN
HEALTH_PENDING, HEALTHY = node_pb2.ALLOC_HEALTH_PENDING, node_pb2.ALLOC_HEALTH_HEALTHY
JOINS_AT_ONCE = 8
"""Joins in flight per worker (each is a TLS handshake and a commit on the controller)."""
CONNECTS_AT_ONCE = 64
"""Streams being opened at once per worker (each is a TLS handshake on the controller)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SimConfig:
    """What every simulated node of a run shares."""

    controllers: tuple[str, ...]
    """Controller gRPC addresses (the link follows the leader from there)."""
    join_token: str
    data_dir: Path
    """Each node keeps its key and certificate in ``data_dir/<node id>/pki``."""
    prefix: str = "sim"
    """Node ids and names are ``<prefix>-<index>`` (five digits)."""
    cpu_millicores: int = 16_000
    memory_mb: int = 32_768
    datacenters: int = 1
    """Nodes go round-robin into dc1..dcN."""
    racks: int = 20
    """``meta.rack``: r0..r(N-1), round-robin."""
    run_delay: float = 1.0
    """Seconds from an allocation's arrival to its report as running."""
    usage_interval: float = 10.0
    """Seconds between usage reports (0: none); the agent's default is 10."""
    insecure: bool = False
    """Plain text (a controller on loopback without TLS); no join."""


def node_id(prefix: str, i: int) -> str:
    return f"{prefix}-{i:05d}"


class SimNode:
    """One simulated agent: its registration, its stream (the agent's ControllerLink) and a
    driver that runs nothing."""

    def __init__(self, cfg: SimConfig, index: int, stats: Stats) -> None:
        self.cfg = cfg
        self.id = node_id(cfg.prefix, index)
        self.stats = stats
        self.dir = cfg.data_dir / self.id
        self.node = node_pb2.Node(
            id=self.id, name=self.id, address="127.0.0.1:9",  # nothing to proxy logs from
            datacenter=f"dc{index % cfg.datacenters + 1}", drivers=["process"],
            attributes={"kernel.name": "linux", "os.name": "debian", "os.version": "12",
                        "cpu.arch": "amd64", "cpu.numcores": str(cfg.cpu_millicores // 1000),
                        "driver.process": "1", "orch.privileged": "false",
                        "orch.host_network": "false", "unique.hostname": self.id},
            meta={"rack": f"r{index % cfg.racks}"},
            capacity=job_pb2.Resources(cpu_millicores=cfg.cpu_millicores,
                                       memory_mb=cfg.memory_mb))
        self._update: dict[tuple[str, str, int, str], UpdateStrategy] = {}
        """(namespace, job, version, group) -> its update block (min_healthy_time)."""
        self.status: dict[str, node_pb2.Allocation] = {}
        """What this node reports of each allocation it was given (the newest report)."""
        self.started: dict[str, float] = {}
        """When each allocation started running (its CPU time counts from then)."""
        self.scaled: set[str] = set()
        """Allocations whose group has an enabled scaling policy (their usage is reported)."""
        self.tls: TlsConfig | None = None
        self.link: ControllerLink | None = None
        self.dead = False

    async def join(self) -> None:
        """Join the cluster (once: the certificate stays in this node's data dir)."""
        if self.cfg.insecure:
            return
        bundle = pki.Bundle.of(self.dir)
        if not bundle.complete():
            await join.join(pki.JoinToken.parse(self.cfg.join_token), list(self.cfg.controllers),
                            bundle, data_dir=str(self.dir), name=self.id, node_id=self.id)
        self.tls = TlsConfig.of_bundle(bundle)

    def start(self) -> None:
        self.link = ControllerLink(lambda: self.node, lambda: list(self.cfg.controllers),
                                   self._on_desired, lambda: list(self.status.values()),
                                   connect=self._channel)
        self.link.start()

    def _channel(self, addr: str, options: list[tuple[str, Any]]) -> grpc.aio.Channel:
        return open_channel(addr, self.tls, options, server=pki.role_dns("controller"))

    async def kill(self) -> None:
        """The stream ends at once, as when the agent's process dies; the node stays dead."""
        self.dead = True
        if self.link is not None:
            await self.link.stop()
        self.stats.running -= sum(1 for s in self.status.values() if s.client_status == RUNNING)
        self.status.clear()

    # --- the driver --------------------------------------------------------------------------

    async def _on_desired(self, d: DesiredSet) -> None:
        """What the last message changed: new allocations start, those that left stop."""
        st = self.stats
        st.messages += 1
        if d.full:
            st.full_sets += 1
            want = {a.id: a for a in d.allocations if a.desired_status == RUN}
            new = [a for i, a in want.items() if i not in self.status]
            gone = [i for i in self.status if i not in want]
        else:
            new = [a for a in (d.get(i) for i in d.changed) if a is not None
                   and a.desired_status == RUN and a.id not in self.status]
            gone = [i for i in d.removed if i in self.status]
        loop = asyncio.get_running_loop()
        now_ns = time.time_ns()
        if new:
            received = []
            for a in new:
                s = node_pb2.Allocation(id=a.id, client_status=PENDING, job_version=a.job_version,
                                        modify_time_ns=now_ns, deployment_health=HEALTH_PENDING)
                for t in a.spec.tasks:
                    s.tasks[t.name].CopyFrom(node_pb2.TaskState(state="pending", events=[
                        node_pb2.TaskEvent(time_ns=now_ns, type="Received",
                                           message="Task received by node")]))
                self.status[a.id] = s
                received.append(s)
            assert self.link is not None
            self.link.report(received)
            self.scaled.update(a.id for a in new
                               if a.spec.HasField("scaling") and a.spec.scaling.enabled)
            delay = self.cfg.run_delay * (0.75 + random.random() / 2)
            loop.call_later(delay, self._running, [(a.id, self._min_healthy_time(a))
                                                   for a in new])
        if gone:
            done = []
            for i in gone:
                old = self.status.pop(i)
                self.started.pop(i, None)
                self.scaled.discard(i)
                if old.client_status == RUNNING:
                    st.running -= 1
                done.append(node_pb2.Allocation(id=i, client_status=COMPLETE,
                                                job_version=old.job_version, modify_time_ns=now_ns,
                                                deployment_health=old.deployment_health))
            assert self.link is not None
            self.link.report(done)

    def _min_healthy_time(self, a: node_pb2.Allocation) -> float:
        key = (a.namespace, a.job, a.job_version, a.group)
        update = self._update.get(key)
        if update is None:
            update = self._update[key] = group_from_proto(a.spec).update
        return update.min_healthy_time

    def _running(self, allocs: list[tuple[str, float]]) -> None:
        """The allocations run (their tasks pass, having no checks): healthy at once when
        their group's min_healthy_time is 0, else once it has passed (as the agent's
        ``alloc_health`` judges)."""
        if self.dead or self.link is None:
            return
        now_ns = time.time_ns()
        out = []
        later: dict[float, list[str]] = {}
        for i, min_healthy in allocs:
            old = self.status.get(i)
            if old is None or old.client_status != PENDING:
                continue
            s = node_pb2.Allocation()
            s.CopyFrom(old)
            s.client_status, s.checks_healthy, s.modify_time_ns = RUNNING, True, now_ns
            s.deployment_health = HEALTH_PENDING if min_healthy > 0 else HEALTHY
            for t in s.tasks.values():
                t.state, t.started_at_ns, t.healthy = "running", now_ns, True
                t.events.add(time_ns=now_ns, type="Started",
                             message="Task started by the process driver")
            self.status[i] = s
            self.started[i] = now_ns / 1e9
            out.append(s)
            if min_healthy > 0:
                later.setdefault(min_healthy, []).append(i)
        self.stats.running += len(out)
        self.link.report(out, {i: delay for delay, ids in later.items() for i in ids})
        loop = asyncio.get_running_loop()
        for delay, ids in later.items():
            loop.call_later(delay, self._healthy, ids)

    def _healthy(self, ids: list[str]) -> None:
        """These allocations have run for their min_healthy_time: healthy."""
        if self.dead or self.link is None:
            return
        now_ns = time.time_ns()
        out = []
        for i in ids:
            old = self.status.get(i)
            if old is None or old.client_status != RUNNING or old.deployment_health == HEALTHY:
                continue
            s = node_pb2.Allocation()
            s.CopyFrom(old)
            s.deployment_health, s.modify_time_ns = HEALTHY, now_ns
            self.status[i] = s
            out.append(s)
        self.link.report(out)

    def report_usage(self, now: float) -> None:
        """As the agent: the usage of the running allocations of scaled groups, if any."""
        if self.dead or self.link is None or not self.scaled:
            return
        report = controller_pb2.UsageReport(time_ns=int(now * 1e9))
        for i in self.scaled:
            since = self.started.get(i)
            if since is not None:
                report.allocations.add(alloc_id=i, cpu_seconds=(now - since) * 0.001,
                                       memory_bytes=4 << 20)
        if report.allocations:
            self.link.usage(report)


@dataclass(slots=True)
class Stats:
    nodes: int = 0
    joined: int = 0
    running: int = 0
    messages: int = 0
    full_sets: int = 0
    join_s: float = 0.0
    connect_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Worker:
    """Some of the simulated nodes, in this process."""

    def __init__(self, cfg: SimConfig, first: int, count: int) -> None:
        self.cfg = cfg
        self.stats = Stats(nodes=count)
        self.nodes = {n.id: n for n in (SimNode(cfg, i, self.stats)
                                        for i in range(first, first + count))}

    def connected(self) -> int:
        return sum(1 for n in self.nodes.values() if n.link is not None and n.link.connected)

    async def start(self) -> None:
        t0 = time.monotonic()
        gate = asyncio.Semaphore(JOINS_AT_ONCE)

        async def one(n: SimNode) -> None:
            async with gate:
                for attempt in range(5):
                    try:
                        await n.join()
                        break
                    except Exception:
                        if attempt == 4:
                            raise
                        await asyncio.sleep(0.5 * (attempt + 1))
                self.stats.joined += 1

        await asyncio.gather(*(one(n) for n in self.nodes.values()))
        self.stats.join_s = time.monotonic() - t0
        t0 = time.monotonic()
        for batch in _chunks(list(self.nodes.values()), CONNECTS_AT_ONCE):
            for n in batch:
                n.start()
            while True:  # the next few once these hold their streams
                if all(n.link is not None and n.link.connected for n in batch):
                    break
                await asyncio.sleep(0.02)
        self.stats.connect_s = time.monotonic() - t0
        if self.cfg.usage_interval > 0:
            asyncio.get_running_loop().create_task(self._usage())

    async def _usage(self) -> None:
        """Every node reports its usage once per interval, the nodes spread over it."""
        nodes = list(self.nodes.values())
        step = self.cfg.usage_interval / max(1, len(nodes))
        while True:
            for n in nodes:
                n.report_usage(time.time())
                await asyncio.sleep(step)

    async def kill(self, ids: Sequence[str]) -> int:
        found = [self.nodes[i] for i in ids if i in self.nodes and not self.nodes[i].dead]
        await asyncio.gather(*(n.kill() for n in found))
        return len(found)

    def describe(self) -> dict[str, Any]:
        s = self.stats
        return {"nodes": s.nodes, "joined": s.joined, "connected": self.connected(),
                "running": s.running, "messages": s.messages, "full_sets": s.full_sets,
                "join_s": round(s.join_s, 3), "connect_s": round(s.connect_s, 3),
                "rss_mb": round(rss_mb(os.getpid()), 1)}

    async def serve(self) -> None:
        """Start the nodes, then answer commands on stdin until ``quit`` or EOF."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        await self.start()
        _say({"started": True, **self.describe()})
        while True:
            line = (await reader.readline()).decode().strip()
            if not line or line == "quit":
                break
            cmd, *args = line.split()
            if cmd == "kill":
                _say({"killed": await self.kill(args)})
            elif cmd == "stats":
                _say(self.describe())
            else:
                _say({"error": f"unknown command {cmd!r}"})
        await asyncio.gather(*(n.link.stop() for n in self.nodes.values() if n.link is not None))


def _say(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _chunks(xs: list[SimNode], n: int) -> list[list[SimNode]]:
    return [xs[i:i + n] for i in range(0, len(xs), n)]


def rss_mb(pid: int) -> float:
    """A process's resident set (MiB), from /proc."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far (user + system), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the workers, from a parent ---------------------------------------------------------------


class Fleet:
    """``processes`` workers that together simulate ``nodes`` nodes (started by ``start``)."""

    def __init__(self, cfg: SimConfig, nodes: int, processes: int, log_dir: Path) -> None:
        self.cfg = cfg
        self.n = nodes
        self.procs: list[subprocess.Popen[bytes]] = []
        self.slices: list[tuple[int, int]] = []
        self.log_dir = log_dir
        per, extra = divmod(nodes, max(1, processes))
        first = 0
        for p in range(max(1, processes)):
            count = per + (1 if p < extra else 0)
            if count:
                self.slices.append((first, count))
            first += count

    def argv(self, first: int, count: int) -> list[str]:
        c = self.cfg
        argv = [sys.executable, "-m", "bench.nodesim", "--worker", "--first", str(first),
                "--nodes", str(count), "--data-dir", str(c.data_dir), "--prefix", c.prefix,
                "--cpu", str(c.cpu_millicores), "--memory", str(c.memory_mb),
                "--datacenters", str(c.datacenters), "--run-delay", f"{c.run_delay:g}",
                "--usage-interval", f"{c.usage_interval:g}",
                *[f"--controller={a}" for a in c.controllers]]
        if c.insecure:
            argv.append("--insecure")
        setpriv = shutil.which("setpriv")
        return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else argv

    def start(self, within: float = 600.0) -> list[dict[str, Any]]:
        """Start the workers; return once every node is connected (their first answers)."""
        self.cfg.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "ORCH_JOIN_TOKEN": self.cfg.join_token,
               "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                             if p)}
        for k, (first, count) in enumerate(self.slices):
            err = open(self.log_dir / f"nodesim-{k}.log", "ab")  # noqa: SIM115 (the child's)
            self.procs.append(subprocess.Popen(self.argv(first, count), stdin=subprocess.PIPE,
                                               stdout=subprocess.PIPE, stderr=err, env=env))
            err.close()
        return [self._answer(p, within) for p in self.procs]

    def _answer(self, p: subprocess.Popen[bytes], within: float = 60.0) -> dict[str, Any]:
        assert p.stdout is not None
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(p.stdout, selectors.EVENT_READ)
        try:
            if not sel.select(within):
                raise RuntimeError(f"node simulator worker {p.pid} did not answer in {within:g} s")
        finally:
            sel.close()
        line = p.stdout.readline()
        if not line:
            raise RuntimeError(f"node simulator worker {p.pid} ended (code {p.poll()}); "
                               f"see {self.log_dir}/nodesim-*.log")
        out: dict[str, Any] = json.loads(line)
        return out

    def _send(self, p: subprocess.Popen[bytes], line: str) -> None:
        assert p.stdin is not None
        p.stdin.write(line.encode() + b"\n")
        p.stdin.flush()

    def stats(self) -> dict[str, Any]:
        """Every worker's stats, summed (rss_mb and cpu_s too)."""
        total: dict[str, Any] = {}
        for p in self.procs:
            self._send(p, "stats")
        for p in self.procs:
            for k, v in self._answer(p).items():
                if isinstance(v, (int, float)):
                    total[k] = total.get(k, 0) + v
        total["cpu_s"] = sum(cpu_seconds(p.pid) for p in self.procs)
        return total

    def kill(self, ids: Sequence[str]) -> int:
        """End these nodes' streams at once (as their agents dying)."""
        mine: dict[int, list[str]] = {}
        for i in ids:
            k = int(i.rsplit("-", 1)[1])
            for w, (first, count) in enumerate(self.slices):
                if first <= k < first + count:
                    mine.setdefault(w, []).append(i)
        for w, found in mine.items():
            self._send(self.procs[w], "kill " + " ".join(found))
        return sum(int(self._answer(self.procs[w])["killed"]) for w in mine)

    def node_ids(self) -> list[str]:
        return [node_id(self.cfg.prefix, i) for i in range(self.n)]

    def close(self) -> None:
        for p in self.procs:
            with contextlib.suppress(OSError, ValueError):
                self._send(p, "quit")
        deadline = time.monotonic() + 10
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.1, deadline - time.monotonic()))
            if p.poll() is None:
                p.kill()
                p.wait()
            for pipe in (p.stdin, p.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        self.procs = []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.nodesim", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--controller", action="append", required=True, metavar="ADDR",
                    help="a controller's gRPC address (repeatable)")
    ap.add_argument("--join-token-file", type=Path,
                    help="the agent join token (`orchctl cluster join-token agent`); else the "
                         "env ORCH_JOIN_TOKEN")
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--processes", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--data-dir", type=Path, default=Path("/tmp/orch-nodesim"))
    ap.add_argument("--prefix", default="sim")
    ap.add_argument("--cpu", type=int, default=16_000, help="millicores each node offers")
    ap.add_argument("--memory", type=int, default=32_768, help="MB each node offers")
    ap.add_argument("--datacenters", type=int, default=1)
    ap.add_argument("--run-delay", type=float, default=1.0)
    ap.add_argument("--usage-interval", type=float, default=10.0)
    ap.add_argument("--insecure", action="store_true",
                    help="plain text to a controller on loopback without TLS (no join)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    token = (args.join_token_file.read_text().strip() if args.join_token_file
             else os.environ.get("ORCH_JOIN_TOKEN", ""))
    if not token and not args.insecure:
        ap.error("give the agent join token (--join-token-file), or --insecure")
    cfg = SimConfig(controllers=tuple(args.controller), join_token=token,
                    data_dir=args.data_dir, prefix=args.prefix, cpu_millicores=args.cpu,
                    memory_mb=args.memory, datacenters=args.datacenters,
                    run_delay=args.run_delay, usage_interval=args.usage_interval,
                    insecure=args.insecure)
    if args.worker:
        logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
        import uvloop

        uvloop.run(Worker(cfg, args.first, args.nodes).serve())
        return 0
    fleet = Fleet(cfg, args.nodes, args.processes, args.data_dir)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        t0 = time.monotonic()
        fleet.start()
        print(f"{args.nodes} simulated nodes connected in {time.monotonic() - t0:.1f} s "
              f"({len(fleet.procs)} processes); Ctrl-C stops them", flush=True)
        while True:
            time.sleep(10)
            s = fleet.stats()
            print(f"connected {s.get('connected', 0)}, running {s.get('running', 0)}, "
                  f"messages {s.get('messages', 0)}, rss {s.get('rss_mb', 0):.0f} MiB",
                  flush=True)
    except KeyboardInterrupt:
        return 0
    finally:
        fleet.close()


if __name__ == "__main__":
    sys.exit(main())
