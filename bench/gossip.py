"""Gossip benchmark: failure detection, false positives, load and join time on the
simulator (orch's LAN defaults beside memberlist's), and the transport's throughput on real
sockets.

    python -m bench.gossip            # the full run (about 10 minutes on one core)
    python -m bench.gossip --quick    # a smoke run
    python -m bench.gossip --json     # the last line of stdout is one JSON object
    python -m bench.gossip --only hostile --json   # one malicious member (bench/gossip_hostile.py)

Three protocol settings are compared where it matters:
  swim        plain SWIM: fixed suspicion timeout, no local health, no nacks
  memberlist  SWIM + Lifeguard, memberlist's shuffled probe walk (memberlist's behaviour)
  orch 1s     Lifeguard + the coordinated probe schedule + the shared suspicion clock, at
              memberlist's timings (probe 1 s, timeout 0.5 s)
  orch        the same at orch's defaults (probe 0.7 s, timeout 0.35 s)
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import random
import socket
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from bench.gossip_hostile import hostile_section
from bench.report import pct, progress, table
from orch.gossip import codec
from orch.gossip.config import GossipConfig
from orch.gossip.core import EventKind, MemberEvent
from orch.gossip.messages import Alive, Ping, Suspect
from orch.gossip.sim import NetConfig, SimNode, Simulator
from orch.gossip.suspicion import min_suspicion_timeout

LAN = GossipConfig.lan()
ML = GossipConfig.memberlist()
MODES: dict[str, GossipConfig] = {
    "swim": ML.replace(lifeguard=False, shared_suspicion_clock=False, probe_schedule="shuffled"),
    "memberlist": ML.replace(shared_suspicion_clock=False, probe_schedule="shuffled"),
    "orch 1s": ML,
    "orch": LAN,
}






# --- detection ------------------------------------------------------------------------------


def detection(n: int, trials: int, cfg: GossipConfig, seed: int) -> dict[str, Any]:
    """Crash one member at a time; time until every live member marks it dead."""
    sim = Simulator(cfg, seed=seed)
    nodes = [x.name for x in sim.start_cluster(n)]
    sim.run_for(40)
    rng = random.Random(seed)
    times: list[float] = []
    spreads: list[float] = []
    seen: dict[str, float] = {}
    victim = ""

    def on_event(node: SimNode, ev: MemberEvent) -> None:
        if ev.kind is EventKind.DEAD and ev.name == victim and node.name not in seen:
            seen[node.name] = sim.now

    sim.on_event = on_event
    for _ in range(trials):
        victim = rng.choice([x for x in nodes if sim.nodes[x].up])
        seen.clear()
        sim.run_for(rng.random() * cfg.probe_interval)  # crash at a random phase
        t0 = sim.now
        sim.crash(victim)
        live = len(sim.live_nodes())
        sim.run_until(t0 + 120, stop=lambda live=live: len(seen) >= live)  # type: ignore[misc]
        if len(seen) < live:
            times.append(math.inf)
            continue
        first, last = min(seen.values()) - t0, max(seen.values()) - t0
        times.append(last)
        spreads.append(last - first)
        sim.run_for(2)
    return {"p50": pct(times, 50), "p99": pct(times, 99), "max": max(times),
            "spread_p50": pct(spreads, 50), "min_timeout": min_suspicion_timeout(
                cfg.suspicion_mult, n, cfg.probe_interval)}


# --- false positives --------------------------------------------------------------------------


def false_positives(n: int, seconds: float, cfg: GossipConfig, *, loss: float = 0.0,
                    slow_fraction: float = 0.0, seed: int) -> dict[str, Any]:
    """Run a healthy cluster under loss or with slow members; count live members declared dead."""
    sim = Simulator(cfg, net=NetConfig(loss=loss), seed=seed)
    nodes = [x.name for x in sim.start_cluster(n)]
    rng = random.Random(seed)
    for name in rng.sample(nodes, round(n * slow_fraction)):
        # a stalled process: everything it sends leaves 0.6-1.5 s late (past memberlist's
        # probe timeout, and further past orch's)
        sim.slow(name, lambda r: r.uniform(0.6, 1.5))
    declared: set[str] = set()
    pairs = 0
    suspicions = 0

    def on_event(node: SimNode, ev: MemberEvent) -> None:
        nonlocal pairs, suspicions
        if ev.kind is EventKind.DEAD:
            declared.add(ev.name)
            pairs += 1
        elif ev.kind is EventKind.SUSPECT:
            suspicions += 1

    sim.on_event = on_event
    t0 = time.perf_counter()
    sim.run_for(seconds)
    return {"false_dead": len(declared), "dead_events": pairs, "suspect_events": suspicions,
            "wall_s": time.perf_counter() - t0, "sent_packets": sim.totals.packets}


# --- load and joins ---------------------------------------------------------------------------


def idle_load(n: int, seconds: float, seed: int) -> dict[str, Any]:
    """A healthy cluster for ``seconds``: traffic per member, and the simulator's wall time."""
    sim = Simulator(LAN, seed=seed)
    t0 = time.perf_counter()
    sim.start_cluster(n)
    msgs0 = 0
    sim.run_for(seconds)
    wall = time.perf_counter() - t0
    msgs = sum(sum(x.core.stats.sent) for x in sim.nodes.values()) - msgs0
    udp_bytes = sim.totals.bytes
    tcp_bytes = sim.totals.stream_bytes  # requests and answers
    per = n * seconds
    return {"msgs_per_member_s": msgs / per, "packets_per_member_s": sim.totals.packets / per,
            "udp_bytes_per_member_s": udp_bytes / per, "tcp_bytes_per_member_s": tcp_bytes / per,
            "bytes_per_member_s": (udp_bytes + tcp_bytes) / per, "wall_s": wall}


def join_convergence(n: int, trials: int, seed: int) -> dict[str, Any]:
    """A new member joins through one random seed; time until every member knows it alive."""
    sim = Simulator(LAN, seed=seed)
    names = [x.name for x in sim.start_cluster(n)]
    sim.run_for(20)
    rng = random.Random(seed)
    times = []
    knows: set[str] = set()
    newcomer = ""

    def on_event(node: SimNode, ev: MemberEvent) -> None:
        if ev.kind is EventKind.JOIN and ev.name == newcomer:
            knows.add(node.name)

    sim.on_event = on_event
    for i in range(trials):
        newcomer = f"new{i:03d}"
        knows.clear()
        t0 = sim.now
        sim.add_node(newcomer, join=[rng.choice(names)])
        live = len(sim.live_nodes()) - 1
        sim.run_until(t0 + 60, stop=lambda live=live: len(knows) >= live)  # type: ignore[misc]
        times.append(sim.now - t0 if len(knows) >= live else math.inf)
        names.append(newcomer)
        sim.run_for(1)
    return {"p50": pct(times, 50), "p99": pct(times, 99)}


# --- real sockets -----------------------------------------------------------------------------


def _receiver(host: str, port: int, seconds: float, encrypted: bool, out: Any) -> None:
    """A gossip member alone on a core, counting what it handles."""
    import asyncio

    import uvloop

    from orch import logs
    from orch.gossip.crypto import Keyring
    from orch.gossip.transport import GossipNode

    logs.setup("warning", "human")
    os.sched_setaffinity(0, {0})

    async def main() -> None:
        ring = Keyring([b"k" * 32]) if encrypted else None
        node = GossipNode(LAN.replace(probe_interval=3600.0, probe_timeout=1.0),
                          name="receiver", bind=(host, port), keyring=ring)
        await node.start()
        out.send("ready")
        await asyncio.sleep(1.0)  # the sender's warm-up
        p0 = node.wire.packets_received
        assert node.core is not None
        m0 = sum(node.core.stats.received)
        c0 = time.process_time()
        await asyncio.sleep(seconds)
        cpu = time.process_time() - c0
        out.send({"packets": node.wire.packets_received - p0, "cpu_s": cpu,
                  "msgs": sum(node.core.stats.received) - m0, "acks": node.wire.packets_sent})
        await node.stop()

    uvloop.run(main())


def socket_throughput(seconds: float, *, encrypted: bool, compound: bool) -> dict[str, Any]:
    """Packets per second one member decodes and handles on one core (UDP on loopback)."""
    host, port = "127.0.0.2", 17946
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.get_context("fork").Process(
        target=_receiver, args=(host, port, seconds, encrypted, child), daemon=True)
    proc.start()
    assert parent.recv() == "ready"
    from orch.gossip.crypto import Keyring

    ring = Keyring([b"k" * 32]) if encrypted else None
    packets = []
    for i in range(256):
        items = [codec.encode(Ping(i, "receiver", "sender"))]
        if compound:  # a ping carrying a full packet of gossip, as under churn (members that
            # point at a closed loopback port: the benchmark sends nothing off this machine)
            for j in range(24):
                items.append(codec.encode(Alive(i, f"member-{j:04d}", "127.0.0.254", 9, 1)))
                items.append(codec.encode(Suspect(i, f"member-{j:04d}", "sender", 1500)))
                if sum(map(len, items)) > 1250:
                    break
        packets.append(codec.seal(codec.pack(items), "", ring))
    size = sum(map(len, packets)) / len(packets)
    deadline = time.monotonic() + seconds + 1.5
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.3", 0))
        s.setblocking(False)
        i = 0
        while time.monotonic() < deadline:
            try:
                s.sendto(packets[i & 255], (host, port))
                i += 1
            except BlockingIOError:
                time.sleep(0.0001)
            if i % 64 == 0:
                try:
                    while True:
                        s.recv(2048)  # drain the acks
                except BlockingIOError:
                    pass
    res = parent.recv()
    proc.join(5)
    rate = res["packets"] / seconds
    return {"packets_per_s": rate, "msgs_per_s": res["msgs"] / seconds,
            "cpu_pct": 100 * res["cpu_s"] / seconds, "packet_bytes": size,
            # what one core can take: packets handled per second of the receiver's CPU time
            "packets_per_core_s": res["packets"] / max(res["cpu_s"], 1e-9)}


# --- the report -------------------------------------------------------------------------------






def timed(label: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    out = fn()
    progress(f"{label}: {time.perf_counter() - t0:.1f} s")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,500,1000", help="cluster sizes for detection")
    ap.add_argument("--trials", type=int, default=20, help="crashes per size and mode")
    ap.add_argument("--minutes", type=float, default=10.0, help="simulated minutes per fault run")
    ap.add_argument("--fault-n", type=int, default=100, help="cluster size of the fault runs")
    ap.add_argument("--quick", action="store_true", help="a small, fast run")
    ap.add_argument("--json", action="store_true", help="end with one JSON line")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", default="detection,faults,load,sockets",
                    help="comma-separated sections to run (and hostile: one malicious member)")
    opts = ap.parse_args(argv)
    sizes = [int(s) for s in opts.sizes.split(",")]
    trials, minutes, fault_n, idle_n = opts.trials, opts.minutes, opts.fault_n, max(sizes)
    if opts.quick:
        sizes, trials, minutes, fault_n, idle_n = [50, 100], 5, 1.0, 50, 100
    seed = opts.seed
    result: dict[str, Any] = {"sizes": sizes, "trials": trials, "fault_minutes": minutes,
                              "fault_n": fault_n}

    print(f"orch gossip benchmark (simulator; orch: probe {LAN.probe_interval:g} s, timeout "
          f"{LAN.probe_timeout:g} s; memberlist: probe {ML.probe_interval:g} s, timeout "
          f"{ML.probe_timeout:g} s; both 3 indirect, suspicion mult 4 / max 6, gossip 3 every "
          "0.2 s)")
    only = set(opts.only.split(","))
    if "detection" in only:
        detection_section(result, sizes, trials, seed)
    if "faults" in only:
        faults_section(result, fault_n, minutes, seed)
    if "load" in only:
        load_section(result, idle_n, minutes, trials, seed)
    if "sockets" in only:
        sockets_section(result, 2.0 if opts.quick else 5.0)
    if "hostile" in only:
        hostile_section(result, opts.quick, seed, timed)
    if opts.json:
        print(json.dumps(result, default=lambda v: None if isinstance(v, float) and math.isinf(v) else v))
    return 0


def detection_section(result: dict[str, Any], sizes: list[int], trials: int, seed: int) -> None:
    det: dict[str, dict[str, Any]] = {}
    rows = []
    for n in sizes:
        for mode in ("memberlist", "orch 1s", "orch"):
            d = det.setdefault(mode, {})[str(n)] = timed(
                f"detection N={n} {mode}", partial(detection, n, trials, MODES[mode], seed))
            rows.append([n, mode, d["min_timeout"], d["p50"], d["p99"], d["max"], d["spread_p50"],
                         d["p99"] / d["min_timeout"]])
    print(table(f"Failure detection: crash -> every live member marks it dead ({trials} crashes each)",
                ["N", "mode", "min timeout s", "p50 s", "p99 s", "max s", "first-to-last p50 s",
                 "p99 / min"], rows))
    # the headline figures are at memberlist's timings (orch's mechanisms: "orch 1s");
    # *_defaults are at orch's own
    result["detect_p50_s"] = {n: d["p50"] for n, d in det["orch 1s"].items()}
    result["detect_p99_s"] = {n: d["p99"] for n, d in det["orch 1s"].items()}
    result["detect_p50_s_defaults"] = {n: d["p50"] for n, d in det["orch"].items()}
    result["detect_p99_s_defaults"] = {n: d["p99"] for n, d in det["orch"].items()}
    result["detect_p99_s_memberlist_mode"] = {n: d["p99"] for n, d in det["memberlist"].items()}


def faults_section(result: dict[str, Any], fault_n: int, minutes: float, seed: int) -> None:
    seconds = minutes * 60
    scenarios = [("5% loss", {"loss": 0.05}), ("10% loss", {"loss": 0.10}),
                 ("20% loss", {"loss": 0.20}),
                 ("10% slowed", {"slow_fraction": 0.10})]
    rows = []
    fp: dict[str, dict[str, Any]] = {}
    for label, kw in scenarios:
        for mode in ("swim", "memberlist", "orch 1s", "orch"):
            r = fp.setdefault(label, {})[mode] = timed(
                f"{label} {mode}", partial(false_positives, fault_n, seconds, MODES[mode], seed=seed, **kw))
            rows.append([label, mode, r["false_dead"], r["dead_events"], r["suspect_events"]])
    print(table(f"False positives: N={fault_n}, {minutes:g} simulated minutes, no member crashed",
                ["scenario", "mode", "live members declared dead", "dead verdicts", "suspicions"], rows))
    result["false_dead_loss5_lifeguard"] = fp["5% loss"]["orch 1s"]["false_dead"]
    result["false_dead_loss20_lifeguard"] = fp["20% loss"]["orch 1s"]["false_dead"]
    result["false_dead_loss20_plain"] = fp["20% loss"]["swim"]["false_dead"]
    result["false_dead_slow10_lifeguard"] = fp["10% slowed"]["orch 1s"]["false_dead"]
    result["false_dead_loss10"] = fp["10% loss"]["orch"]["false_dead"]
    result["false_dead_loss20_defaults"] = fp["20% loss"]["orch"]["false_dead"]
    result["false_dead_slow10_defaults"] = fp["10% slowed"]["orch"]["false_dead"]
    result["false_dead_slow10_plain"] = fp["10% slowed"]["swim"]["false_dead"]
    result["false_positives"] = fp


def load_section(result: dict[str, Any], idle_n: int, minutes: float, trials: int, seed: int) -> None:
    seconds = minutes * 60
    load = timed(f"idle N={idle_n} for {seconds:g} s", lambda: idle_load(idle_n, seconds, seed))
    joins = timed(f"joins N={idle_n}", lambda: join_convergence(idle_n, trials, seed))
    print(table(f"Load and joins: N={idle_n}, healthy, {minutes:g} simulated minutes",
                ["msgs/member/s", "packets/member/s", "UDP B/member/s", "TCP B/member/s",
                 "total B/member/s", "join p50 s", "join p99 s", "simulator wall s"],
                [[load["msgs_per_member_s"], load["packets_per_member_s"], load["udp_bytes_per_member_s"],
                  load["tcp_bytes_per_member_s"], load["bytes_per_member_s"], joins["p50"], joins["p99"],
                  load["wall_s"]]]))
    result.update(bytes_per_member_s=load["bytes_per_member_s"],
                  msgs_per_member_s=load["msgs_per_member_s"], sim_wall_s=load["wall_s"],
                  sim_wall_n=idle_n, sim_wall_minutes=minutes, join_p50_s=joins["p50"],
                  join_p99_s=joins["p99"])


def sockets_section(result: dict[str, Any], secs: float) -> None:
    rows = []
    for label, enc, comp in (("ping", False, False), ("ping, encrypted", True, False),
                             ("ping + 1.3 KB gossip", False, True),
                             ("ping + 1.3 KB gossip, encrypted", True, True)):
        r = timed(f"sockets {label}", partial(socket_throughput, secs, encrypted=enc, compound=comp))
        rows.append([label, r["packet_bytes"], r["packets_per_s"], r["msgs_per_s"], r["cpu_pct"],
                     r["packets_per_core_s"]])
        result.setdefault("socket_packets_per_s", {})[label] = r["packets_per_s"]
        result.setdefault("socket_packets_per_core_s", {})[label] = r["packets_per_core_s"]
    print(table("Transport on real sockets: one member pinned to one core, UDP on loopback (uvloop); "
                "the last column is packets handled per second of its CPU time",
                ["packets", "bytes each", "packets/s handled", "messages/s", "receiver CPU %",
                 "packets per core-second"], rows))


if __name__ == "__main__":
    raise SystemExit(main())
