"""The UDP proxy: a session per client address, each with its own connected socket.

The listener receives every client's datagrams on the published port. A client's first
datagram opens a session: an endpoint is chosen (by the service's policy) and a UDP
socket connected to it, so the endpoint's replies arrive on that socket and are sent back
to the client from the published port. The client keeps its endpoint (affinity) until
the session has been idle for ``udp_session_timeout`` (the balancer's sweep ends it).
An ICMP error from the endpoint (nothing listens there) counts as a failed connect for
outlier detection and ends the session, so the next datagram chooses again.

A removed endpoint's sessions drain for ``drain_grace``, and so do a removed service's:
its listener stays open meanwhile (the replies leave from it) but opens no new session.

A client's source address is not proven (anyone can send a datagram from any address), so
sessions are held to what a flood of spoofed sources can take: a session is *new* until
the client sends a datagram after its endpoint answered (a spoofed source never sees the
answer); new sessions are opened at a bounded rate (``udp_new_session_rate``: past it, a
datagram from a new client is dropped at the cost of a look-up), are few
(``udp_new_sessions``), live briefly when idle (``udp_new_session_timeout``) and give way,
the one idle longest first, to a new client when there are too many or the service is at
``max_connections``. Established sessions never give way to new ones. Sessions per client
network are bounded (``max_per_prefix``).

Opening a session costs far more than dropping a datagram, and on a loaded machine the rate
alone may ask for more than the event loop can give: then datagrams queue in the published
socket's kernel buffer until it overflows, and the kernel drops an established client's
datagrams with the flood's. So the published socket has a large buffer
(``udp_receive_buffer``) and, while more than ``udp_busy_backlog`` bytes wait in it (the
loop is behind), a datagram from a new client is dropped (reason ``busy``) until the loop
has caught up: established clients are served first.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import Any

from agent.lb.pool import Backend
from agent.lb.proxy_protocol import header as proxy_header
from agent.lb.service import ServiceState
from orch.ratelimit import TokenBucket

log = logging.getLogger("lb")

Addr = tuple[Any, ...]

BUSY_SKIP = 64
"""New clients' datagrams dropped without measuring the queue again once it was found
past ``udp_busy_backlog`` (a measure is a system call; the queue then holds hundreds)."""
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
"""Linux: set a receive buffer beyond ``net.core.rmem_max`` (needs CAP_NET_ADMIN)."""
SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)
"""Linux: a socket's memory; its first 32-bit word is the receive queue's bytes."""


def udp_listening_socket(host: str, port: int, receive_buffer: int) -> socket.socket:
    """A bound, non-blocking UDP socket for a published port with a large receive buffer."""
    family, kind, proto, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, receive_buffer)
        except OSError:  # not privileged: up to net.core.rmem_max
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock


def receive_queue(sock: Any) -> int:
    """Bytes waiting in a socket's receive queue (kernel memory); 0 where unknown."""
    try:
        return int(struct.unpack("=I", sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4))[0])
    except OSError:
        return 0


class UdpListener(asyncio.DatagramProtocol):
    """The published port: routes each datagram to its client's session."""

    def __init__(self, svc: ServiceState, sock: socket.socket | None = None) -> None:
        self.svc = svc
        self.transport: Any = None
        self.sessions: dict[Addr, UdpSession] = {}
        self.fresh: dict[Addr, UdpSession] = {}
        """The sessions not established yet, the one idle longest first."""
        rate = svc.cfg.udp_new_session_rate
        self._new = TokenBucket(rate, rate, svc.loop.time())
        """New sessions: filled only when empty (a datagram of a known client reads no clock)."""
        self.local: Addr = ("0.0.0.0", 0)
        self._busy = 0
        """New clients' datagrams still to drop before the queue is measured again."""
        self.sock: Any = sock
        """The published socket, for its queue's length (the transport's own is slower)."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.local = transport.get_extra_info("sockname")
        if self.sock is None:
            self.sock = transport.get_extra_info("socket")

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        s = self.sessions.get(addr)
        if s is None:
            new = self._new
            if new.tokens < 1 and new.fill(self.svc.loop.time()) < 1:
                self.svc.rejected_rate += 1
                return
            if self._busy:  # found behind a moment ago: dropped without a system call
                self._busy -= 1
                self.svc.rejected_busy += 1
                return
            if self.sock is not None and receive_queue(self.sock) > self.svc.cfg.udp_busy_backlog:
                self._busy = BUSY_SKIP
                self.svc.rejected_busy += 1  # behind: established clients first
                return
            new.tokens -= 1
            s = self._open(addr)
            if s is None:
                return
        elif s.fresh:
            if s.bytes_out:  # it answers after its endpoint did: established
                s.fresh = False
                del self.fresh[addr]
            else:  # the one idle longest stays first
                del self.fresh[addr]
                self.fresh[addr] = s
        s.send(data)

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error about a client address: nothing to do

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for s in list(self.sessions.values()):
            s.abort()

    def _room(self) -> bool:
        """Whether a new session fits: at the limits, the new session idle longest ends."""
        cfg = self.svc.cfg
        if len(self.fresh) >= cfg.udp_new_sessions or (
                len(self.sessions) >= cfg.max_connections and self.fresh):
            oldest = next(iter(self.fresh.values()))
            self.svc.evicted += 1
            oldest.abort()  # out of the tables at once; its socket closes on the next turn
        return len(self.sessions) < cfg.max_connections

    def _open(self, client: Addr) -> UdpSession | None:
        svc = self.svc
        if svc.removed or not self._room():
            svc.rejected += 1
            return None
        prefix = svc.admit_prefix(client[0])
        if prefix is None:
            return None
        now = svc.loop.time()
        tried: set[Backend] | None = None
        last = "no endpoints"
        for attempt in range(svc.cfg.connect_retries + 1):
            b = svc.pool.choose(client[0], now, tried)
            if b is None:
                break
            if attempt:
                svc.retries += 1
            try:
                sock = _connected_socket(b)
            except OSError as e:
                last = f"{b.name}: {e.strerror or e}"
                svc.connect_failures += 1
                if svc.pool.failed(b, now):
                    svc.ejections += 1
                tried = (tried or set()) | {b}
                continue
            s = UdpSession(svc, self, client, b)
            s.prefix = prefix
            self.sessions[client] = s
            self.fresh[client] = s
            svc.active += 1
            svc.total += 1
            svc.conns.add(s)
            b.active += 1
            b.total += 1
            b.conns.add(s)
            svc.failed_logged = False
            s.start(sock)
            return s
        svc.no_endpoint(last)
        n = svc.prefixes[prefix] - 1  # counted for a session that did not open
        if n > 0:
            svc.prefixes[prefix] = n
        else:
            del svc.prefixes[prefix]
        return None


def _connected_socket(b: Backend) -> socket.socket:
    ep = b.endpoint
    family = socket.AF_INET6 if ":" in ep.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.connect((ep.host, ep.port))
    except OSError:
        sock.close()
        raise
    return sock


class UdpSession(asyncio.DatagramProtocol):
    """One client's datagrams to and from its endpoint."""

    def __init__(self, svc: ServiceState, listener: UdpListener, client: Addr,
                 backend: Backend) -> None:
        self.svc = svc
        self.listener = listener
        self.client = client
        self.backend: Backend | None = backend
        self.transport: Any = None
        self.task: asyncio.Task[Any] | None = None
        self.pending: list[bytes] = []
        self.header = (proxy_header(client, listener.local, datagram=True)
                       if backend.endpoint.proxy_protocol else b"")
        self.bytes_in = 0
        self.bytes_out = 0
        self.seen = 0
        self.idle_since = -1.0
        self.closed = False
        self.fresh = True
        """Not established: no datagram from the client since the endpoint answered."""
        self.prefix = ""

    def start(self, sock: socket.socket) -> None:
        """Wrap the connected socket in a transport (datagrams wait in ``pending``)."""
        coro = self.svc.loop.create_datagram_endpoint(lambda: self, sock=sock)
        self.task = self.svc.loop.create_task(coro)
        self.task.add_done_callback(lambda t: self._started(t, sock))

    def _started(self, task: asyncio.Task[Any], sock: socket.socket) -> None:
        if self.transport is None:  # cancelled (closing) or failed: the socket is ours
            if not task.cancelled() and task.exception() is not None:
                log.warning("UDP session socket failed", extra={
                    "service": self.svc.name, "error": str(task.exception())})
            sock.close()
            self._release()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if self.closed:
            transport.abort()
            return
        for data in self.pending:
            transport.sendto(self.header + data)
        self.pending = []

    def send(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self.transport is not None:
            self.transport.sendto(self.header + data if self.header else data)
        elif len(self.pending) < self.svc.cfg.udp_pending_limit:
            self.pending.append(data)

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        out = self.listener.transport
        if out is not None:
            out.sendto(data, self.client)
            self.bytes_out += len(data)

    def error_received(self, exc: Exception) -> None:
        b = self.backend
        if b is not None and isinstance(exc, ConnectionRefusedError) and self.bytes_out == 0:
            svc = self.svc
            svc.connect_failures += 1
            if svc.pool.failed(b, svc.loop.time()):
                svc.ejections += 1
                log.warning("endpoint ejected", extra={
                    "service": svc.name, "endpoint": b.name, "alloc": b.endpoint.alloc_id,
                    "reason": "ICMP port unreachable", "ejections": b.ejections})
        self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()

    def abort(self) -> None:
        """End the session (idle, drained, endpoint refused, or the balancer closing)."""
        if self.closed:
            return
        self.closed = True
        self._forget()
        if self.transport is not None:
            self.transport.abort()
        elif self.task is not None:
            self.task.cancel()

    def _forget(self) -> None:
        listener = self.listener
        if listener.sessions.get(self.client) is self:
            del listener.sessions[self.client]
        if listener.fresh.get(self.client) is self:
            del listener.fresh[self.client]

    def _release(self) -> None:
        self.closed = True
        self._forget()
        self.svc.release(self)

    def io_total(self) -> tuple[int, int]:
        return self.bytes_in, self.bytes_out
