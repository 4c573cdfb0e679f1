"""The DNS server's I/O: UDP and TCP listeners, per-source limits, forwarding, and the
zone kept current from the agent's endpoint table (the answers themselves are
``answer.Answerer``'s).

The zone is built from the table the routing mesh and templates read too
(``agent.lb.table.EndpointTable``: the endpoints the controller placed, healthy, published
by the node they were placed on, built once per change): after every build of the table
the zone is built again from it and the members alive, and replaces the one served when
its names differ.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable
from typing import cast

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode

from agent.dns import zone as zones
from agent.dns.answer import OUTCOMES, QTYPES, Answerer, Result
from agent.dns.config import DnsConfig
from agent.lb.table import EndpointTable
from orch.gossip.messages import Status
from orch.net import parse_addr
from orch.ratelimit import Limiter

log = logging.getLogger("dns")

LATENCY_BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0)
"""Answer latency histogram bounds (seconds): answers from the zone take tens of µs,
forwarded ones milliseconds."""
TCP_MESSAGE_MAX = 65535
"""The largest DNS message over TCP (its two-byte length)."""
FORWARDS_MAX = 256
"""Queries forwarded upstream at once; more are answered SERVFAIL (a flood does not open
unbounded sockets)."""


class DnsServer:
    def __init__(self, cfg: DnsConfig, me: str, *, mesh_host: str = "",
                 rng: random.Random | None = None) -> None:
        self.cfg, self.me, self.mesh_host = cfg, me, mesh_host
        self.answerer = Answerer(cfg, zones.Zone(cfg.origin), rng)
        self.limiter = Limiter(cfg.rate, cfg.burst, cfg.sources)
        self.counts: dict[tuple[str, str], int] = {
            (q, o): 0 for q in QTYPES for o in OUTCOMES}
        """Queries by (qtype, outcome)."""
        self.latency = [0] * (len(LATENCY_BOUNDS) + 1)
        self.latency_sum = 0.0
        self.addresses: list[tuple[str, int]] = []
        """Where it listens (UDP and TCP each), once started."""
        self.rebuilds = 0
        self.generation = 0
        """The endpoint table's generation the zone was last built from."""
        self.listeners: list[Callable[[zones.Zone], None]] = []
        """Called with every new zone (tests, benchmarks)."""
        self._transports: list[asyncio.DatagramTransport] = []
        self._servers: list[asyncio.Server] = []
        self._tcp = asyncio.Semaphore(cfg.tcp_clients)
        self._forwards = 0
        self._endpoints: EndpointTable | None = None
        self._pending: set[asyncio.Task[None]] = set()

    # --- serving -----------------------------------------------------------------------

    async def listen(self, addr: str, upstreams: list[str] | None = None) -> tuple[str, int]:
        """Serve UDP and TCP at ``addr`` (port 0: one free for both), forwarding other zones
        to ``upstreams`` (None: ``upstreams`` of the settings; []: REFUSED); the address
        bound."""
        host, port = parse_addr(addr, default_port=53, where="dns.addr")
        ups = list(self.cfg.upstreams if upstreams is None else upstreams)
        loop = asyncio.get_running_loop()
        for _ in range(20 if port == 0 else 1):
            transport, _proto = await loop.create_datagram_endpoint(
                lambda: _Udp(self, ups), local_addr=(host, port))
            bound = transport.get_extra_info("sockname")[1]
            try:
                server = await asyncio.start_server(
                    functools.partial(self._serve_tcp, ups), host, bound, reuse_address=True)
            except OSError:
                transport.close()
                if port:
                    raise
                continue
            self._transports.append(transport)
            self._servers.append(server)
            self.addresses.append((host, bound))
            log.info("dns served", extra={"addr": f"{host}:{bound}", "domain": self.cfg.domain})
            return host, bound
        raise OSError(f"no port free for both UDP and TCP on {host}")

    def handle(self, wire: bytes, source: str, *, udp: bool, forward: bool = False) -> Result:
        """One query from ``source`` (pure but for the clock): the limit, then the answer."""
        if self.limiter.take(source, time.monotonic()):  # no token: refused
            self.counts[("other", "ratelimited")] += 1
            return Result(None, "ratelimited", "other")
        return self.answerer.respond(wire, udp=udp, forward=forward)

    def count(self, result: Result, started: float) -> None:
        self.counts[(result.qtype, result.outcome)] += 1
        took = time.perf_counter() - started
        self.latency[bisect.bisect_left(LATENCY_BOUNDS, took)] += 1
        self.latency_sum += took

    async def forward(self, query: dns.message.Message, udp: bool,
                      upstreams: list[str]) -> bytes:
        """``query`` answered by the first upstream that answers; SERVFAIL if none does."""
        if self._forwards < FORWARDS_MAX:
            self._forwards += 1
            try:
                for up in upstreams:
                    host, port = parse_addr(up, default_port=53, where="dns.upstreams")
                    try:
                        r = await dns.asyncquery.udp(query, host, port=port,
                                                     timeout=self.cfg.upstream_timeout)
                        if r.flags & dns.flags.TC and not udp:
                            r = await dns.asyncquery.tcp(query, host, port=port,
                                                         timeout=self.cfg.upstream_timeout)
                        r.flags |= dns.flags.RA  # this server recursed for the client
                        return r.to_wire(max_size=self.cfg.udp_payload if udp else
                                         TCP_MESSAGE_MAX)
                    except (OSError, dns.exception.DNSException) as e:
                        log.debug("upstream failed", extra={"upstream": up, "error": str(e)})
            finally:
                self._forwards -= 1
        r = dns.message.make_response(query)
        r.set_rcode(dns.rcode.SERVFAIL)
        return r.to_wire()

    async def _serve_tcp(self, upstreams: list[str], reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if peer else "?"
        try:
            async with self._tcp:
                while True:
                    async with asyncio.timeout(self.cfg.tcp_idle):
                        size = int.from_bytes(await reader.readexactly(2), "big")
                        wire = await reader.readexactly(size)
                    started = time.perf_counter()
                    result = self.handle(wire, source, udp=False, forward=bool(upstreams))
                    out = result.wire
                    if result.outcome == "forward" and result.query is not None:
                        out = await self.forward(result.query, udp=False, upstreams=upstreams)
                    if result.outcome != "ratelimited":
                        self.count(result, started)
                    if out is None:
                        break  # a malformed message over TCP: the stream cannot be trusted
                    writer.write(len(out).to_bytes(2, "big") + out)
                    await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    # --- the zone ----------------------------------------------------------------------

    def start(self, endpoints: EndpointTable) -> None:
        """Keep the zone current from the agent's endpoint table."""
        self._endpoints = endpoints
        endpoints.listeners.append(self._built)
        if endpoints.builds:
            self._built(endpoints)

    def _built(self, _: EndpointTable) -> None:
        try:
            self.rebuild()
        except Exception:  # a bug: keep the last zone and try again at the next build
            log.exception("dns zone rebuild failed")

    def rebuild(self) -> zones.Zone:
        """The zone of the endpoint table's last build (served when its names changed)."""
        assert self._endpoints is not None, "start() first"
        src = self._endpoints
        nodes = [(m.name, m.addr[0]) for m in src.members if m.status is Status.ALIVE]
        zone = zones.build(self.cfg.origin, src.table.catalog, nodes, me=self.me,
                           mesh_host=self.mesh_host, service_ttl=self.cfg.service_ttl,
                           node_ttl=self.cfg.node_ttl, version=self.rebuilds + 1)
        self.generation = src.generation
        if zone.names != self.answerer.zone.names or zone.parents != self.answerer.zone.parents:
            self.rebuilds += 1
            self.answerer.set_zone(zone)
            for fn in self.listeners:
                fn(zone)
        return zone

    async def close(self) -> None:
        if self._endpoints is not None:
            with contextlib.suppress(ValueError):
                self._endpoints.listeners.remove(self._built)
        for t in self._transports:
            t.close()
        for s in self._servers:
            s.close()
        for p in list(self._pending):
            p.cancel()
        for s in self._servers:
            with contextlib.suppress(Exception):
                await s.wait_closed()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer, upstreams: list[str]) -> None:
        self.server = server
        self.upstreams = upstreams
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        started = time.perf_counter()
        server = self.server
        result = server.handle(data, addr[0], udp=True, forward=bool(self.upstreams))
        if result.outcome == "ratelimited":
            return
        if result.outcome == "forward" and result.query is not None:
            task = asyncio.get_running_loop().create_task(
                self._forward(result, addr, started))
            server._pending.add(task)
            task.add_done_callback(server._pending.discard)
            return
        server.count(result, started)
        if result.wire is not None and self.transport is not None:
            self.transport.sendto(result.wire, addr)

    async def _forward(self, result: Result, addr: tuple[str, int], started: float) -> None:
        assert result.query is not None
        out = await self.server.forward(result.query, udp=True, upstreams=self.upstreams)
        self.server.count(result, started)
        if self.transport is not None:
            self.transport.sendto(out, addr)
