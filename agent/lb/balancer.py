"""The load balancer: listeners for every published service, and the table's changes.

``update`` is given the whole service table each time (level-triggered, like the
agent's other loops): listeners open for new services, endpoint sets change in place
(new connections use the new set at once; a removed endpoint's connections drain for
``drain_grace``), and services that left the table lose their listener while their
connections drain (a UDP service keeps its port meanwhile, for the replies, but takes
no new client; a new service that wants the port ends those sessions at once). A port
that cannot be bound is logged, shown in ``stats()`` and retried every
``bind_retry_interval``; it never fails ``update``. A service whose spec
is invalid (an unknown policy or protocol) is logged and left out.

One sweep per period closes idle TCP connections and ends idle UDP sessions, so no
connection carries a timer of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import socket
from collections.abc import Mapping
from functools import partial

from agent.lb.config import LbConfig
from agent.lb.model import POLICIES, ServiceSpec
from agent.lb.service import ServiceState
from agent.lb.stats import ServiceStats
from agent.lb.tcp import TcpConnection
from agent.lb.udp import UdpListener, udp_listening_socket

log = logging.getLogger("lb")

PROTOCOLS = ("tcp", "udp")
FREED_PORT_TURNS = 10
"""Turns of the loop a new UDP service waits for the port a removed one's listener frees."""


class LoadBalancer:
    """Every published service of the cluster, proxied from this node."""

    def __init__(self, cfg: LbConfig | None = None, *, bind_host: str = "0.0.0.0",
                 rng: random.Random | None = None) -> None:
        self.cfg = cfg or LbConfig()
        self.bind_host = bind_host
        self._rng = rng or random.Random()
        self._services: dict[str, ServiceState] = {}
        self._draining: set[ServiceState] = set()
        self._invalid: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._sweeper: asyncio.Task[None] | None = None
        self._binder: asyncio.Task[None] | None = None
        self._closed = False

    # --- the table -------------------------------------------------------------------
    async def update(self, services: Mapping[str, ServiceSpec]) -> None:
        """Make the proxied services ``services`` (the full table, keyed by name)."""
        async with self._lock:
            if self._closed:
                return
            loop = asyncio.get_running_loop()
            wanted = {name: spec for name, spec in services.items() if self._valid(name, spec)}
            freed = False
            for name, svc in list(self._services.items()):
                spec = wanted.get(name)
                if (spec is None or spec.published_port != svc.spec.published_port
                        or spec.protocol != svc.spec.protocol):
                    self._remove(name, svc)
                    freed = True
            for name, spec in wanted.items():
                current = self._services.get(name)
                if current is not None:
                    current.drain(current.update(spec))
                    continue
                svc = ServiceState(spec, self.cfg, loop, self._rng)
                self._services[name] = svc
                await self._bind(svc)
            if freed:  # a port given up may be the one an unbound service waits for
                for svc in self._services.values():
                    if svc.listener is None:
                        await self._bind(svc)
            if self._sweeper is None:
                self._sweeper = loop.create_task(self._sweep())
            if self._binder is None and any(s.listener is None for s in self._services.values()):
                self._binder = loop.create_task(self._rebind())

    def _valid(self, name: str, spec: ServiceSpec) -> bool:
        problem = None
        if spec.policy not in POLICIES:
            problem = f"unknown policy {spec.policy!r}; one of {', '.join(POLICIES)}"
        elif spec.protocol not in PROTOCOLS:
            problem = f"unknown protocol {spec.protocol!r}; tcp or udp"
        elif not 0 <= spec.published_port < 65536:
            problem = f"published port {spec.published_port} out of range"
        if problem is None:
            self._invalid.pop(name, None)
            return True
        if self._invalid.get(name) != problem:
            self._invalid[name] = problem
            log.warning("service left out of the load balancer", extra={
                "service": name, "reason": problem})
        return False

    def _remove(self, key: str, svc: ServiceState) -> None:
        del self._services[key]
        svc.drain_all()
        if svc.spec.protocol != "udp" or not svc.conns:
            self._close_listener(svc)  # (a UDP session's replies leave from the port)
        if svc.conns:
            self._draining.add(svc)
        log.info("service unpublished", extra={"service": svc.name, "port": svc.port,
                                                "draining": len(svc.conns)})

    @staticmethod
    def _close_listener(svc: ServiceState) -> None:
        if svc.listener is not None:
            svc.listener.close()
            svc.listener = None

    async def _bind(self, svc: ServiceState) -> None:
        loop = asyncio.get_running_loop()
        port = svc.spec.published_port
        freed = False
        for old in self._draining:  # a new service wants the port: its sessions end now
            if old.listener is not None and port and old.port == port:
                old.abort_all()
                self._close_listener(old)
                freed = True
        try:
            if svc.spec.protocol == "udp":
                sock = await self._udp_socket(port, freed)
                try:
                    transport, _ = await loop.create_datagram_endpoint(
                        lambda: UdpListener(svc, sock), sock=sock)
                except BaseException:
                    sock.close()
                    raise
                svc.listener = transport
                svc.port = transport.get_extra_info("sockname")[1]
            else:
                server = await loop.create_server(
                    partial(TcpConnection, svc), self.bind_host, port,
                    backlog=self.cfg.listen_backlog, reuse_address=True)
                svc.listener = server
                svc.port = server.sockets[0].getsockname()[1]
        except OSError as e:
            error = f"cannot bind {svc.spec.protocol} {self.bind_host}:{port}: {e.strerror or e}"
            if error != svc.bind_error:
                log.warning("published port not bound; retrying", extra={
                    "service": svc.name, "error": error,
                    "retry_s": self.cfg.bind_retry_interval})
            svc.bind_error = error
            return
        if svc.bind_error is not None:
            log.info("published port bound", extra={"service": svc.name, "port": svc.port})
        svc.bind_error = None

    async def _udp_socket(self, port: int, freed: bool) -> socket.socket:
        """The published UDP socket; a port just freed by a closed listener is free once
        the loop has closed that listener's socket (a later turn)."""
        for _ in range(FREED_PORT_TURNS):
            try:
                return udp_listening_socket(self.bind_host, port, self.cfg.udp_receive_buffer)
            except OSError as e:
                if not freed or e.errno != errno.EADDRINUSE:
                    raise
            await asyncio.sleep(0)
        return udp_listening_socket(self.bind_host, port, self.cfg.udp_receive_buffer)

    async def _rebind(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.cfg.bind_retry_interval)
                async with self._lock:
                    unbound = [s for s in self._services.values() if s.listener is None]
                    for svc in unbound:
                        await self._bind(svc)
                    if all(s.listener is not None for s in self._services.values()):
                        return
        finally:
            self._binder = None

    # --- idle connections ------------------------------------------------------------
    def _period(self) -> float:
        cfg = self.cfg
        return min(cfg.idle_timeout, cfg.udp_session_timeout, cfg.udp_new_session_timeout) / 4

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._period())
            self.sweep(loop.time())

    def sweep(self, now: float) -> None:
        """Close connections (end sessions) that moved no byte for their idle timeout."""
        cfg = self.cfg
        for svc in [*self._services.values(), *self._draining]:
            udp = svc.spec.protocol == "udp"
            limit = cfg.udp_session_timeout if udp else cfg.idle_timeout
            for c in list(svc.conns):
                i, o = c.io_total()
                moved = i + o
                if moved != c.seen or c.idle_since < 0:  # bytes moved, or first seen
                    c.seen = moved
                    c.idle_since = now
                elif now - c.idle_since >= (cfg.udp_new_session_timeout if udp and c.fresh
                                            else limit):
                    c.abort()
        for svc in [s for s in self._draining if not s.conns]:
            self._close_listener(svc)  # a UDP service's port, kept while its sessions drained
            self._draining.discard(svc)

    # --- shutting down ---------------------------------------------------------------
    async def close(self) -> None:
        """Close every listener and connection; returns when their sockets are closed."""
        async with self._lock:
            self._closed = True
            for task in (self._sweeper, self._binder):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            self._sweeper = self._binder = None
            everything = [*self._services.values(), *self._draining]
            servers = []
            for svc in everything:
                if isinstance(svc.listener, asyncio.AbstractServer):
                    servers.append(svc.listener)
                self._close_listener(svc)
                svc.stop_timers()
                svc.removed = True
                svc.abort_all()
            # Every transport reports connection_lost once its socket is closed.
            for _ in range(500):
                if not any(svc.conns for svc in everything):
                    break
                await asyncio.sleep(0.01)
            else:
                log.warning("connections still open after close; forgotten", extra={
                    "count": sum(len(s.conns) for s in everything)})
                for svc in everything:
                    for c in list(svc.conns):
                        svc.release(c)
            for server in servers:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(server.wait_closed(), 5.0)
            await asyncio.sleep(0)
            self._services.clear()
            self._draining.clear()

    # --- observability ---------------------------------------------------------------
    def stats(self) -> dict[str, ServiceStats]:
        """Per service in the table: counters, gauges and endpoint states (plain data)."""
        return {name: svc.stats() for name, svc in self._services.items()}
