"""One published service as the proxy runs it: its pool, listener state and counters."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
from typing import Any, Protocol

from agent.lb.config import LbConfig
from agent.lb.model import ServiceSpec
from agent.lb.pool import Backend, Pool
from agent.lb.stats import Histogram, ServiceStats

log = logging.getLogger("lb")


class Conn(Protocol):
    """A client connection (TCP) or session (UDP) the service holds."""

    backend: Backend | None
    prefix: str
    """The client's network (``max_per_prefix``); "" when not counted."""

    def abort(self) -> None: ...
    def io_total(self) -> tuple[int, int]: ...


class ServiceState:
    """Counters and connections of one service, shared by its listener and connections."""

    def __init__(self, spec: ServiceSpec, cfg: LbConfig, loop: asyncio.AbstractEventLoop,
                 rng: random.Random) -> None:
        self.spec = spec
        self.cfg = cfg
        self.loop = loop
        self.pool = Pool(spec.policy, cfg, rng)
        self.pool.set_endpoints(spec.endpoints)
        self.hash_client = spec.policy == "maglev"
        self.conns: set[Any] = set()
        self.listener: Any = None
        """The asyncio Server (TCP) or listening datagram transport (UDP), when bound."""
        self.port = spec.published_port
        self.bind_error: str | None = None
        self.removed = False
        """The service left the table: no listener, its connections drain."""
        self.drain_handles: list[asyncio.TimerHandle] = []
        self.connecting: dict[Any, float] = {}
        """Connections with a connect in progress, and when it times out."""
        self._connect_timer: asyncio.TimerHandle | None = None
        self._connect_tick = cfg.connect_timeout / 8
        # counters
        self.active = 0
        self.total = 0
        self.rejected = 0
        self.rejected_prefix = 0
        self.rejected_rate = 0
        self.rejected_busy = 0
        self.evicted = 0
        self.failed = 0
        self.connect_failures = 0
        self.retries = 0
        self.ejections = 0
        self.bytes_in_closed = 0
        self.bytes_out_closed = 0
        self.latency = Histogram()
        self.failed_logged = False
        """A "no endpoint reachable" warning was logged and no client was served since."""
        self.prefixes: dict[str, int] = {}
        """Open connections (sessions) per client network."""
        self.limit_logged = False
        """A "client network at its limit" warning was logged since the last one ended."""

    def admit_prefix(self, host: str) -> str | None:
        """The client's network, counted, when it may open one more connection; None
        (counted as rejected) when it holds ``max_per_prefix`` already."""
        prefix = client_prefix(host, self.cfg.prefix_v4, self.cfg.prefix_v6)
        n = self.prefixes.get(prefix, 0)
        if n >= self.cfg.max_per_prefix:
            self.rejected_prefix += 1
            if not self.limit_logged:
                self.limit_logged = True
                log.warning("a client network holds its share of the service; more clients "
                            "from it are turned away", extra={
                                "service": self.name, "network": prefix,
                                "limit": self.cfg.max_per_prefix})
            return None
        self.prefixes[prefix] = n + 1
        return prefix

    @property
    def name(self) -> str:
        return self.spec.name

    def update(self, spec: ServiceSpec) -> list[Backend]:
        """New endpoints (and policy) for the same name and port; the backends removed."""
        self.spec = spec
        self.pool.set_policy(spec.policy)
        self.hash_client = spec.policy == "maglev"
        return self.pool.set_endpoints(spec.endpoints)

    def drain(self, backends: list[Backend]) -> None:
        """Close the connections still on ``backends`` when the drain grace ends."""
        if not backends:
            return
        for b in backends:
            if not b.conns:
                self.pool.forget(b)
        if any(b.conns for b in backends):
            h = self.loop.call_later(self.cfg.drain_grace, self._end_drain, backends)
            self.drain_handles.append(h)

    def _end_drain(self, backends: list[Backend]) -> None:
        for b in backends:
            if b.draining:
                for c in list(b.conns):
                    c.abort()
                self.pool.forget(b)

    def drain_all(self) -> None:
        """The service was removed: every connection goes when the grace ends."""
        self.removed = True
        if self.conns:
            h = self.loop.call_later(self.cfg.drain_grace, self.abort_all)
            self.drain_handles.append(h)

    def abort_all(self) -> None:
        for c in list(self.conns):
            c.abort()

    def release(self, conn: Conn) -> None:
        """``conn`` has closed on every side."""
        if conn not in self.conns:
            return
        self.conns.discard(conn)
        self.active -= 1
        if conn.prefix:
            n = self.prefixes.get(conn.prefix, 0) - 1
            if n > 0:
                self.prefixes[conn.prefix] = n
            else:
                self.prefixes.pop(conn.prefix, None)
                self.limit_logged = False
        bi, bo = conn.io_total()
        self.bytes_in_closed += bi
        self.bytes_out_closed += bo
        b = conn.backend
        if b is not None:
            conn.backend = None
            b.active -= 1
            b.conns.discard(conn)
            if b.draining and not b.conns:
                self.pool.forget(b)

    def no_endpoint(self, reason: str) -> None:
        """A client is turned away: no endpoint could be reached. Logged once per streak."""
        self.failed += 1
        if not self.failed_logged:
            self.failed_logged = True
            log.warning("no endpoint reachable, client closed", extra={
                "service": self.name, "reason": reason,
                "endpoints": len(self.pool.members)})

    # --- connect timeouts: one timer per service, not one per connect ------------------
    def connect_started(self, conn: Any) -> None:
        """``conn`` started a connect; it is told ``connect_timed_out()`` if it is still in
        ``connecting`` after ``connect_timeout`` (checked every eighth of it)."""
        self.connecting[conn] = self.loop.time() + self.cfg.connect_timeout
        if self._connect_timer is None:
            self._connect_timer = self.loop.call_later(self._connect_tick, self._check_connects)

    def _check_connects(self) -> None:
        self._connect_timer = None
        now = self.loop.time()
        late = [c for c, deadline in self.connecting.items() if deadline <= now]
        for c in late:
            del self.connecting[c]
            c.connect_timed_out()
        if self.connecting:
            self._connect_timer = self.loop.call_later(self._connect_tick, self._check_connects)

    def stop_timers(self) -> None:
        for h in self.drain_handles:
            h.cancel()
        if self._connect_timer is not None:
            self._connect_timer.cancel()
            self._connect_timer = None

    def stats(self) -> ServiceStats:
        now = self.loop.time()
        bi, bo = self.bytes_in_closed, self.bytes_out_closed
        for c in self.conns:
            i, o = c.io_total()
            bi += i
            bo += o
        details = tuple(self.pool.endpoint_stats(now))
        states = {"healthy": 0, "probing": 0, "ejected": 0, "draining": 0}
        for d in details:
            states[d.state] += 1
        return ServiceStats(
            name=self.name, namespace=self.spec.namespace, job=self.spec.job,
            group=self.spec.group, rejected_prefix=self.rejected_prefix,
            rejected_rate=self.rejected_rate, rejected_busy=self.rejected_busy,
            evicted=self.evicted,
            protocol=self.spec.protocol, policy=self.spec.policy, port=self.port,
            listening=self.listener is not None, bind_error=self.bind_error, active=self.active,
            total=self.total, rejected=self.rejected, failed=self.failed, bytes_in=bi,
            bytes_out=bo, connect_failures=self.connect_failures, retries=self.retries,
            ejections=self.ejections, endpoints=states, endpoint_details=details,
            connect_latency=self.latency.copy())


def client_prefix(host: str, v4: int = 24, v6: int = 64) -> str:
    """The network of a client address that ``max_per_prefix`` counts (``a.b.c`` for a /24)."""
    if ":" not in host and v4 == 24:
        return host.rpartition(".")[0]
    try:
        return str(ipaddress.ip_network(f"{host}/{v6 if ':' in host else v4}", strict=False))
    except ValueError:
        return host
