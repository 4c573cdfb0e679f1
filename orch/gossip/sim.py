"""A discrete-event simulator that runs the real gossip core for thousands of members.

Every member is a ``Membership`` fed by a fake clock and a fake network that can
lose, delay and partition packets, crash and restart members, and slow some of
them down (their packets leave late, as from a stalled process). Payloads are
the real encoded bytes, so the codec and the packet size limit are exercised
too; only encryption is skipped (it does not change the protocol's behaviour).

    sim = Simulator(GossipConfig.lan(), seed=1)
    sim.start_cluster(100)
    sim.run_for(30)
    sim.crash("n0042")
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from orch.gossip import codec
from orch.gossip.config import GossipConfig
from orch.gossip.core import MemberEvent, Membership, Send, Stream
from orch.gossip.messages import Addr, PushPull, UserEvent

_DELIVER, _WAKE, _STREAM, _STREAM_DONE, _CALL = range(5)


@dataclass(slots=True)
class NetConfig:
    latency: float = 0.0005
    """One-way delay of every packet, seconds."""
    jitter: float = 0.0005
    """Extra uniform random delay, seconds."""
    loss: float = 0.0
    """Probability that a datagram is lost."""
    stream_latency: float = 0.002
    """One-way delay of a TCP exchange (never lost; refused when the peer is down)."""
    path_latency: Callable[[Addr, Addr], float] | None = None
    """One-way delay between two members, replacing ``latency`` (a network with a shape)."""


@dataclass(slots=True, eq=False)
class SimNode:
    name: str
    addr: Addr
    core: Membership
    up: bool = True
    slow: Callable[[random.Random], float] | None = None
    """Extra delay for every packet this node sends, when it is slowed."""
    group: int = 0
    """Partition group: packets only flow within a group while partitioned."""
    wake_at: float = math.inf
    packets_sent: int = 0
    bytes_sent: int = 0
    packets_received: int = 0


@dataclass(slots=True)
class Totals:
    packets: int = 0
    bytes: int = 0
    lost: int = 0
    streams: int = 0
    stream_bytes: int = 0
    events: dict[str, int] = field(default_factory=dict)


class Simulator:
    def __init__(self, cfg: GossipConfig, *, net: NetConfig | None = None, seed: int = 0) -> None:
        self.cfg = cfg
        self.net = net or NetConfig()
        self.rng = random.Random(seed)
        self.now = 0.0
        self.nodes: dict[str, SimNode] = {}
        self.by_addr: dict[Addr, SimNode] = {}
        self.totals = Totals()
        self.partitioned = False
        self.on_event: Callable[[SimNode, MemberEvent], None] | None = None
        self.on_user_event: Callable[[SimNode, UserEvent], None] | None = None
        self._heap: list[tuple[Any, ...]] = []
        self._seq = itertools.count()
        # the envelope without encryption (the simulator does not encrypt)
        self._overhead = codec.HEADER_SIZE + len(cfg.label.encode())
        self._next_ip = 0

    # --- building clusters -------------------------------------------------------------------

    def add_node(self, name: str, *, join: Iterable[str] = (), cfg: GossipConfig | None = None,
                 state: dict[str, Any] | None = None) -> SimNode:
        """Start a member (a restart when ``name`` existed) and join it through ``join``."""
        old = self.nodes.get(name)
        if old is not None:
            addr = old.addr
            old.core.stop()
        else:
            self._next_ip += 1
            addr = (f"10.{self._next_ip >> 16 & 255}.{self._next_ip >> 8 & 255}.{self._next_ip & 255}", 7946)
        core = Membership(cfg or self.cfg, name=name, addr=addr, rng=random.Random(self.rng.random()),
                          now=self.now, state=state)
        node = SimNode(name, addr, core)
        if old is not None:
            node.group = old.group
        self.nodes[name] = node
        self.by_addr[addr] = node
        seeds = [self.nodes[s].addr for s in join if s in self.nodes and s != name]
        self._handle(node, core.join(seeds, self.now) if seeds else core.tick(self.now))
        return node

    def start_cluster(self, n: int, *, prefix: str = "n", settle: bool = True) -> list[SimNode]:
        """``n`` members that already know each other (as after a converged join)."""
        width = len(str(n))
        names = [f"{prefix}{i:0{width}d}" for i in range(n)]
        nodes = [self.add_node(nm) for nm in names]
        everyone = [(x.name, x.addr) for x in nodes]
        for node in nodes:
            node.core.preload(everyone, self.now)
        if settle:
            self.run_for(0.001)
        return nodes

    # --- faults ------------------------------------------------------------------------------

    def fire_event(self, name: str, event: str, payload: bytes = b"") -> None:
        """Member ``name`` fires a user event."""
        node = self.nodes[name]
        self._handle(node, node.core.fire_event(event, payload, self.now))

    def crash(self, name: str) -> None:
        node = self.nodes[name]
        node.up = False
        node.core.stop()

    def leave(self, name: str) -> None:
        node = self.nodes[name]
        self._handle(node, node.core.leave(self.now))
        self.call_at(self.now + self.cfg.leave_propagate_time, lambda: self.crash(name))

    def set_state(self, name: str, changes: dict[str, Any]) -> None:
        node = self.nodes[name]
        self._handle(node, node.core.set_state(changes, self.now))

    def slow(self, name: str, delay: Callable[[random.Random], float] | None) -> None:
        self.nodes[name].slow = delay

    def partition(self, groups: list[Iterable[str]]) -> None:
        """Split the network: members of different groups cannot reach each other."""
        for i, g in enumerate(groups):
            for name in g:
                self.nodes[name].group = i + 1
        self.partitioned = True

    def heal(self) -> None:
        for node in self.nodes.values():
            node.group = 0
        self.partitioned = False

    def deliver(self, name: str, src: Addr, payload: bytes) -> None:
        """A datagram payload from ``src`` (anyone: a hostile member, say) reaches member
        ``name`` now."""
        node = self.nodes[name]
        if node.up:
            node.packets_received += 1
            self._handle(node, node.core.receive_packet(src, payload, self.now))

    def exchange(self, name: str, src: Addr, msg: PushPull) -> PushPull | None:
        """A push-pull from ``src`` reaches member ``name`` now; its answer (None: down)."""
        node = self.nodes[name]
        if not node.up:
            return None
        reply, effects = node.core.stream_request(src, msg, self.now)
        self._handle(node, effects)
        return reply

    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), _CALL, fn, None, None))

    # --- running -----------------------------------------------------------------------------

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def run_until(self, end: float, stop: Callable[[], bool] | None = None) -> None:
        heap = self._heap
        pop = heapq.heappop
        node: SimNode
        while heap and heap[0][0] <= end:
            t, _, kind, a, b, c = pop(heap)
            self.now = t
            if kind == _DELIVER:
                dst = self.by_addr.get(a)
                if dst is not None and dst.up:
                    dst.packets_received += 1
                    self._handle(dst, dst.core.receive_packet(b, c, t))
            elif kind == _WAKE:
                node = a
                if node.up and node.wake_at == t and self.nodes.get(node.name) is node:
                    node.wake_at = math.inf
                    self._handle(node, node.core.tick(t))
            elif kind == _STREAM:
                self._stream(a, b, t)
            elif kind == _STREAM_DONE:
                node = a
                if node.up and self.nodes.get(node.name) is node:
                    self._handle(node, node.core.stream_done(b, c, t))
            else:
                a()
            if stop is not None and stop():
                return
        self.now = end

    def _handle(self, node: SimNode, effects: list[Any]) -> None:
        if effects:
            net = self.net
            now = self.now
            for e in effects:
                t = type(e)
                if t is Send:
                    size = len(e.payload) + self._overhead
                    node.packets_sent += 1
                    node.bytes_sent += size
                    self.totals.packets += 1
                    self.totals.bytes += size
                    dst = self.by_addr.get(e.addr)
                    if net.loss and self.rng.random() < net.loss:
                        self.totals.lost += 1
                        continue
                    if dst is None or (self.partitioned and dst.group != node.group):
                        continue
                    base = net.path_latency(node.addr, e.addr) if net.path_latency else net.latency
                    delay = base + self.rng.random() * net.jitter
                    if node.slow is not None:
                        delay += node.slow(self.rng)
                    heapq.heappush(self._heap, (now + delay, next(self._seq), _DELIVER,
                                                e.addr, node.addr, e.payload))
                elif t is Stream:
                    self.totals.streams += 1
                    delay = net.stream_latency + (node.slow(self.rng) if node.slow else 0.0)
                    heapq.heappush(self._heap, (now + delay, next(self._seq), _STREAM, node, e, None))
                elif t is UserEvent:
                    if self.on_user_event is not None:
                        self.on_user_event(node, e)
                else:
                    self.totals.events[e.kind.value] = self.totals.events.get(e.kind.value, 0) + 1
                    if self.on_event is not None:
                        self.on_event(node, e)
        d = node.core.next_deadline()
        if d < node.wake_at:
            node.wake_at = d
            heapq.heappush(self._heap, (d, next(self._seq), _WAKE, node, None, None))

    def _stream(self, node: SimNode, stream: Stream, t: float) -> None:
        peer = self.by_addr.get(stream.addr)
        lat = self.net.stream_latency
        reply: PushPull | None = None
        if peer is None or not peer.up:
            done = t + lat  # connection refused
        elif self.partitioned and peer.group != node.group:
            done = t + self.cfg.stream_timeout  # no answer: the connect times out
        else:
            self.totals.stream_bytes += len(codec.encode(stream.message))
            reply, effects = peer.core.stream_request(node.addr, stream.message, t)
            self.totals.stream_bytes += len(codec.encode(reply))
            self._handle(peer, effects)
            done = t + lat
        heapq.heappush(self._heap, (done, next(self._seq), _STREAM_DONE, node, stream, reply))

    # --- observing ---------------------------------------------------------------------------

    def live_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.up]

    def converged(self, expect_alive: int | None = None) -> bool:
        """Every live member sees every live member alive (and no one else alive)."""
        live = {n.name for n in self.nodes.values() if n.up}
        want = len(live) if expect_alive is None else expect_alive
        for n in self.nodes.values():
            if not n.up:
                continue
            alive = {m.name for m in n.core.members.values() if m.status == 0}
            if len(alive) != want or not alive <= live:
                return False
        return True
