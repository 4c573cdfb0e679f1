"""The hostile scenario of the gossip benchmark (``python -m bench.gossip --only hostile``):
one malicious member sending, as fast as it can, maximum-size datagrams and push-pull
frames, saturated counters, floods of fake members and fake endpoints.

* In the simulator, N members (one of them the attacker, which also runs the real core,
  so it is a member like any other): a member is crashed again and again; the time until
  every live honest member marks it dead is measured with the attacker running and, on
  the same cluster and seed, without it (``hostile_detect_p99_ratio``). Honest members
  declared dead by honest ones are counted (``hostile_false_dead``), and so are the fake
  endpoints that reached any honest member's load-balancer table, built from its gossip
  view and what the controller placed (``hostile_endpoints_accepted``).
* On real sockets: one honest member pinned to a core, the attacker (a member too) in
  another process on the other core, blasting 65,000-byte datagrams and 8 MiB push-pull
  frames; the honest member's event-loop lag, sampled every 10 ms
  (``hostile_loop_lag_p99_ms``).
* The UDP load balancer under a flood of spoofed sources (127.0.0.0/8, as fast as one
  process sends them), while a legitimate client asks and waits for each answer: the
  share of its requests answered (``udp_flood_legit_success``).

Everything stays on 127.0.0.0/8; every part is bounded in time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import os
import random
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from agent.lb import discovery
from bench.report import pct, progress, table
from orch.errors import ProtocolError
from orch.gossip import codec
from orch.gossip.config import GossipConfig
from orch.gossip.core import EventKind, MemberEvent, Membership
from orch.gossip.messages import (
    Alive,
    Dead,
    MemberRecord,
    PushPull,
    StateDelta,
    Suspect,
    UserEvent,
)
from orch.gossip.sim import SimNode, Simulator
from orch.v1 import controller_pb2

TOP = 2**63 - 1
"""The largest counter the wire carries: what an attacker saturates."""
SERVICE = ("default", "shop", "web", "web")
PUBLISHED = 8080
IP_PKTINFO = 8
"""Linux's IP_PKTINFO (Python's socket module lacks it): the source address of a datagram."""


# --- what the attacker sends ------------------------------------------------------------------


class Attacker:
    """Builds the malicious member's messages; ``views`` tells it the honest members it
    targets (name -> (incarnation, state version)), as an attacker inside the cluster
    knows them."""

    def __init__(self, name: str, host: str, port: int, cfg: GossipConfig,
                 views: Callable[[], dict[str, tuple[int, int]]], seed: int = 1) -> None:
        self.name, self.host, self.port = name, host, port
        self.cfg = cfg
        self.views = views
        self.rng = random.Random(seed)
        self.fakes = 0
        self.version = 0

    def _fake_name(self) -> str:
        self.fakes += 1
        return f"fake-{self.fakes:08d}"

    def _fake_host(self) -> str:
        r = self.rng
        return f"10.{r.randrange(200, 250)}.{r.randrange(256)}.{r.randrange(1, 255)}"

    def fake_endpoints(self, n: int) -> dict[str, Any]:
        """Endpoints for the cluster's service, at hosts the attacker chose."""
        return {f"ep:web:evil-{self.rng.randrange(10**9)}": [
            self._fake_host(), self.rng.randrange(1, 65536), PUBLISHED, "tcp", "round_robin",
            1000, False, *SERVICE[:3]] for _ in range(n)}

    def messages(self) -> list[Any]:
        """One round of every kind, about honest members chosen at random."""
        views = self.views()
        victims = list(views)
        out: list[Any] = []
        for _ in range(4):
            v = self.rng.choice(victims)
            inc, sv = views[v]
            w, lim = self.cfg.counter_window, self.cfg.counter_limit
            out += [Suspect(TOP, v, self.name), Dead(TOP, v, self.name),
                    Alive(TOP, v, "10.0.0.1", 7946, TOP), Suspect(lim + 1, v, self.name),
                    Suspect(inc + w, v, self.name), Suspect(inc, v, self.name, 2**32 - 1),
                    StateDelta(v, -1, TOP, self.fake_endpoints(2)),
                    StateDelta(v, sv, sv + w + 1, self.fake_endpoints(2)),
                    UserEvent(TOP, "boom", b"x" * 512, True, self.name)]
            # forged endpoints in an honest member's name, at its next state version
            out.append(StateDelta(v, sv, sv + 1, self.fake_endpoints(1)))
        self.version += 1
        out.append(StateDelta(self.name, -1, self.version, self.fake_endpoints(3)))
        out += [Alive(0, self._fake_name(), self._fake_host(), 7946, 0) for _ in range(20)]
        return out

    def datagram(self, size: int) -> bytes:
        """A payload of up to ``size`` bytes of attack messages."""
        items: list[bytes] = []
        used = codec.ARRAY_HEADER_MAX
        while True:
            for m in self.messages():
                data = codec.encode(m)
                if used + len(data) > size:
                    return codec.pack(items)
                items.append(data)
                used += len(data)

    def push_pull(self, members: int, state_bytes: int) -> PushPull:
        """A push-pull full of fake members (each with fake endpoints), the attacker's own
        record first."""
        own = MemberRecord(self.name, self.host, self.port, 0, 0, TOP, self.fake_endpoints(2))
        pad = max(0, state_bytes - 100)
        recs = [own] + [MemberRecord(self._fake_name(), self._fake_host(), 7946, TOP, 0, 1,
                                     {**self.fake_endpoints(1), "pad": "x" * pad})
                        for _ in range(members - 1)]
        return PushPull(True, self.name, recs, b"", TOP)


# --- the simulator --------------------------------------------------------------------------------


def _placed(names: list[str]) -> tuple[discovery.Expected, set[tuple[str, str]]]:
    """The controller's expected endpoints: one allocation of the service on every honest
    member; and the (allocation, node) pairs that are real."""
    svc = controller_pb2.ExpectedService(
        namespace=SERVICE[0], job=SERVICE[1], group=SERVICE[2], name=SERVICE[3],
        published_port=PUBLISHED, protocol="tcp", lb_policy="round_robin",
        endpoints=[controller_pb2.ExpectedEndpoint(alloc_id=f"alloc-{n}", node=n, port=21000)
                   for n in names])
    real = {(f"alloc-{n}", n) for n in names}
    return discovery.Expected.from_proto(controller_pb2.ExpectedEndpoints(services=[svc])), real


def simulate(n: int, trials: int, *, attack: bool, seed: int, rate: float, pp_every: float,
             pp_members: int, datagram_bytes: int) -> dict[str, Any]:
    """``trials`` crashes in a cluster of ``n`` (the last one the attacker, attacking or
    not): detection times, honest members declared dead, fake endpoints taken."""
    logging.getLogger("lb").setLevel(logging.ERROR)  # every refused endpoint, said once
    cfg = GossipConfig.lan()
    sim = Simulator(cfg, seed=seed)
    names = [x.name for x in sim.start_cluster(n)]
    evil, honest = names[-1], names[:-1]
    for name in honest:
        node = sim.nodes[name]
        sim.set_state(name, {f"ep:web:alloc-{name}": [node.addr[0], 21000, PUBLISHED, "tcp",
                                                      "round_robin", 1, False, *SERVICE[:3]]})
    expected, real = _placed(honest)
    evil_node = sim.nodes[evil]
    rng = random.Random(seed)
    crashed: set[str] = set()
    false_dead: set[tuple[str, str]] = set()
    seen: dict[str, float] = {}
    victim = ""

    def on_event(node: SimNode, ev: MemberEvent) -> None:
        if ev.kind is EventKind.DEAD and node.name != evil:
            if ev.name == victim and node.name not in seen:
                seen[node.name] = sim.now
            elif ev.name in honest and ev.name not in crashed:
                false_dead.add((node.name, ev.name))

    sim.on_event = on_event

    def views() -> dict[str, tuple[int, int]]:
        core = sim.nodes[rng.choice(honest)].core
        return {m: (core.members[m].incarnation, core.members[m].state_version)
                for m in honest if m in core.members and m not in crashed}

    attacker = Attacker(evil, *evil_node.addr, cfg, views, seed)
    pp_sent = datagrams = 0
    limits = codec.Limits.of(cfg)

    def blast() -> None:
        nonlocal datagrams
        if sim.nodes[evil].up:
            target = rng.choice([x for x in honest if x not in crashed])
            sim.deliver(target, evil_node.addr, attacker.datagram(datagram_bytes))
            datagrams += 1
        sim.call_at(sim.now + 1 / rate, blast)

    def frames() -> None:
        nonlocal pp_sent
        target = rng.choice([x for x in honest if x not in crashed])
        data = codec.encode(attacker.push_pull(pp_members, 400))
        try:  # the receiver's decoder, with its limits, as on the wire
            msg = codec.decode_push_pull(data, limits)
        except ProtocolError:  # refused whole: nothing of it reaches the member
            msg = None
        if msg is not None:
            sim.exchange(target, evil_node.addr, msg)
        pp_sent += 1
        sim.call_at(sim.now + pp_every, frames)

    sim.run_for(20)
    if attack:
        blast()
        frames()
    sim.run_for(10)
    times: list[float] = []
    accepted: set[tuple[str, str]] = set()
    missed: list[dict[str, Any]] = []
    wall = time.perf_counter()
    for _ in range(trials):
        victim = rng.choice([x for x in honest if x not in crashed])
        seen.clear()
        sim.run_for(rng.random() * cfg.probe_interval)
        t0 = sim.now
        sim.crash(victim)
        crashed.add(victim)
        live = [x for x in honest if x not in crashed]
        sim.run_until(t0 + 120, stop=lambda live=live: len(seen) >= len(live))  # type: ignore[misc]
        times.append(sim.now - t0 if len(seen) >= len(live) else math.inf)
        if len(seen) < len(live):  # who still holds the crashed member for alive, and how
            for name in live:
                if name not in seen:
                    m = sim.nodes[name].core.members.get(victim)
                    missed.append({"victim": victim, "member": name,
                                   "view": m.status.name if m is not None else None,
                                   "incarnation": m.incarnation if m is not None else None})
        sim.run_for(2)
        for name in live:  # what each honest member's load balancer would route to
            core = sim.nodes[name].core
            built = discovery.endpoint_table(core.snapshot(), name, expected)
            for spec in built.services.values():
                for e in spec.endpoints:
                    if (e.alloc_id, e.node) not in real:
                        accepted.add((e.alloc_id, e.node))
    cores = [sim.nodes[x].core for x in honest if x not in crashed]
    return {"p50": pct(times, 50), "p99": pct(times, 99), "false_dead": len(false_dead),
            "endpoints_accepted": len(accepted), "datagrams": datagrams, "push_pulls": pp_sent,
            "max_members": max(len(c.members) for c in cores),
            "max_candidates": max(c.candidates for c in cores),
            "dropped": _sum_dropped(cores), "wall_s": time.perf_counter() - wall,
            "undetected": missed[:20]}


def _sum_dropped(cores: list[Membership]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in cores:
        for k, v in c.stats.dropped.items():
            out[k] = out.get(k, 0) + v
    return out


# --- real sockets: the honest member's event loop ----------------------------------------------


def _honest(host: str, seconds: float, ready: Any, out: Any) -> None:
    """An honest member on one core, sampling its event loop's lag every 10 ms."""
    import uvloop

    from orch import logs
    from orch.gossip.transport import GossipNode

    logs.setup("error", "human")
    os.sched_setaffinity(0, {0})

    async def main() -> None:
        node = GossipNode(GossipConfig.lan(), name="honest", bind=(host, 0))
        await node.start()
        ready.send(node.addr)
        lags: list[float] = []
        cpu_lags: list[float] = []
        loop = asyncio.get_running_loop()
        start = loop.time() + 2.0  # the attacker joins and builds its messages meanwhile
        end = start + seconds
        while loop.time() < end:
            t, c = loop.time(), time.thread_time()
            await asyncio.sleep(0.01)
            if t >= start:
                lag = max(0.0, loop.time() - t - 0.01)
                lags.append(lag)
                # the part of the lag this process spent running (not waiting for the core
                # while the shared machine ran others): the attack's share of it
                cpu_lags.append(min(lag, max(0.0, time.thread_time() - c - 0.01)))
        assert node.core is not None
        out.send({"lag_p50_ms": 1000 * pct(lags, 50), "lag_p99_ms": 1000 * pct(lags, 99),
                  "lag_max_ms": 1000 * max(lags, default=0.0), "samples": len(lags),
                  "cpu_lag_p99_ms": 1000 * pct(cpu_lags, 99),
                  "packets": node.wire.packets_received, "frames": node.wire.streams_received,
                  "members": len(node.core.members), "candidates": node.core.candidates,
                  "dropped": {**node.wire.dropped, **node.core.stats.dropped}})
        await node.stop()

    uvloop.run(main())


def _attack(host: str, target: tuple[str, int], seconds: float, frame_members: int) -> None:
    """The attacker: a member of the cluster, blasting the honest member from the other
    core with maximum-size datagrams and push-pull frames."""
    import uvloop

    from orch import logs
    from orch.gossip.transport import GossipNode

    logs.setup("error", "human")
    os.sched_setaffinity(0, {1})
    cfg = GossipConfig.lan()

    async def main() -> None:
        node = GossipNode(cfg, name="evil", bind=(host, 0))
        await node.start()
        node.join([target])
        await asyncio.sleep(1.0)
        attacker = Attacker("evil", *node.addr, cfg, lambda: {"honest": (0, 0)})
        datagrams = [codec.seal(attacker.datagram(65_000 - 16), "", None) for _ in range(16)]
        pp = attacker.push_pull(frame_members, 420)
        frame = codec.frame(codec.seal(codec.encode(pp), "", None))
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds + 1.0

        async def streams() -> None:
            while loop.time() < end:
                try:
                    reader, writer = await asyncio.open_connection(*target)
                    writer.write(frame)
                    await writer.drain()
                    await asyncio.wait_for(reader.read(4), 5.0)
                    writer.close()
                except (OSError, TimeoutError):
                    await asyncio.sleep(0.01)

        tasks = [asyncio.create_task(streams()) for _ in range(4)]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            i = 0
            while loop.time() < end:
                for _ in range(64):
                    try:
                        s.sendto(datagrams[i % len(datagrams)], target)
                        i += 1
                    except (BlockingIOError, OSError):
                        break
                await asyncio.sleep(0)  # let the frames go out too
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await node.stop()

    uvloop.run(main())


def sockets(seconds: float, frame_members: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("fork")
    ready_r, ready_w = ctx.Pipe()
    out_r, out_w = ctx.Pipe()
    honest = ctx.Process(target=_honest, args=("127.0.88.1", seconds, ready_w, out_w),
                         daemon=True)
    honest.start()
    addr = ready_r.recv()
    attacker = ctx.Process(target=_attack, args=("127.0.88.2", addr, seconds, frame_members),
                           daemon=True)
    attacker.start()
    res: dict[str, Any] = out_r.recv() if out_r.poll(seconds + 60) else {}
    for p in (attacker, honest):
        p.join(10)
        if p.is_alive():
            p.kill()
    return res


# --- the UDP load balancer under a spoofed flood ----------------------------------------------


def _balancer(ready: Any, stop: Any) -> None:
    """The load balancer and its endpoint (a UDP echo) on one core."""
    import uvloop

    from agent.lb.balancer import LoadBalancer
    from agent.lb.model import Endpoint, ServiceSpec
    from orch import logs

    logs.setup("error", "human")
    os.sched_setaffinity(0, {0})

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: Any) -> None:
            self.transport.sendto(data, addr)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        echo, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.89.2", 0))
        port = echo.get_extra_info("sockname")[1]
        lb = LoadBalancer(bind_host="127.0.89.1")
        await lb.update({"dns": ServiceSpec(name="dns", published_port=0, protocol="udp",
                                            endpoints=(Endpoint(alloc_id="a", node="n",
                                                                host="127.0.89.2",
                                                                port=port),))})
        ready.send(lb.stats()["dns"].port)
        await loop.run_in_executor(None, stop.recv)
        st = lb.stats()["dns"]
        fds = len(os.listdir("/proc/self/fd"))
        stop.send({"sessions": st.active, "rejected_rate": st.rejected_rate,
                   "rejected_busy": getattr(st, "rejected_busy", 0),
                   "evicted": st.evicted, "fds": fds})
        await lb.close()
        echo.close()

    uvloop.run(main())


def _flood(port: int, seconds: float, out: Any) -> None:
    """Datagrams from spoofed sources all over 127.0.0.0/8, as fast as one process sends."""
    os.sched_setaffinity(0, {1})
    anc = [[(socket.IPPROTO_IP, IP_PKTINFO, struct.pack(
        "@I4s4s", 0, socket.inet_aton(f"127.{100 + (i >> 16) % 100}.{(i >> 8) & 255}."
                                      f"{1 + (i & 255) % 254}"), b"\0\0\0\0"))]
           for i in range(65536)]
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 0))
        s.setblocking(False)
        end = time.monotonic() + seconds
        dst = ("127.0.89.1", port)
        while time.monotonic() < end:
            for _ in range(256):
                try:
                    s.sendmsg([b"spoofed query"], anc[sent & 65535], 0, dst)
                    sent += 1
                except (BlockingIOError, PermissionError):  # full; a firewall's drop
                    break
    out.send(sent)


def udp_flood(seconds: float) -> dict[str, Any]:
    ctx = multiprocessing.get_context("fork")
    ready_r, ready_w = ctx.Pipe()
    stop_a, stop_b = ctx.Pipe()
    lb = ctx.Process(target=_balancer, args=(ready_w, stop_b), daemon=True)
    lb.start()
    port = ready_r.recv()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.bind(("127.0.89.3", 0))
        c.connect(("127.0.89.1", port))
        c.settimeout(0.5)
        for _ in range(2):  # asked, answered, asked again: an established client
            c.send(b"hello")
            c.recv(100)
        flood_r, flood_w = ctx.Pipe()
        flood = ctx.Process(target=_flood, args=(port, seconds, flood_w), daemon=True)
        flood.start()
        time.sleep(0.2)
        asked = answered = 0
        end = time.monotonic() + seconds - 0.4
        while time.monotonic() < end:
            asked += 1
            c.send(b"q%d" % asked)
            try:
                while c.recv(100) != b"q%d" % asked:
                    pass
                answered += 1
            except TimeoutError:
                pass
            time.sleep(0.002)
        sent = flood_r.recv()
        flood.join(10)
    stop_a.send("stop")
    res: dict[str, Any] = stop_a.recv() if stop_a.poll(30) else {}
    lb.join(10)
    if lb.is_alive():
        lb.kill()
    return {"asked": asked, "answered": answered, "success": answered / max(asked, 1),
            "flood_pps": sent / seconds, **res}


# --- the section ---------------------------------------------------------------------------------


def hostile_section(result: dict[str, Any], quick: bool, seed: int,
                    timed: Callable[[str, Callable[[], Any]], Any]) -> None:
    n, trials = (30, 3) if quick else (100, 20)
    frame_members = 500 if quick else 16_000
    kw: dict[str, Any] = dict(seed=seed, rate=20.0 if quick else 100.0, pp_every=2.0,
                              pp_members=frame_members, datagram_bytes=8000)
    calm = timed(f"hostile: N={n}, no attack", lambda: simulate(n, trials, attack=False, **kw))
    war = timed(f"hostile: N={n}, attacked", lambda: simulate(n, trials, attack=True, **kw))
    secs = 1.5 if quick else 5.0
    sock = timed("hostile: sockets", lambda: sockets(secs, frame_members))
    flood = timed("hostile: UDP flood", lambda: udp_flood(secs))
    ratio = war["p99"] / calm["p99"] if calm["p99"] else math.nan
    print(table(
        f"Hostile member: N={n} in the simulator ({trials} crashes each), one member sending "
        f"saturated counters, fake members and endpoints ({kw['rate']:g} datagrams of "
        f"{kw['datagram_bytes']} B/s) and push-pulls of {kw['pp_members']} members every "
        f"{kw['pp_every']:g} s",
        ["run", "detect p50 s", "detect p99 s", "honest declared dead", "fake endpoints taken",
         "members (max)", "candidates (max)", "simulator wall s"],
        [[label, r["p50"], r["p99"], r["false_dead"], r["endpoints_accepted"],
          r["max_members"], r["max_candidates"], r["wall_s"]]
         for label, r in (("no attack", calm), ("attacked", war))]))
    print(table(
        f"Hostile member on real sockets ({secs:g} s): an honest member on one core, the "
        "attacker on the other sending 65,000-byte datagrams and push-pull frames of "
        f"{frame_members} members as fast as it can",
        ["loop lag p50 ms", "loop lag p99 ms", "loop lag max ms", "of it running, p99 ms",
         "datagrams taken", "frames taken", "members", "candidates"],
        [[sock.get("lag_p50_ms", math.nan), sock.get("lag_p99_ms", math.nan),
          sock.get("lag_max_ms", math.nan), sock.get("cpu_lag_p99_ms", math.nan),
          sock.get("packets", 0), sock.get("frames", 0),
          sock.get("members", 0), sock.get("candidates", 0)]]))
    print(table(
        f"UDP load balancer under a flood of spoofed sources ({secs:g} s): one established "
        "client asking and waiting (0.5 s) for each answer",
        ["flood datagrams/s", "asked", "answered", "share answered", "sessions",
         "dropped (rate)", "dropped (busy)", "evicted", "open fds"],
        [[flood["flood_pps"], flood["asked"], flood["answered"], flood["success"],
          flood.get("sessions", 0), flood.get("rejected_rate", 0),
          flood.get("rejected_busy", 0), flood.get("evicted", 0),
          flood.get("fds", 0)]]))
    result.update(
        hostile_false_dead=war["false_dead"] + calm["false_dead"],
        hostile_detect_p99_ratio=ratio,
        hostile_detect_p99_s={"attacked": war["p99"], "calm": calm["p99"]},
        hostile_loop_lag_p99_ms=sock.get("lag_p99_ms", math.nan),
        hostile_loop_lag_running_p99_ms=sock.get("cpu_lag_p99_ms", math.nan),
        hostile_endpoints_accepted=war["endpoints_accepted"],
        udp_flood_legit_success=flood["success"],
        hostile=dict(sim_attacked=war, sim_calm=calm, sockets=sock, udp_flood=flood))
    progress(f"hostile: dropped in the simulator {war['dropped']}")
