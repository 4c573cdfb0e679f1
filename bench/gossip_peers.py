"""orch's gossip side by side with HashiCorp memberlist and kinship, on real sockets.

    ./run bench peers                            # installs the peers, then the budget run below
    python -m bench.gossip_peers                 # budget run: N = 50, 3 crashes, 3 stall runs,
                                                 #   1 min of loss, a 20 s partition (6-10 minutes)
    python -m bench.gossip_peers --full          # the full run: N = 50 and 100, 20 runs each,
                                                 #   10 min of loss, a 60 s partition (hours)
    python -m bench.gossip_peers --json          # the last line of stdout is one JSON object
    python -m bench.gossip_peers --n 100 --scenarios idle,join,crash --impls orch,memberlist

Implementations (``bench/peers/impls.py``), each at its own LAN defaults:
  orch        GossipNode with GossipConfig.lan(), probing every 0.7 s (``--orch-config
              k=v,...`` overrides fields; ``probe_interval=1,probe_timeout=0.5`` is memberlist's)
  memberlist  Debian's memberlist with DefaultLANConfig: bench/memberlist/main.go, built offline
              with Debian's Go in GOPATH mode and cached (apt-get installs both when missing)
  kinship     kinship from PyPI (Rust core, Lifeguard) with Config.lan(), without encryption
              like the other two (pip installs it when missing)
``--no-install`` installs nothing: what is missing is reported "n/a" with the reason.

Each implementation runs N members, 10 to a process, except the members that a scenario
stops or kills: those run alone, so that SIGKILL and SIGSTOP hit one member, for real. The
three run at once, each on its own port (orch 7946, memberlist 7947, kinship 7948) of the
same addresses, and start each scenario together, so that they share the machine's noise
(``--sequential`` runs them one after the other). Members are on 127.0.90.0/22: one half
on 127.0.90.x, the other on 127.0.91.x, and the members that come and go on 127.0.92.x.
As root everything runs inside a network namespace that the benchmark creates and removes
(``orch-peers-<pid>-n<N>``): loss and partitions are iptables rules there, and bytes are
counted there by iptables (IP packets, headers included, UDP and TCP). Without one (not
root, or ``--no-netns``) the members run on the host's loopback, loss and partitions are
"n/a", and idle bandwidth is what orch's members say they sent (the others: "n/a").

Scenarios, in this order on one cluster per implementation and size:
  idle       bytes per member per second, and CPU, in a healthy cluster
  join       a new member joins through one random member: until it knows every member and
             every member knows it (p50/p99); the join of every crash victim counts too
  crash      SIGKILL one member (alone in its process): until every live member marks it
             dead (p50/p99, first-to-last spread); a new member takes its place
  stall      5 % of the members (alone in their processes) stopped by SIGSTOP for 0.5-2.5 s,
             running 0.5-2.5 s, repeatedly, for ``--stall-seconds``: runs with any false death
  loss       10 % of packets dropped at random (iptables statistic) for ``--loss-minutes``:
             live members declared dead
  partition  the two halves cut apart for ``--partition-seconds``, then healed: until every
             member counts every other in again, without a manual join. The sides are told
             apart by the sending process (a group id per side, each worker process holds
             one side's members), because TCP connections leave from 127.0.0.1: packets are
             marked on OUTPUT by the sender's group and dropped silently on INPUT

Cleanup: every worker process is stopped (and dies with the benchmark: PR_SET_PDEATHSIG),
the namespace is removed with its rules, on success, failure, Ctrl-C or SIGTERM; a
namespace left by a run killed with SIGKILL is removed by the next run. Traffic stays in
127.0.0.0/8. Benchmarks print figures; nothing here passes or fails on timing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar

from bench.peers import impls as impls_mod
from bench.peers import netns as netns_mod
from bench.peers.cluster import STOP, Aborted, Cluster, OverBound, Worker
from bench.peers.impls import NAMES, PORTS, Impl
from bench.peers.netns import Netns
from bench.report import pct, table

SCENARIOS = ("idle", "join", "crash", "stall", "loss", "partition")
NETNS_SCENARIOS = ("loss", "partition")
SIDE_A = ["127.0.90.0/24"]
SIDE_B = ["127.0.91.0/24", "127.0.92.0/23"]
SIDE_GID = {True: 64901, False: 64902}
"""Group id of the worker processes of side A (True) and side B (False) in a namespace: the
partition tells the sides apart by the sending process, not by the source address, because
a TCP connection to a member (push-pull, memberlist's and kinship's fallback pings) leaves
from 127.0.0.1 unless the implementation binds it, and none of the three does."""
SIDE_MARK = {True: "0x6a01", False: "0x6a02"}

GOALS: dict[str, tuple[str, float, str]] = {
    # key: (comparison, bound, the goal in words); all at N = 100
    "detect_p50_s": ("<=", 7.0, "detection p50 <= 7 s"),
    "detect_p99_s": ("<=", 9.0, "detection p99 <= 9 s"),
    "false_dead_loss10": ("<=", 0, "0 false deaths at 10 % loss"),
    "stall_share": ("<=", 0.03, "<= 3 % of runs with a false death"),
    "idle_bytes_per_member_s": ("<=", 400.0, "idle <= 400 B/s per member"),
    "join_p99_s": ("<=", 2.0, "join p99 <= 2 s"),
    "partition_merge_s": ("<=", 30.0, "merged <= 30 s after healing"),
}
GOAL_N = 100


@dataclass
class Settings:
    """What to run. The defaults are the budget run (about 6 minutes here, at most 10);
    ``FULL`` holds the full sizes (hours)."""

    sizes: list[int] = field(default_factory=lambda: [50])
    scenarios: list[str] = field(default_factory=lambda: list(SCENARIOS))
    impls: list[str] = field(default_factory=lambda: list(NAMES))
    full: bool = False
    runs: int = 3
    """Crashes per size (each followed by a join; one more join when the cluster forms)."""
    loss_seconds: float = 60.0
    loss: float = 0.10
    stall_runs: int = 3
    stall_seconds: float = 10.0
    stall_quiet: float = 8.0
    """Seconds of calm after each stall run, in which late dead verdicts still count."""
    stall_fraction: float = 0.05
    idle_seconds: float = 30.0
    partition_seconds: float = 20.0
    merge_timeout: float = 60.0
    detect_timeout: float = 40.0
    join_timeout: float = 30.0
    per_process: int = 10
    seed: int = 1
    concurrent: bool = True
    orch_config: dict[str, Any] = field(default_factory=dict)

    FULL: ClassVar[dict[str, Any]] = dict(
        sizes=[50, 100], full=True, runs=20, loss_seconds=600.0, stall_runs=20,
        stall_seconds=30.0, stall_quiet=10.0, idle_seconds=180.0, partition_seconds=60.0,
        merge_timeout=120.0, detect_timeout=60.0)
    """The full run: N = 50 and 100, 20 runs each, 10 minutes of loss, a 60 s partition."""

    def expected_s(self, sc: str, n: int) -> float:
        """Rough wall time of one scenario at size ``n`` when all goes well."""
        if sc == "idle":
            return 5 + self.idle_seconds
        if sc == "crash":
            return self.runs * (2 + 4 * math.log10(max(n, 10)) + 6)
        if sc == "join":
            return self.runs * 6
        if sc == "stall":
            return self.stall_runs * (self.stall_seconds + self.stall_quiet + 2)
        if sc == "loss":
            return self.loss_seconds + 5
        if sc == "partition":
            return self.partition_seconds + self.merge_timeout / 2
        return 0.0

    def bound_s(self, sc: str, n: int) -> float:
        """Longest a scenario may take: then it stops and reports what it has.

        Each wait inside a scenario has its own timeout already; this bounds their sum, so
        that one implementation that keeps timing out cannot hold the others (they wait for
        each other at the start of every scenario) for long."""
        if sc == "partition":
            return self.partition_seconds + self.merge_timeout + 30
        if sc == "loss":
            return self.loss_seconds + 60
        return 2 * self.expected_s(sc, n) + 60

    def estimate_s(self) -> float:
        """Rough wall time of the whole run."""
        total = 0.0
        for n in self.sizes:
            per = 15 + n * 0.1  # start and converge
            for sc in self.scenarios:
                if sc != "join" or "crash" not in self.scenarios:
                    per += self.expected_s(sc, n)
            total += per * (1 if self.concurrent else len(self.impls))
        return total

    def describe(self) -> str:
        """The sizes, as the table's title states them."""
        sc = set(self.scenarios)
        parts = [f"N = {', '.join(map(str, self.sizes))}"]
        if sc & {"crash", "join"}:
            parts.append(f"{self.runs} crashes and {self.runs + 1} joins"
                         if "crash" in sc else f"{self.runs + 1} joins")
        if "stall" in sc:
            parts.append(f"{self.stall_runs} stall runs of {self.stall_seconds:g} s "
                         f"(+{self.stall_quiet:g} s calm)")
        if "loss" in sc:
            parts.append(f"{self.loss_seconds / 60:g} min of {100 * self.loss:g} % loss")
        if "partition" in sc:
            parts.append(f"a {self.partition_seconds:g} s partition "
                         f"(merge awaited {self.merge_timeout:g} s)")
        if "idle" in sc:
            parts.append(f"{self.idle_seconds:g} s idle")
        parts.append("the full sizes (--full)" if self.full
                     else "budget run; --full: N = 50, 100, 20 runs, 10 min loss, 60 s partition")
        return "; ".join(parts)


def progress(msg: str) -> None:
    print(f"  .. {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


# --- the cluster's layout --------------------------------------------------------------------


@dataclass
class Layout:
    """Names and addresses: N - 1 fixed members and one guest (a crash victim or a newcomer)."""

    n: int
    stall_fraction: float

    def __post_init__(self) -> None:
        base = self.n - 1
        half = base // 2
        self.base = [(f"m{i:03d}", f"127.0.90.{i + 1}" if i < half else f"127.0.91.{i - half + 1}")
                     for i in range(base)]
        k = max(1, int(self.stall_fraction * self.n + 0.5))
        self.stalled = {self.base[min(base - 1, int((j + 0.5) * base / k))][0] for j in range(k)}
        self.guests = 0

    def next_guest(self) -> tuple[str, str]:
        k = self.guests
        self.guests += 1
        return f"g{k:03d}", f"127.0.{92 + (k // 250) % 2}.{k % 250 + 1}"

    @staticmethod
    def side_a(addr: str) -> bool:
        return addr.startswith("127.0.90.")


# --- one implementation at one size ---------------------------------------------------------


class Run:
    """The scenarios for one implementation at one size, on one cluster."""

    def __init__(self, impl: Impl, n: int, s: Settings, ns: Netns | None, logdir: Path,
                 sync: Callable[[], None]) -> None:
        assert impl.argv is not None
        self.impl, self.n, self.s, self.ns, self.sync = impl, n, s, ns, sync
        self.port = PORTS[impl.name]
        self.lay = Layout(n, s.stall_fraction)
        self.rng = random.Random(f"{s.seed}-{impl.name}-{n}")
        self.tag = f"{impl.name} N={n}"
        env = dict(os.environ, PYTHONPATH=str(impls_mod.ROOT))
        self.c = Cluster(impl.name, impl.argv, self.port, logdir,
                         prefix=ns.exec_prefix() if ns else [], env=env,
                         orch_config=s.orch_config, progress=self.say)
        self.out: dict[str, Any] = {}
        self.joins: list[float] = []
        self.guest = ""
        self.rules: list[list[str]] = []

    def say(self, msg: str) -> None:
        progress(f"{self.tag}: {msg}")

    # --- iptables (inside our namespace only) ---

    def _ports(self, proto: str) -> list[str]:
        return ["-p", proto, "-m", "multiport", "--ports", str(self.port)]

    def gid(self, addr: str) -> int | None:
        """The group id of a worker for a member at ``addr`` (in a namespace only)."""
        return SIDE_GID[Layout.side_a(addr)] if self.ns is not None else None

    def add_rules(self, chain: str, extra: list[str], table: str = "filter") -> list[list[str]]:
        assert self.ns is not None
        rules = [self.ns.add_rule(chain, [*self._ports(p), *extra], table) for p in ("udp", "tcp")]
        self.rules += rules
        return rules

    def delete_rules(self, rules: list[list[str]]) -> None:
        assert self.ns is not None
        for r in rules:
            self.ns.delete_rule(r)
            with contextlib.suppress(ValueError):
                self.rules.remove(r)

    # --- the whole sequence ---

    def run(self) -> dict[str, Any]:
        try:
            if self.ns is not None:  # byte counters: every packet is sent once, through OUTPUT
                for p in ("udp", "tcp"):
                    self.rules.append(self.ns.add_rule("OUTPUT", [
                        *self._ports(p), "-m", "comment", "--comment", f"{self.impl.name}-{p}"]))
            self.form()
            for sc in SCENARIOS:
                if sc not in self.s.scenarios or (sc == "join" and "crash" in self.s.scenarios):
                    continue
                if sc in NETNS_SCENARIOS and self.ns is None:
                    self.out[f"{sc}_na"] = "needs a network namespace"
                    continue
                self.sync()
                self.ensure_converged()
                bound = self.s.bound_s(sc, self.n)
                self.c.deadline = time.monotonic() + bound
                try:
                    getattr(self, sc)()
                except OverBound:
                    self.out[f"{sc}_bounded"] = f"stopped at its {bound:.0f} s bound"
                    self.say(f"{sc}: stopped at its {bound:.0f} s bound; going on")
                finally:
                    self.c.deadline = math.inf
                self.c.trim_log(time.time() - 5)
            return self.out
        finally:
            if self.ns is not None:
                self.delete_rules(list(self.rules))
            self.c.close()

    def ensure_converged(self, timeout: float = 60.0) -> None:
        if not self.c.wait(self.c.converged, timeout):
            obs, pairs = self.c.not_converged()
            self.say(f"not converged after {timeout:g} s ({obs} members miss {pairs} others); going on")

    # --- formation and joins ---

    def form(self) -> None:
        c, lay = self.c, self.lay
        t0 = time.time()
        shared: dict[bool, Worker] = {}  # by side: a process holds members of one side only
        workers: dict[str, Worker] = {}
        for name, addr in lay.base:
            side = Layout.side_a(addr)
            if name in lay.stalled:
                workers[name] = c.worker(alone=True, group=self.gid(addr))
            else:
                w = shared.get(side)
                if w is None or sum(1 for x in workers.values() if x is w) >= self.s.per_process:
                    w = shared[side] = c.worker(group=self.gid(addr))
                workers[name] = w
        first, addr = lay.base[0]
        c.start(first, addr, workers[first])
        c.wait_started([first], 30)
        for name, addr in lay.base[1:]:
            c.start(name, addr, workers[name], seeds=[first])
        c.wait_started([x for x, _ in lay.base], 60)
        ok = c.wait(c.converged, 60 + self.n)
        formed = time.time() - t0
        self.out["formation_s"] = formed if ok else math.inf
        self.say(f"{self.n - 1} members in {len(c.workers)} processes "
                 + (f"converged in {formed:.1f} s" if ok else "did not converge"))
        self.guest, jt = self.join_guest()
        self.joins.append(jt)

    def join_guest(self) -> tuple[str, float]:
        """A new member, alone in its process, joins through one random member."""
        c = self.c
        name, addr = self.lay.next_guest()
        seed = c.random_live(self.rng)
        c.start(name, addr, c.worker(alone=True, group=self.gid(addr)), seeds=[seed])
        c.wait_started([name], 30)
        t0 = c.members[name].started
        ok = c.wait(c.converged, self.s.join_timeout)
        if not ok:
            obs, pairs = c.not_converged()
            self.say(f"join of {name}: not converged after {self.s.join_timeout:g} s "
                     f"({obs} members miss {pairs} others)")
            return name, math.inf
        others = c.first_event(t0, ("join", "alive", "update"), name)
        mine = c.first_seen_by(t0, ("join", "alive", "update"), name)
        live = [x for x in c.live() if x != name]
        times = [others.get(x, t0) for x in live] + [mine.get(x, t0) for x in live]
        return name, max(times) - t0

    # --- scenarios ---

    def idle(self) -> None:
        c, secs = self.c, self.s.idle_seconds
        c.idle(5)
        before = self.ns.counters() if self.ns else None
        sent0 = self._self_reported() if self.ns is None else 0
        cpu0, t0 = c.cpu_seconds(), time.monotonic()
        self.say(f"idle for {secs:g} s")
        c.idle(secs)
        dt = time.monotonic() - t0
        cpu = c.cpu_seconds() - cpu0
        members = len(c.live())
        self.out["idle_cpu_pct"] = 100 * cpu / dt
        if self.ns is not None and before is not None:
            after = self.ns.counters()
            udp = after[f"{self.impl.name}-udp"][1] - before[f"{self.impl.name}-udp"][1]
            tcp = after[f"{self.impl.name}-tcp"][1] - before[f"{self.impl.name}-tcp"][1]
            self.out.update(idle_udp_bytes_per_member_s=udp / members / dt,
                            idle_tcp_bytes_per_member_s=tcp / members / dt,
                            idle_bytes_per_member_s=(udp + tcp) / members / dt,
                            idle_source="iptables, IP packets")
        elif self.impl.name == "orch":
            sent = self._self_reported() - sent0
            self.out.update(idle_bytes_per_member_s=sent / members / dt,
                            idle_source="self-reported payload")
        else:
            self.out["idle_na"] = "bytes need the network namespace (iptables counters)"
        self.say(f"idle: {self.out.get('idle_bytes_per_member_s', math.nan):.0f} B/s per member, "
                 f"CPU {self.out['idle_cpu_pct']:.1f} % of a core for {members} members")

    def _self_reported(self) -> int:
        return sum(int(v.get("bytes_sent", 0)) for v in self.c.request_stats().values())

    def join(self) -> None:
        self.crash(kill=False)

    def crash(self, kill: bool = True) -> None:
        detect: list[float] = []
        spread: list[float] = []
        try:
            self._crashes(kill, detect, spread)
        finally:  # also when stopped at the scenario's bound: what was measured counts
            self._crash_figures(kill, detect, spread)

    def _crashes(self, kill: bool, detect: list[float], spread: list[float]) -> None:
        c, s = self.c, self.s
        for r in range(s.runs):
            c.idle(self.rng.uniform(1.0, 3.0))  # a random phase of the probe rounds
            victim = self.guest
            if kill:
                observers = [x for x in c.live() if x != victim]
                t0 = c.kill(victim)
                ok = c.wait(lambda v=victim: c.all_see_gone(v), s.detect_timeout)  # type: ignore[misc]
                seen = c.first_event(t0, ("dead", "left"), victim)
                times = [seen[o] - t0 for o in observers if o in seen]
                if ok and len(times) == len(observers):
                    detect.append(max(times))
                    spread.append(max(times) - min(times))
                    self.say(f"crash {r + 1}/{s.runs}: every member marked {victim} dead "
                             f"after {max(times):.2f} s (first {min(times):.2f} s)")
                else:
                    detect.append(math.inf)
                    self.say(f"crash {r + 1}/{s.runs}: {len(times)}/{len(observers)} members "
                             f"marked {victim} dead within {s.detect_timeout:g} s")
            else:
                c.leave(victim)
                c.wait(lambda v=victim: c.all_see_gone(v), 30)  # type: ignore[misc]
            self.guest, jt = self.join_guest()
            self.joins.append(jt)
            if not kill:
                self.say(f"join {r + 1}/{s.runs}: {jt:.2f} s")

    def _crash_figures(self, kill: bool, detect: list[float], spread: list[float]) -> None:
        if kill and detect:
            self.out.update(detect_p50_s=pct(detect, 50), detect_p99_s=pct(detect, 99),
                            detect_max_s=max(detect), spread_p50_s=pct(spread, 50),
                            spread_p99_s=pct(spread, 99), detect_runs=len(detect),
                            detect_missed=sum(math.isinf(x) for x in detect))
        if not self.joins:
            return
        self.out.update(join_p50_s=pct(self.joins, 50), join_p99_s=pct(self.joins, 99),
                        join_max_s=max(self.joins), join_runs=len(self.joins))
        self.say(f"join p50 {pct(self.joins, 50):.2f} s, p99 {pct(self.joins, 99):.2f} s "
                 f"over {len(self.joins)} joins")

    def stall(self) -> None:
        stalled = {n: self.c.members[n].worker for n in self.lay.stalled}
        tally = {"runs": 0, "bad": 0, "stalls": 0, "deaths": 0, "suspicions": 0}
        try:
            self._stall_runs(stalled, tally)
        finally:  # also when stopped at the scenario's bound
            self.out.update(stall_runs=tally["runs"], stall_runs_with_false_death=tally["bad"],
                            stall_share=tally["bad"] / tally["runs"] if tally["runs"] else math.nan,
                            stall_stalls=tally["stalls"], stall_dead_verdicts=tally["deaths"],
                            stall_members=len(stalled),
                            stall_suspect_events=(tally["suspicions"]
                                                  if self.impl.name != "memberlist" else None))

    def _stall_runs(self, stalled: dict[str, Worker], tally: dict[str, int]) -> None:
        c, s, rng = self.c, self.s, self.rng
        for r in range(s.stall_runs):
            if r:
                self.ensure_converged(30)
            mark, t_start = len(c.log), time.time()
            nxt = {n: time.monotonic() + rng.uniform(0, 1) for n in stalled}
            end = time.monotonic() + s.stall_seconds
            try:
                while (now := time.monotonic()) < end:
                    for n, w in stalled.items():
                        if now >= nxt[n]:
                            if w.stopped:
                                w.signal(signal.SIGCONT)
                            else:
                                w.signal(signal.SIGSTOP)
                                tally["stalls"] += 1
                            nxt[n] = now + rng.uniform(0.5, 2.5)
                    c.wait(lambda: False, max(0.0, min(min(nxt.values()), end) - time.monotonic()))
            finally:
                for w in stalled.values():
                    if w.stopped:
                        w.signal(signal.SIGCONT)
            c.idle(s.stall_quiet)
            events = c.log[mark:]
            dead = [e for e in events if e.kind == "dead" and c.members[e.peer].live]
            tally["suspicions"] += sum(e.kind == "suspect" for e in events)
            tally["deaths"] += len(dead)
            tally["bad"] += bool(dead)
            tally["runs"] += 1
            self.say(f"stall run {r + 1}/{s.stall_runs}: "
                     + (f"{len(dead)} false dead verdicts about {len({e.peer for e in dead})} members"
                        if dead else "no false death")
                     + f" ({time.time() - t_start:.0f} s)")

    def loss(self) -> None:
        c, s = self.c, self.s
        mark, t0 = len(c.log), time.time()
        rules = self.add_rules("INPUT", ["-m", "statistic", "--mode", "random", "--probability",
                                         f"{s.loss:g}", "-j", "DROP"])
        self.say(f"{100 * s.loss:g} % loss for {s.loss_seconds / 60:g} min")
        try:
            end = time.monotonic() + s.loss_seconds
            while (left := end - time.monotonic()) > 0:
                c.idle(min(60.0, left))
                so_far = {e.peer for e in c.log[mark:] if e.kind == "dead" and c.members[e.peer].live}
                self.say(f"loss: {time.time() - t0:.0f} s, {len(so_far)} live members declared dead")
        finally:
            self.delete_rules(rules)
        c.idle(5)
        events = c.log[mark:]
        dead = [e for e in events if e.kind == "dead" and c.members[e.peer].live]
        self.out.update(false_dead_loss10=len({e.peer for e in dead}), loss_dead_verdicts=len(dead),
                        loss_minutes=s.loss_seconds / 60, loss_rate=s.loss,
                        loss_suspect_events=(sum(e.kind == "suspect" for e in events)
                                             if self.impl.name != "memberlist" else None))

    def partition(self) -> None:
        c, s = self.c, self.s
        rules: list[list[str]] = []
        # Packets are marked by the side of the process that sends them, and dropped on
        # arrival at the other side (on INPUT: silently, as a real partition does; a DROP on
        # OUTPUT would fail the sender's sendto/connect with EPERM at once).
        for side, to in ((True, SIDE_B), (False, SIDE_A)):
            rules += self.add_rules("OUTPUT", ["-m", "owner", "--gid-owner", str(SIDE_GID[side]),
                                               "-j", "MARK", "--set-mark", SIDE_MARK[side]], "mangle")
            for net in to:
                rules += self.add_rules("INPUT", ["-m", "mark", "--mark", SIDE_MARK[side],
                                                  "-d", net, "-j", "DROP"])
        self.say(f"partitioned for {s.partition_seconds:g} s")
        try:
            c.idle(s.partition_seconds)
        finally:
            live = c.live()
            a_side = [x for x in live if Layout.side_a(c.members[x].addr)]
            b_side = [x for x in live if not Layout.side_a(c.members[x].addr)]
            cross = [(o, p) for o in a_side for p in b_side] + [(o, p) for o in b_side for p in a_side]
            split = sum(c.views.get(o, {}).get(p) not in ("alive", "suspect") for o, p in cross)
            self.delete_rules(rules)
        t_heal = time.time()
        self.out["partition_split"] = split / max(1, len(cross))
        self.say(f"healed; {100 * split / max(1, len(cross)):.0f} % of cross pairs had been marked dead")
        ok = False
        end = time.monotonic() + s.merge_timeout
        while not ok and time.monotonic() < end:
            ok = c.wait(c.converged, min(15.0, end - time.monotonic()))
            if not ok:
                obs, pairs = c.not_converged()
                self.say(f"merge: {time.time() - t_heal:.0f} s, {obs} members still miss {pairs} others")
        merged = time.time() - t_heal
        self.out["partition_merge_s"] = merged if ok else math.inf
        self.out["partition_seconds"] = s.partition_seconds
        self.say(f"merged after {merged:.1f} s" if ok else f"not merged {s.merge_timeout:g} s after healing")


# --- the whole run -----------------------------------------------------------------------------


def run_size(n: int, impls: dict[str, Impl], s: Settings, ns_reason: str, logdir: Path,
             results: dict[str, dict[int, dict[str, Any]]]) -> None:
    ready = [i for i in impls.values() if i.ok]
    ns = None if ns_reason else Netns(f"n{n}")
    try:
        if ns is not None:
            ns.create()
            progress(f"N={n}: network namespace {ns.name}")
        groups = [ready] if s.concurrent else [[i] for i in ready]
        for group in groups:
            barrier = threading.Barrier(len(group))

            # the longest one implementation may wait for the others: their slowest scenario
            # at its bound, or the formation (which has its own timeouts) before the first
            patience = max([s.bound_s(sc, n) for sc in s.scenarios] + [0.0]) + 300 + n

            def sync(barrier: threading.Barrier = barrier, patience: float = patience) -> None:
                with contextlib.suppress(threading.BrokenBarrierError):
                    barrier.wait(timeout=patience)

            done = {i.name: threading.Event() for i in group}

            def body(impl: Impl, barrier: threading.Barrier = barrier,
                     sync: Callable[[], None] = sync,
                     done: dict[str, threading.Event] = done) -> None:
                try:
                    results[impl.name][n] = Run(impl, n, s, ns, logdir, sync).run()
                except Aborted:
                    results[impl.name][n] = {"error": "interrupted"}
                except Exception as e:
                    progress(f"{impl.name} N={n}: failed: {type(e).__name__}: {e}")
                    results[impl.name][n] = {"error": f"{type(e).__name__}: {e}"}
                finally:
                    barrier.abort()  # nobody waits for a thread that has finished
                    done[impl.name].set()

            threads = [threading.Thread(target=body, args=(i,), name=i.name) for i in group]
            for t in threads:
                t.start()
            # Wait on events, not Thread.join: on Python 3.11 a join interrupted by Ctrl-C can
            # leave the thread looking finished while it still runs (and then the namespace
            # would go before its workers and rules).
            try:
                for ev in done.values():
                    while not ev.wait(0.5):
                        pass
            except BaseException:
                STOP.set()
                barrier.abort()
                for ev in done.values():
                    ev.wait(60)
                raise
            for t in threads:
                t.join()
    finally:
        if ns is not None:
            ns.remove()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the run the way Ctrl-C does: every cleanup runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def parse_config(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        k, _, v = item.partition("=")
        try:
            out[k.strip()] = json.loads(v)
        except ValueError:
            out[k.strip()] = v.strip()
    return out


def settings_from(opts: argparse.Namespace) -> Settings:
    s = Settings(**(Settings.FULL if opts.full else {}))
    if opts.n:
        s.sizes = [int(x) for x in opts.n.split(",")]
    if opts.scenarios:
        s.scenarios = [x for x in opts.scenarios.split(",") if x]
        unknown = set(s.scenarios) - set(SCENARIOS)
        if unknown:
            raise SystemExit(f"unknown scenarios {', '.join(sorted(unknown))} "
                             f"(choose from {', '.join(SCENARIOS)})")
    if opts.impls:
        s.impls = [x for x in opts.impls.split(",") if x]
    for attr in ("runs", "stall_runs", "stall_seconds", "idle_seconds", "partition_seconds",
                 "merge_timeout", "per_process", "seed"):
        v = getattr(opts, attr)
        if v is not None:
            setattr(s, attr, v)
    if opts.loss_minutes is not None:
        s.loss_seconds = opts.loss_minutes * 60
    s.concurrent = not opts.sequential
    s.orch_config = parse_config(opts.orch_config or "")
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gossip_peers", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true",
                    help="the full sizes: N = 50 and 100, 20 runs, 10 min of loss, 60 s "
                         "partition (hours); without it a budget run of at most 10 minutes")
    ap.add_argument("--json", action="store_true", help="end with one JSON line")
    ap.add_argument("--n", help="cluster sizes, e.g. 50,100")
    ap.add_argument("--scenarios", help=f"comma-separated, from {','.join(SCENARIOS)}")
    ap.add_argument("--impls", help=f"comma-separated, from {','.join(NAMES)}")
    ap.add_argument("--runs", type=int, help="crashes (and joins) per size (3; --full 20)")
    ap.add_argument("--loss-minutes", type=float, help="minutes of 10 %% loss (1; --full 10)")
    ap.add_argument("--stall-runs", type=int, help="runs of the stall scenario (3; --full 20)")
    ap.add_argument("--stall-seconds", type=float, help="seconds of stalls per run (10; --full 30)")
    ap.add_argument("--idle-seconds", type=float, help="seconds of the idle measurement (30; --full 180)")
    ap.add_argument("--partition-seconds", type=float, help="length of the partition (20; --full 60)")
    ap.add_argument("--merge-timeout", type=float,
                    help="longest wait for the merge after healing (60; --full 120)")
    ap.add_argument("--per-process", type=int, help="members per worker process (10)")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--sequential", action="store_true", help="one implementation at a time")
    ap.add_argument("--no-netns", action="store_true", help="run on the host's loopback")
    ap.add_argument("--no-install", action="store_true", help="install nothing (apt-get, pip)")
    ap.add_argument("--orch-config", help="GossipConfig fields for orch's members, e.g. suspicion_mult=3")
    ap.add_argument("--keep-logs", action="store_true", help="keep the workers' stderr logs")
    opts = ap.parse_args(argv)
    s = settings_from(opts)
    STOP.clear()
    load0 = os.getloadavg()
    t_start = time.monotonic()

    impls = impls_mod.prepare(s.impls, install=not opts.no_install)
    ns_reason = "--no-netns" if opts.no_netns else netns_mod.available()
    if not ns_reason:
        for name in netns_mod.reap_stale():
            progress(f"removed a namespace left by an earlier run: {name}")
    est = s.estimate_s()
    print(f"Gossip side by side: {', '.join(s.impls)}; N = {', '.join(map(str, s.sizes))}; "
          f"scenarios {', '.join(s.scenarios)}")
    for i in impls.values():
        print(f"  {i.name:<10} " + (i.version if i.ok else f"n/a: {i.reason}"))
    print(f"  network namespace: {'no (' + ns_reason + ')' if ns_reason else 'yes, iptables inside it'}; "
          f"{'all at once' if s.concurrent else 'one at a time'}; load average before "
          f"{load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} on {os.cpu_count()} cores")
    print(f"  estimated wall time: about {est / 60:.0f} minutes", flush=True)

    logdir = Path(tempfile.mkdtemp(prefix="orch-peers-"))
    results: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in s.impls}
    interrupted = False
    try:
        with sigterm_as_interrupt():
            for n in s.sizes:
                run_size(n, impls, s, ns_reason, logdir, results)
    except KeyboardInterrupt:
        interrupted = True
        progress("interrupted: every worker and the namespace were removed")
    finally:
        STOP.clear()
        if opts.keep_logs or interrupted:
            progress(f"worker logs: {logdir}")
        else:
            shutil.rmtree(logdir, ignore_errors=True)
    wall = time.monotonic() - t_start
    load1 = os.getloadavg()
    report = build_report(s, impls, results, ns_reason, wall, load0, load1)
    print(render(s, impls, results, report))
    if opts.json:
        print(json.dumps(report, default=_json_default))
    return 130 if interrupted else 0


# --- the report -----------------------------------------------------------------------------------


def _json_default(v: Any) -> Any:
    return None


def _clean(v: Any) -> Any:
    if isinstance(v, float) and (math.isinf(v) or math.isnan(v)):
        return None if math.isnan(v) else "never"
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    return v


HEADLINE = ("detect_p50_s", "detect_p99_s", "false_dead_loss10", "idle_bytes_per_member_s",
            "join_p99_s", "spread_p50_s", "stall_share", "partition_merge_s")


def build_report(s: Settings, impls: dict[str, Impl], results: dict[str, dict[int, dict[str, Any]]],
                 ns_reason: str, wall: float, load0: tuple[float, ...],
                 load1: tuple[float, ...]) -> dict[str, Any]:
    head_n = GOAL_N if GOAL_N in s.sizes else max(s.sizes)
    report: dict[str, Any] = {"n": head_n, "sizes": s.sizes, "scenarios": s.scenarios,
                              "wall_s": wall, "loadavg_before": list(load0), "loadavg_after": list(load1),
                              "netns": not ns_reason, "concurrent": s.concurrent,
                              "orch_config": s.orch_config or "GossipConfig.lan()"}
    for name in NAMES:
        impl = impls.get(name)
        r = results.get(name, {}).get(head_n, {})
        entry: dict[str, Any] = {k: _clean(r.get(k)) for k in HEADLINE}
        if impl is None:
            entry["na"] = "not selected"
        elif not impl.ok:
            entry["na"] = impl.reason
        else:
            entry["version"] = impl.version
        if "error" in r:
            entry["error"] = r["error"]
        entry["by_n"] = {str(n): _clean(v) for n, v in results.get(name, {}).items()}
        report[name] = entry
    goals = {}
    orch = results.get("orch", {}).get(GOAL_N, {})
    for key, (op, bound, text) in GOALS.items():
        v = orch.get(key)
        goals[key] = {"goal": text, "orch": _clean(v), "held": None if v is None else _holds(v, op, bound)}
    report["goals_at_n100"] = goals
    ratios = {}
    ml = results.get("memberlist", {}).get(head_n, {})
    for k in HEADLINE:
        a, b = results.get("orch", {}).get(head_n, {}).get(k), ml.get(k)
        ratios[k] = _ratio(a, b)
    report["orch_over_memberlist"] = _clean(ratios)
    return report


def _holds(v: float, op: str, bound: float) -> bool:
    return bool(v <= bound) if op == "<=" else bool(v >= bound)


def _ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, int | float) or not isinstance(b, int | float):
        return None
    if math.isinf(a) or math.isinf(b) or b == 0:
        return None
    return a / b


ROWS: list[tuple[str, str, str]] = [
    # (key, label, scenario)
    ("formation_s", "cluster formed (N - 1 start at once) s", ""),
    ("detect_p50_s", "crash: detection p50 s (every member knows)", "crash"),
    ("detect_p99_s", "crash: detection p99 s", "crash"),
    ("spread_p50_s", "crash: first-to-last spread p50 s", "crash"),
    ("spread_p99_s", "crash: first-to-last spread p99 s", "crash"),
    ("join_p50_s", "join: p50 s (all know all)", "join"),
    ("join_p99_s", "join: p99 s", "join"),
    ("stall_share", "stall: share of runs with a false death", "stall"),
    ("stall_dead_verdicts", "stall: false dead verdicts", "stall"),
    ("false_dead_loss10", "loss: live members declared dead", "loss"),
    ("loss_dead_verdicts", "loss: false dead verdicts", "loss"),
    ("idle_bytes_per_member_s", "idle: bytes/s per member", "idle"),
    ("idle_udp_bytes_per_member_s", "idle: UDP bytes/s per member", "idle"),
    ("idle_tcp_bytes_per_member_s", "idle: TCP bytes/s per member", "idle"),
    ("idle_cpu_pct", "idle: CPU % of one core, all members", "idle"),
    ("partition_split", "partition: cross pairs marked dead", "partition"),
    ("partition_merge_s", "partition: merged after healing s", "partition"),
]


def render(s: Settings, impls: dict[str, Impl], results: dict[str, dict[int, dict[str, Any]]],
           report: dict[str, Any]) -> str:
    rows = []
    cols = [n for n in NAMES if n in s.impls]
    for n in s.sizes:
        for key, label, sc in ROWS:
            if sc and sc not in s.scenarios and not (sc == "join" and "crash" in s.scenarios):
                continue
            cells: list[Any] = []
            for name in cols:
                impl = impls[name]
                r = results.get(name, {}).get(n, {})
                if not impl.ok:
                    cells.append("n/a")
                elif key in r and r[key] is not None:
                    cells.append(r[key])
                elif "error" in r:
                    cells.append("error")
                else:
                    cells.append("n/a" if f"{sc}_na" in r or f"{key.split('_')[0]}_na" in r else "-")
            o = results.get("orch", {}).get(n, {}).get(key)
            m = results.get("memberlist", {}).get(n, {}).get(key)
            ratio = _ratio(o, m)
            goal = GOALS.get(key)
            verdict = ""
            if goal is not None and n == GOAL_N and isinstance(o, int | float):
                verdict = "held" if _holds(o, goal[0], goal[1]) else "missed"
            rows.append([n, label, *cells, "-" if ratio is None else ratio,
                         goal[2] if goal and n == GOAL_N else "", verdict])
    head = ["N", "metric", *cols, "orch/memberlist", "goal (N = 100)", "orch"]
    lines = [table(f"Gossip side by side on real sockets ({s.describe()})", head, rows)]
    lines.append("")
    for name in cols:
        impl = impls[name]
        lines.append(f"  {name}: " + (impl.version if impl.ok else f"n/a: {impl.reason}"))
        for n in s.sizes:
            r = results.get(name, {}).get(n, {})
            if "error" in r:
                lines.append(f"    N={n}: {r['error']}")
            for k, v in r.items():
                if k.endswith("_na"):
                    lines.append(f"    N={n}: {k.removesuffix('_na')}: n/a ({v})")
                elif k.endswith("_bounded"):
                    lines.append(f"    N={n}: {k.removesuffix('_bounded')}: {v} (figures so far)")
    lines.append(f"  wall time {report['wall_s'] / 60:.1f} min; load average before "
                 f"{report['loadavg_before'][0]:.2f}, after {report['loadavg_after'][0]:.2f} "
                 f"({os.cpu_count()} cores, shared)")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
