"""Helpers for the load balancer tests: endpoints and clients on real loopback sockets.

Every test runs its scenario under uvloop (as the agent does) with ``run``, bounded by a
timeout; endpoints are asyncio servers in the same loop, each on its own 127.0.0.x
address and a free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import uvloop

from agent.lb.balancer import LoadBalancer
from agent.lb.config import LbConfig
from agent.lb.model import Endpoint, ServiceSpec

T = TypeVar("T")
Handler = Callable[["Backend", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


_started: list[Backend] = []


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0, *, use_uvloop: bool = True) -> T:
    """Run a test scenario on a fresh loop, cut off after ``timeout`` seconds; the endpoints
    it started are stopped whatever happened (a listening server left open when the loop
    closes after an error makes uvloop's close wait forever)."""

    async def bounded() -> T:
        try:
            async with asyncio.timeout(timeout):
                return await coro
        finally:
            await stop(_started)
            _started.clear()

    if use_uvloop:
        return uvloop.run(bounded())
    return asyncio.run(bounded())


def open_fds() -> dict[int, str]:
    """This process's open file descriptors and what each is (socket:[inode], a path...)."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return out


def new_fds(before: dict[int, str]) -> set[tuple[int, str]]:
    """Descriptors open now that were not open ``before`` (ones closed meanwhile, by another
    test's garbage being collected, do not count)."""
    return set(open_fds().items()) - set(before.items())


async def reply_name(b: Backend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """For every line received, one line with the endpoint's name."""
    while await reader.readline():
        writer.write(b.name.encode() + b"\n")
        await writer.drain()


class Backend:
    """A TCP endpoint: a server whose connections run ``handler``; ``kill`` ends it all."""

    def __init__(self, name: str, host: str, handler: Handler = reply_name) -> None:
        self.name = name
        self.host = host
        self.handler = handler
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.accepted = 0
        self.received: list[bytes] = []

    async def start(self) -> Backend:
        self.server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        _started.append(self)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.writers.add(writer)
        try:
            await self.handler(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    def endpoint(self, *, local: bool = False, proxy_protocol: bool = False, weight: int = 1) -> Endpoint:
        return Endpoint(alloc_id=f"alloc-{self.name}", node="node-a" if local else "node-b",
                        host=self.host, port=self.port, weight=weight, local=local,
                        proxy_protocol=proxy_protocol)

    async def kill(self) -> None:
        """As a crashed process: the port refuses connections, open ones are reset."""
        if self.server is not None:
            self.server.close()
            for w in list(self.writers):
                w.transport.abort()
            await self.server.wait_closed()
            self.server = None


async def backends(n: int, handler: Handler = reply_name, first: int = 11) -> list[Backend]:
    return [await Backend(f"b{i}", f"127.0.0.{first + i}", handler).start() for i in range(n)]


async def stop(bs: list[Backend]) -> None:
    for b in bs:
        await b.kill()


def spec(name: str, eps: list[Endpoint], *, policy: str = "round_robin", protocol: str = "tcp",
         port: int = 0) -> ServiceSpec:
    return ServiceSpec(name=name, published_port=port, protocol=protocol, policy=policy,
                       endpoints=tuple(eps))


async def balancer(services: list[ServiceSpec], **cfg: Any) -> LoadBalancer:
    lb = LoadBalancer(LbConfig(**cfg), bind_host="127.0.0.1")
    await lb.update({s.name: s for s in services})
    return lb


async def request(port: int, *, source: str | None = None, host: str = "127.0.0.1") -> str:
    """One connection, one line sent, the first line back (the endpoint's name)."""
    reader, writer = await asyncio.open_connection(
        host, port, local_addr=(source, 0) if source else None)
    try:
        writer.write(b"hello\n")
        return (await reader.readline()).decode().strip()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def turned_away(port: int) -> bool:
    """Whether a connection to ``port`` is closed (or reset) without a byte of answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"hello\n")
        return await reader.read(1) == b""
    except ConnectionError:
        return True
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


class StuckListener:
    """A listening socket whose accept queue is full: new connects get no SYN-ACK and hang
    (the loopback stand-in for an endpoint whose host vanished)."""

    def __init__(self, host: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(0)
        self.host, self.port = self.sock.getsockname()
        self.fillers = []
        for _ in range(3):  # the queue holds backlog + 1; later SYNs are dropped
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                c.connect((self.host, self.port))
            self.fillers.append(c)

    def endpoint(self) -> Endpoint:
        return Endpoint(alloc_id="alloc-stuck", node="node-c", host=self.host, port=self.port)

    def close(self) -> None:
        for c in self.fillers:
            c.close()
        self.sock.close()
