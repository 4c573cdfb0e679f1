"""The TCP proxy: one client connection and its endpoint connection, as asyncio protocols.

Bytes go straight from ``data_received`` to the other side's ``transport.write`` (no copy
in Python; uvloop reads up to 256 KiB at a time and sends each transport's writes once
per loop turn). Back-pressure: when one side's write buffer passes the high
water mark its ``pause_writing`` pauses reading on the other side, and ``resume_writing``
resumes it, so a slow reader holds at most about one high water mark plus one read per
direction. Half-close: an EOF from one side becomes ``write_eof`` on the other, and the
connection closes when both directions have ended. Idle connections are closed by the
balancer's sweep (no timer per connection).

Lifetime: a connection stays in its service's ``conns`` (reachable from the balancer)
until both of its transports have reported ``connection_lost``. This matters beyond
bookkeeping: uvloop does not keep a transport alive for a pending ``write_eof``
(shutdown request), so a transport that became garbage (a protocol ↔ transport cycle
collected by the GC) while libuv still held that request crashes the process (double free,
seen with uvloop 0.2x under ``Connection: close`` load). Once released, the references
between the two sides are dropped so that refcounting, not the cyclic GC, frees them.

Connecting: the client's first bytes are kept (up to ``pending_limit``; reading pauses
beyond) while an endpoint is tried; a connect that fails or times out is counted against
that endpoint (outlier detection) and the next one is tried, up to ``connect_retries``
times. Only when none answers is the client closed.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from time import perf_counter
from typing import Any

from agent.lb.pool import Backend
from agent.lb.proxy_protocol import header as proxy_header
from agent.lb.service import ServiceState

log = logging.getLogger("lb")


class Upstream(asyncio.Protocol):
    """The endpoint side of a proxied connection."""

    __slots__ = ("client", "conn", "nbytes", "transport")

    def __init__(self, conn: TcpConnection) -> None:
        self.conn = conn
        self.client: Any = conn.transport
        self.transport: Any = None
        self.nbytes = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.conn.attach(self)

    def data_received(self, data: bytes) -> None:
        self.client.write(data)
        self.nbytes += len(data)

    def eof_received(self) -> bool:
        return self.conn.upstream_eof(self)

    def pause_writing(self) -> None:
        self.conn.pause_client(True)

    def resume_writing(self) -> None:
        self.conn.pause_client(False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.upstream_lost(self, exc)


class TcpConnection(asyncio.Protocol):
    """A client connection to a published port, and the endpoint connection it is given."""

    __slots__ = ("_paused_pending", "_paused_up", "aborted", "backend", "bytes_in", "client_eof",
                 "client_open", "idle_since", "pending", "pending_bytes", "prefix", "seen", "svc",
                 "task", "timed_out", "transport", "up", "up_eof", "up_open", "up_transport")

    def __init__(self, svc: ServiceState) -> None:
        self.svc = svc
        self.transport: Any = None
        self.up: Upstream | None = None
        self.up_transport: Any = None
        self.backend: Backend | None = None
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.bytes_in = 0
        self.client_eof = False
        self.up_eof = False
        self.client_open = False
        self.up_open = False
        self._paused_pending = False
        self._paused_up = False
        self.task: asyncio.Task[None] | None = None
        self.timed_out = False
        self.aborted = False
        self.seen = 0
        self.idle_since = -1.0
        """When the idle sweep last saw bytes move (-1: not swept yet)."""
        self.prefix = ""

    # --- client side -----------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        svc = self.svc
        self.transport = transport
        if svc.active >= svc.cfg.max_connections or svc.removed:
            svc.rejected += 1
            transport.abort()
            return
        peer = transport.get_extra_info("peername")
        prefix = svc.admit_prefix(peer[0]) if peer else ""
        if prefix is None:
            transport.abort()
            return
        self.prefix = prefix
        self.client_open = True
        svc.active += 1
        svc.total += 1
        svc.conns.add(self)
        transport.set_write_buffer_limits(svc.cfg.write_high_water, svc.cfg.write_low_water)
        self.task = svc.loop.create_task(self._connect())

    def data_received(self, data: bytes) -> None:
        up = self.up_transport
        if up is not None:
            up.write(data)
            self.bytes_in += len(data)
            return
        self.pending.append(data)
        self.pending_bytes += len(data)
        if self.pending_bytes >= self.svc.cfg.pending_limit and not self._paused_pending:
            self._paused_pending = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.client_eof = True
        up = self.up_transport
        if up is not None:
            if self.up_eof:
                self._close_both()
            elif not up.is_closing():
                up.write_eof()
        return True

    def pause_writing(self) -> None:
        if self.up_transport is not None:
            self.up_transport.pause_reading()

    def resume_writing(self) -> None:
        if self.up_transport is not None:
            self.up_transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.client_open:
            return
        self.client_open = False
        if self.task is not None and self.up is None:
            self.task.cancel()
            self.svc.connecting.pop(self, None)
        up = self.up_transport
        if up is not None and self.up_open:
            if exc is None:
                up.close()  # what the client sent still reaches the endpoint
            else:
                up.abort()
        self._maybe_release()

    # --- endpoint side ---------------------------------------------------------------
    def attach(self, up: Upstream) -> None:
        """The endpoint connection is made: send what the client sent so far."""
        self.svc.connecting.pop(self, None)
        t = up.transport
        if not self.client_open or self.aborted or self.timed_out:
            t.abort()  # too late: the client left, the connection is being cut, or timed out
            return
        self.up = up
        self.up_transport = t
        self.up_open = True
        cfg = self.svc.cfg
        t.set_write_buffer_limits(cfg.write_high_water, cfg.write_low_water)
        b = self.backend
        first = b""
        if b is not None and b.endpoint.proxy_protocol:
            first = proxy_header(self.transport.get_extra_info("peername"),
                                 self.transport.get_extra_info("sockname"))
        if self.pending:
            data = b"".join(self.pending)
            self.bytes_in += len(data)
            first += data
            self.pending = []
            self.pending_bytes = 0
        if first:
            t.write(first)
        if self.client_eof and t.can_write_eof():
            t.write_eof()
        if self._paused_pending:
            self._paused_pending = False
            if not self._paused_up:
                self.transport.resume_reading()

    def pause_client(self, pause: bool) -> None:
        """The endpoint's write buffer passed the high (or fell below the low) water mark."""
        self._paused_up = pause
        if pause:
            self.transport.pause_reading()
        elif not self._paused_pending:
            self.transport.resume_reading()

    def upstream_eof(self, up: Upstream) -> bool:
        if up is not self.up:
            return False
        self.up_eof = True
        if self.client_eof:
            self._close_both()
        else:
            # Forwarded on the next turn of the loop: the response just written often
            # makes the client close first, and then no shutdown is needed at all.
            self.svc.loop.call_soon(self._forward_eof)
        return True

    def _forward_eof(self) -> None:
        if not self.client_open:
            return
        if self.client_eof:
            self._close_both()
        elif not self.transport.is_closing():
            self.transport.write_eof()

    def upstream_lost(self, up: Upstream, exc: Exception | None) -> None:
        if up is not self.up:
            return
        self.up_open = False
        if self.client_open:
            if exc is None:
                self.transport.close()  # the rest of the response still reaches the client
            else:
                self.transport.abort()
        self._maybe_release()

    # --- both ------------------------------------------------------------------------
    def _close_both(self) -> None:
        self.transport.close()
        if self.up_transport is not None:
            self.up_transport.close()

    def abort(self) -> None:
        """Cut both sides now (drain over, idle, or the balancer closing)."""
        self.aborted = True
        if self.task is not None and self.up is None:
            self.task.cancel()
        if self.up_transport is not None and self.up_open:
            self.up_transport.abort()
        if self.client_open:
            self.transport.abort()

    def _maybe_release(self) -> None:
        if not self.client_open and not self.up_open:
            self.svc.release(self)
            # No cycle left behind (connection ↔ endpoint side): refcounting frees both
            # now, not the cyclic GC later.
            self.up = None
            self.task = None

    def io_total(self) -> tuple[int, int]:
        return self.bytes_in, (self.up.nbytes if self.up is not None else 0)

    async def _connect(self) -> None:
        svc = self.svc
        loop = svc.loop
        pool = svc.pool
        cfg = svc.cfg
        client = self.transport.get_extra_info("peername")[0] if svc.hash_client else ""
        tried: set[Backend] | None = None
        last = "no endpoints"
        for attempt in range(cfg.connect_retries + 1):
            b = pool.choose(client, loop.time(), tried)
            if b is None:
                break
            if attempt:
                svc.retries += 1
            self.backend = b
            b.active += 1
            b.total += 1
            b.conns.add(self)
            ep = b.endpoint
            svc.connect_started(self)
            started = perf_counter()  # uvloop's clock ticks in milliseconds
            try:
                await loop.create_connection(partial(Upstream, self), ep.host, ep.port)
            except (OSError, asyncio.CancelledError) as e:
                svc.connecting.pop(self, None)
                if isinstance(e, asyncio.CancelledError):
                    if not self.timed_out:  # the client left, or the balancer is closing
                        raise
                    self.timed_out = False
                    task = asyncio.current_task()
                    if task is not None:
                        task.uncancel()
                    last = f"connect to {b.name} timed out after {cfg.connect_timeout}s"
                else:
                    last = f"connect to {b.name}: {e.strerror or e}"
                self.backend = None
                b.active -= 1
                b.conns.discard(self)
                svc.connect_failures += 1
                if pool.failed(b, loop.time()):
                    svc.ejections += 1
                    log.warning("endpoint ejected", extra={
                        "service": svc.name, "endpoint": b.name, "alloc": b.endpoint.alloc_id,
                        "reason": last, "ejections": b.ejections})
                if tried is None:
                    tried = set()
                tried.add(b)
                continue
            svc.latency.observe(perf_counter() - started)
            if b.failing:
                pool.connected(b, loop.time())
            if svc.failed_logged:
                svc.failed_logged = False
            return
        if self.client_open:
            svc.no_endpoint(last)
            self.transport.abort()

    def connect_timed_out(self) -> None:
        """The service's connect check found this connect past ``connect_timeout``."""
        if self.up is None and self.task is not None:
            self.timed_out = True
            self.task.cancel()

