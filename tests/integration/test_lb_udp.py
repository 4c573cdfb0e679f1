"""The UDP load balancer on loopback: per-client affinity, idle expiry, refused endpoints."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agent.lb.balancer import LoadBalancer
from agent.lb.model import Endpoint
from agent.lb.proxy_protocol import header
from tests.integration.lb_util import balancer, new_fds, open_fds, run, spec

pytestmark = pytest.mark.timeout(60, method="thread")


class NameServer(asyncio.DatagramProtocol):
    """A UDP endpoint answering every datagram with its name (and keeping what it got)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: Any = None
        self.got: list[bytes] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got.append(data)
        self.transport.sendto(self.name.encode(), addr)


async def udp_backends(n: int, first: int = 41) -> list[tuple[NameServer, Endpoint]]:
    loop = asyncio.get_running_loop()
    out = []
    for i in range(n):
        host = f"127.0.0.{first + i}"
        tr, proto = await loop.create_datagram_endpoint(lambda i=i: NameServer(f"u{i}"),  # type: ignore[misc]
                                                        local_addr=(host, 0))
        port = tr.get_extra_info("sockname")[1]
        out.append((proto, Endpoint(alloc_id=f"alloc-u{i}", node="n", host=host, port=port)))
    return out


class Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answers: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.answers.put_nowait(data)

    async def ask(self, data: bytes = b"q", wait: float = 2.0) -> str:
        self.transport.sendto(data)
        return (await asyncio.wait_for(self.answers.get(), wait)).decode()


async def client(port: int, source: str = "127.0.0.1") -> Client:
    loop = asyncio.get_running_loop()
    _, c = await loop.create_datagram_endpoint(Client, local_addr=(source, 0),
                                               remote_addr=("127.0.0.1", port))
    return c


async def close_all(lb: LoadBalancer, endpoints: list[Any], *clients: Client | None) -> None:
    """The clients, the balancer, then the endpoints (``NameServer``s)."""
    for c in clients:
        if c is not None:
            c.transport.close()
    await lb.close()
    for e in endpoints:
        e.transport.close()


def test_each_client_keeps_its_endpoint_and_clients_spread() -> None:
    async def scenario() -> None:
        servers = await udp_backends(3)
        lb = await balancer([spec("dns", [e for _, e in servers], protocol="udp")])
        port = lb.stats()["dns"].port
        clients = [await client(port) for _ in range(6)]
        try:
            seen = []
            for c in clients:
                names = {await c.ask() for _ in range(5)}
                assert len(names) == 1  # affinity
                seen.append(names.pop())
            assert sorted(seen) == ["u0", "u0", "u1", "u1", "u2", "u2"]
            st = lb.stats()["dns"]
            assert (st.active, st.total) == (6, 6)
            assert (st.bytes_in, st.bytes_out) == (30, 60)
        finally:
            await close_all(lb, [s for s, _ in servers], *clients)

    run(scenario())


def test_idle_sessions_end_and_the_next_datagram_chooses_again() -> None:
    async def scenario() -> None:
        servers = await udp_backends(2)
        lb = await balancer([spec("dns", [e for _, e in servers], protocol="udp")],
                            udp_session_timeout=0.2)
        port = lb.stats()["dns"].port
        c = await client(port)
        try:
            first = await c.ask()
            for _ in range(3):  # traffic keeps the session
                await asyncio.sleep(0.1)
                assert await c.ask() == first
            await asyncio.sleep(0.45)
            assert lb.stats()["dns"].active == 0
            assert await c.ask() != first  # a new session: round robin moves on
            assert lb.stats()["dns"].total == 2
        finally:
            await close_all(lb, [s for s, _ in servers], c)

    run(scenario())


def test_a_refused_endpoint_counts_as_failed_and_the_client_moves() -> None:
    async def scenario() -> None:
        servers = await udp_backends(2)
        dead = servers[0][1]
        servers[0][0].transport.close()  # nothing listens there now: ICMP port unreachable
        lb = await balancer([spec("dns", [e for _, e in servers], protocol="udp")],
                            outlier_consecutive_failures=1)
        port = lb.stats()["dns"].port
        c = await client(port)
        try:
            answer = None
            for _ in range(10):  # the client resends until answered, as UDP clients do
                try:
                    answer = await c.ask(wait=0.3)
                    break
                except TimeoutError:
                    pass
            assert answer == "u1"
            st = lb.stats()["dns"]
            assert st.connect_failures >= 1
            assert st.ejections == 1
            assert {d.name: d.state for d in st.endpoint_details}[f"{dead.host}:{dead.port}"] == "ejected"
        finally:
            await close_all(lb, [servers[1][0]], c)

    run(scenario())


def test_proxy_protocol_header_leads_every_datagram() -> None:
    async def scenario() -> None:
        servers = await udp_backends(1)
        proto, ep = servers[0]
        ep = Endpoint(alloc_id=ep.alloc_id, node=ep.node, host=ep.host, port=ep.port,
                      proxy_protocol=True)
        lb = await balancer([spec("dns", [ep], protocol="udp")])
        port = lb.stats()["dns"].port
        c = await client(port, source="127.0.0.6")
        try:
            assert await c.ask(b"one") == "u0"
            assert await c.ask(b"two") == "u0"
            prefix = header(c.transport.get_extra_info("sockname"), ("127.0.0.1", port), datagram=True)
            assert proto.got == [prefix + b"one", prefix + b"two"]
        finally:
            await close_all(lb, [proto], c)

    run(scenario())


def test_a_removed_service_drains_its_sessions_then_frees_its_port() -> None:
    async def scenario() -> None:
        servers = await udp_backends(1)
        lb = await balancer([spec("dns", [e for _, e in servers], protocol="udp")],
                            drain_grace=0.5, udp_session_timeout=5.0)
        port = lb.stats()["dns"].port
        old, new = await client(port), None
        try:
            assert await old.ask() == "u0"
            await lb.update({})  # the service leaves the table
            assert await old.ask() == "u0"  # its session still answers, through the port
            new = await client(port)
            with pytest.raises(TimeoutError):
                await new.ask(wait=0.3)  # no new session on a removed service
            await asyncio.sleep(0.5 + 1.5)  # the grace, then a sweep closes the port
            with pytest.raises(TimeoutError):
                await old.ask(wait=0.3)
            again = spec("dns2", [e for _, e in servers], protocol="udp", port=port)
            await lb.update({"dns2": again})  # the port is free for another service
            assert lb.stats()["dns2"].port == port
            assert await new.ask() == "u0"
        finally:
            await close_all(lb, [s for s, _ in servers], old, new)

    run(scenario())


def test_a_new_service_on_a_draining_port_takes_it_at_once() -> None:
    async def scenario() -> None:
        servers = await udp_backends(2)
        first = [servers[0][1]]
        lb = await balancer([spec("a", first, protocol="udp")], drain_grace=30.0)
        port = lb.stats()["a"].port
        c = await client(port)
        try:
            assert await c.ask() == "u0"
            await lb.update({"b": spec("b", [servers[1][1]], protocol="udp", port=port)})
            st = lb.stats()["b"]
            assert (st.port, st.bind_error) == (port, None)
            assert await c.ask() == "u1"  # the old session ended; the new service answers
        finally:
            await close_all(lb, [s for s, _ in servers], c)

    run(scenario())


def _spoof(port: int, sources: int, rounds: int = 3) -> None:
    """``rounds`` datagrams to the published port from each of ``sources`` addresses of
    127.0.0.0/8 (as a flood with spoofed sources looks to the load balancer); in a thread."""
    import socket

    for _ in range(rounds):
        for i in range(sources):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((f"127.{100 + i // 65536}.{i // 256 % 256}.{1 + i % 250}", 0))
                s.sendto(b"spoofed", ("127.0.0.1", port))


def test_a_spoofed_flood_neither_locks_clients_out_nor_takes_descriptors() -> None:
    """Sessions keyed by a source address nobody proved: 3,000 spoofed sources against a
    service of 300 sessions. Established clients keep their sessions, a new client still
    gets one, the flood holds at most ``udp_new_sessions`` sockets, and past
    ``udp_new_session_rate`` its datagrams are dropped before they cost a session."""
    async def scenario() -> None:
        servers = await udp_backends(1, first=51)
        lb = await balancer([spec("dns", [e for _, e in servers], protocol="udp")],
                            max_connections=300, udp_new_sessions=50,
                            udp_new_session_rate=1000)
        port = lb.stats()["dns"].port
        before = open_fds()
        regular = await client(port)
        clients: list[Client] = [regular]
        try:
            assert await regular.ask() == "u0"
            assert await regular.ask() == "u0"  # answered, then asked again: established
            flood = asyncio.ensure_future(asyncio.to_thread(_spoof, port, 3000))
            asked = answered = 0
            while not flood.done():
                asked += 1
                for _ in range(3):  # as UDP clients do: a datagram the kernel dropped (a
                    try:            # full socket buffer) is sent again
                        answered += await regular.ask(wait=0.3) == "u0"
                        break
                    except TimeoutError:
                        pass
                await asyncio.sleep(0.005)
            await flood
            assert asked >= 1
            assert answered == asked
            sockets = [fd for fd, what in new_fds(before) if what.startswith("socket:")]
            assert len(sockets) <= 1 + 1 + 50  # the regular client's, its session's, the flood's
            st = lb.stats()["dns"]
            assert st.evicted > 0  # new sessions gave way to newer ones
            assert st.rejected_rate > 0  # and past the rate, the flood was dropped at once
            await asyncio.sleep(0.01)  # a token for the newcomer
            newcomer = await client(port, source="127.0.0.9")
            clients.append(newcomer)
            assert await newcomer.ask() == "u0"  # not locked out
        finally:
            await close_all(lb, [s for s, _ in servers], *clients)

    run(scenario(), timeout=60)


def test_sessions_per_client_network_are_bounded() -> None:
    async def scenario() -> None:
        servers = await udp_backends(1, first=56)
        lb = await balancer([spec("dns", [e for _, e in servers], protocol="udp")],
                            max_per_prefix=3)
        port = lb.stats()["dns"].port
        same = [await client(port, source=f"127.0.5.{i}") for i in range(1, 5)]
        other = await client(port, source="127.0.6.1")
        try:
            for c in same[:3]:
                assert await c.ask() == "u0"
            with pytest.raises(TimeoutError):
                await same[3].ask(wait=0.3)  # a fourth session from 127.0.5.0/24
            assert await other.ask() == "u0"
            assert lb.stats()["dns"].rejected_prefix >= 1
        finally:
            await close_all(lb, [s for s, _ in servers], *same, other)

    run(scenario())


def test_a_loop_behind_serves_established_clients_and_opens_no_new_sessions() -> None:
    """The event loop stalls while a flood of new sources and an established client's
    request queue on the published port (as when the loop cannot keep up with a flood).
    The port's buffer holds them all; while more than ``udp_busy_backlog`` bytes wait, the
    new sources' datagrams are dropped (reason ``busy``) instead of each opening a session
    (the rate would allow every one), and the established client is answered."""
    import socket

    with open("/proc/sys/net/core/rmem_max") as f:
        rmem_max = int(f.read())  # the buffer without privilege (the tests run as root)

    async def scenario() -> None:
        servers = await udp_backends(1, first=61)
        lb = await balancer([spec("dns", [e for _, e in servers], protocol="udp")],
                            udp_new_session_rate=100_000, udp_new_sessions=5_000,
                            udp_receive_buffer=2 * 1024 * 1024, udp_busy_backlog=32 * 1024)
        port = lb.stats()["dns"].port
        regular = await client(port)
        try:
            assert await regular.ask() == "u0"
            assert await regular.ask() == "u0"  # established
            listener = lb._services["dns"].listener
            rcvbuf = listener.get_extra_info("socket").getsockopt(
                socket.SOL_SOCKET, socket.SO_RCVBUF)
            assert rcvbuf >= min(2 * 1024 * 1024, rmem_max)  # not the kernel's default
            opened = lb.stats()["dns"].total
            _spoof(port, 1500, rounds=1)  # on the loop's thread: the loop reads nothing
            regular.transport.sendto(b"q")
            _spoof(port, 500, rounds=1)
            assert (await asyncio.wait_for(regular.answers.get(), 5)).decode() == "u0"
            st = lb.stats()["dns"]
            assert st.rejected_busy >= 1000  # the queue was long: new clients waited
            assert st.total - opened <= 500  # (without the gate: 2,000 new sessions)
            assert st.rejected_rate == 0
        finally:
            await close_all(lb, [s for s, _ in servers], regular)

    run(scenario(), timeout=60)
