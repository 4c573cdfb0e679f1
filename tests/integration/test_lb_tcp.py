"""The TCP load balancer on real loopback sockets (uvloop), each scenario bounded in time."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import socket
import struct
from collections import Counter

import pytest

from agent.lb.proxy_protocol import header
from agent.lb.tcp import TcpConnection
from tests.integration.lb_util import (
    Backend,
    StuckListener,
    backends,
    balancer,
    new_fds,
    open_fds,
    request,
    run,
    spec,
    stop,
    turned_away,
)

pytestmark = pytest.mark.timeout(60, method="thread")  # a blocked loop ends the run


@pytest.mark.parametrize("policy", ["round_robin", "least_conn", "p2c"])
def test_connections_spread_over_every_endpoint(policy: str) -> None:
    async def scenario() -> Counter[str]:
        bs = await backends(3)
        lb = await balancer([spec("web", [b.endpoint() for b in bs], policy=policy)])
        port = lb.stats()["web"].port
        try:
            seen = Counter([await request(port) for _ in range(60)])
            seen += Counter(await asyncio.gather(*(request(port) for _ in range(30))))
            return seen
        finally:
            await lb.close()
            await stop(bs)

    seen = run(scenario())
    assert sum(seen.values()) == 90
    if policy == "p2c":
        assert all(seen[f"b{i}"] >= 10 for i in range(3)), seen
    else:  # sequential requests leave every endpoint idle: strict turns
        assert seen == {"b0": 30, "b1": 30, "b2": 30}


def test_maglev_keeps_each_client_address_on_one_endpoint() -> None:
    async def scenario() -> dict[str, set[str]]:
        bs = await backends(3)
        lb = await balancer([spec("web", [b.endpoint() for b in bs], policy="maglev")],
                            maglev_table_size=4099)
        port = lb.stats()["web"].port
        try:
            clients = [f"127.0.1.{i}" for i in range(1, 31)]
            seen: dict[str, set[str]] = {c: set() for c in clients}
            for _ in range(3):
                for c in clients:
                    seen[c].add(await request(port, source=c))
            return seen
        finally:
            await lb.close()
            await stop(bs)

    seen = run(scenario())
    assert all(len(names) == 1 for names in seen.values()), seen
    assert len({next(iter(n)) for n in seen.values()}) == 3  # 30 clients reach all three


def test_the_asyncio_loop_works_too() -> None:
    async def scenario() -> list[str]:
        bs = await backends(2)
        lb = await balancer([spec("web", [b.endpoint() for b in bs])])
        try:
            return [await request(lb.stats()["web"].port) for _ in range(4)]
        finally:
            await lb.close()
            await stop(bs)

    assert sorted(run(scenario(), use_uvloop=False)) == ["b0", "b0", "b1", "b1"]


def test_a_killed_endpoint_is_retried_around_and_ejected() -> None:
    async def scenario() -> None:
        bs = await backends(3)
        lb = await balancer([spec("web", [b.endpoint() for b in bs])],
                            outlier_consecutive_failures=2)
        port = lb.stats()["web"].port
        try:
            assert len({await request(port) for _ in range(3)}) == 3
            await bs[1].kill()
            answers = [await request(port) for _ in range(30)]
            answers += await asyncio.gather(*(request(port) for _ in range(30)))
            assert set(answers) == {"b0", "b2"}  # every request answered, none by b1
            st = lb.stats()["web"]
            assert st.failed == 0
            assert st.connect_failures == 2  # then it was ejected: no more attempts
            assert st.retries == 2
            assert st.ejections == 1
            assert st.endpoints == {"healthy": 2, "probing": 0, "ejected": 1, "draining": 0}
        finally:
            await lb.close()
            await stop(bs)

    run(scenario())


def test_a_connect_that_hangs_times_out_and_goes_elsewhere() -> None:
    stuck = StuckListener("127.0.0.30")

    async def scenario() -> None:
        bs = await backends(1)
        lb = await balancer([spec("web", [stuck.endpoint(), bs[0].endpoint()])],
                            connect_timeout=0.2)
        port = lb.stats()["web"].port
        try:
            loop = asyncio.get_running_loop()
            began = loop.time()
            assert [await request(port) for _ in range(2)] == ["b0", "b0"]
            assert 0.15 <= loop.time() - began < 2.0  # one of the two waited for the timeout
            st = lb.stats()["web"]
            assert (st.connect_failures, st.retries, st.failed) == (1, 1, 0)
        finally:
            await lb.close()
            await stop(bs)

    try:
        run(scenario())
    finally:
        stuck.close()


def test_with_no_endpoint_reachable_the_client_is_closed_and_counted() -> None:
    async def scenario() -> None:
        bs = await backends(1)
        lb = await balancer([spec("web", [bs[0].endpoint()]), spec("empty", [])])
        try:
            await bs[0].kill()
            for name in ("web", "empty"):
                assert await turned_away(lb.stats()[name].port)
                assert lb.stats()[name].failed == 1
        finally:
            await lb.close()

    run(scenario())


async def slow_reply(b: Backend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer each line after 0.3 s (a long request)."""
    while await reader.readline():
        await asyncio.sleep(0.3)
        writer.write(b.name.encode() + b"\n")
        await writer.drain()


def test_a_removed_endpoint_drains_then_its_connections_close() -> None:
    async def scenario() -> None:
        bs = await backends(2, slow_reply)
        svc = spec("web", [b.endpoint() for b in bs])
        lb = await balancer([svc], drain_grace=1.0)
        port = lb.stats()["web"].port
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)  # → b0
            writer.write(b"long\n")
            await asyncio.sleep(0.05)
            await lb.update({"web": spec("web", [bs[1].endpoint()])})
            # new connections go to b1 at once, while the one on b0 is answered
            news = await asyncio.gather(*(request(port) for _ in range(4)))
            assert news == ["b1"] * 4
            assert (await reader.readline()).strip() == b"b0"
            st = lb.stats()["web"]
            assert st.endpoints["draining"] == 1
            # still usable within the grace; cut when it ends
            writer.write(b"again\n")
            assert (await reader.readline()).strip() == b"b0"
            began = asyncio.get_running_loop().time()
            with contextlib.suppress(ConnectionError):
                assert await reader.read() == b""
            assert asyncio.get_running_loop().time() - began < 1.5
            await asyncio.sleep(0.05)
            assert lb.stats()["web"].endpoints["draining"] == 0
            writer.close()
        finally:
            await lb.close()
            await stop(bs)

    run(scenario())


def test_a_removed_service_stops_listening_and_drains() -> None:
    async def scenario() -> None:
        bs = await backends(1, slow_reply)
        lb = await balancer([spec("web", [bs[0].endpoint()])], drain_grace=5.0)
        port = lb.stats()["web"].port
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"long\n")
            await asyncio.sleep(0.05)
            await lb.update({})
            assert lb.stats() == {}
            with pytest.raises(ConnectionRefusedError):
                await request(port)
            assert (await reader.readline()).strip() == b"b0"  # the open one finishes
            writer.close()
        finally:
            await lb.close()
            await stop(bs)

    run(scenario())


BIG = 3 * 1024 * 1024 + 17


async def answer_after_eof(b: Backend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the whole request (until the client shuts its side), then send a large answer."""
    request = await reader.read()
    body = hashlib.sha256(request).digest() * (BIG // 32 + 1)
    writer.write(body[:BIG])
    await writer.drain()


def test_half_close_still_delivers_the_whole_response() -> None:
    async def scenario() -> None:
        bs = await backends(1, answer_after_eof)
        lb = await balancer([spec("web", [bs[0].endpoint()])])
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", lb.stats()["web"].port)
            payload = b"question " * 10_000
            writer.write(payload)
            writer.write_eof()
            got = await reader.read()
            want = (hashlib.sha256(payload).digest() * (BIG // 32 + 1))[:BIG]
            assert len(got) == BIG
            assert got == want
            writer.close()
            await asyncio.sleep(0.05)
            st = lb.stats()["web"]
            assert (st.active, st.bytes_in, st.bytes_out) == (0, len(payload), BIG)
        finally:
            await lb.close()
            await stop(bs)

    run(scenario())


STREAM = 32 * 1024 * 1024


async def firehose(b: Backend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    chunk = bytes(range(256)) * 256  # 64 KiB
    for _ in range(STREAM // len(chunk)):
        writer.write(chunk)
        await writer.drain()


def test_a_slow_reader_pauses_the_endpoint_instead_of_buffering() -> None:
    high, low = 128 * 1024, 32 * 1024

    async def scenario() -> None:
        bs = await backends(1, firehose)
        lb = await balancer([spec("web", [bs[0].endpoint()])],
                            write_high_water=high, write_low_water=low)
        try:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", lb.stats()["web"].port))
            reader, writer = await asyncio.open_connection(sock=sock)
            await asyncio.sleep(0.5)  # the client reads nothing: everything backs up
            conn = next(iter(lb._services["web"].conns))
            assert isinstance(conn, TcpConnection)
            peak = 0
            received = 0
            for _ in range(40):  # then reads slowly, 40 × 32 KiB
                peak = max(peak, conn.transport.get_write_buffer_size()
                           + conn.up_transport.get_write_buffer_size())
                received += len(await reader.readexactly(32 * 1024))
                await asyncio.sleep(0.005)
            # bounded: the high water mark plus one read of the endpoint (uvloop: 256 KiB)
            assert 0 < peak <= high + 256 * 1024, peak
            while chunk := await reader.read(1 << 20):  # then fast: all of it arrives
                received += len(chunk)
            assert received == STREAM
            writer.close()
        finally:
            await lb.close()
            await stop(bs)

    run(scenario(), timeout=40)


async def record_first_bytes(b: Backend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    b.received.append(await reader.readexactly(28 + 6))
    writer.write(b"ok\n")
    await writer.drain()


def test_proxy_protocol_v2_header_precedes_the_client_bytes() -> None:
    async def scenario() -> None:
        bs = await backends(1, record_first_bytes)
        lb = await balancer([spec("web", [bs[0].endpoint(proxy_protocol=True)])])
        port = lb.stats()["web"].port
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.5", 0))
            client = writer.get_extra_info("sockname")
            writer.write(b"hello\n")
            assert await reader.readline() == b"ok\n"
            assert bs[0].received == [header(client, ("127.0.0.1", port)) + b"hello\n"]
            assert bs[0].received[0][:16].hex() == "0d0a0d0a000d0a515549540a2111000c"
            writer.close()
        finally:
            await lb.close()
            await stop(bs)

    run(scenario())


def test_connections_beyond_the_limit_are_turned_away() -> None:
    async def scenario() -> None:
        bs = await backends(1)
        lb = await balancer([spec("web", [bs[0].endpoint()])], max_connections=2)
        port = lb.stats()["web"].port
        try:
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            for r, w in held:
                w.write(b"x\n")
                assert await r.readline() == b"b0\n"
            assert await turned_away(port)
            st = lb.stats()["web"]
            assert (st.active, st.rejected) == (2, 1)
            for _, w in held:
                w.close()
            await asyncio.sleep(0.05)
            assert await request(port) == "b0"
        finally:
            await lb.close()
            await stop(bs)

    run(scenario())


def test_connections_per_client_network_are_bounded() -> None:
    """One network cannot take a service's connections from everyone else."""
    async def scenario() -> None:
        bs = await backends(1)
        lb = await balancer([spec("web", [bs[0].endpoint()])], max_per_prefix=2)
        port = lb.stats()["web"].port
        try:
            held = [await asyncio.open_connection("127.0.0.1", port,
                                                  local_addr=(f"127.0.0.{i}", 0))
                    for i in (1, 2)]
            for r, w in held:
                w.write(b"x\n")
                assert await r.readline() == b"b0\n"
            assert await turned_away(port)  # a third from 127.0.0.0/24
            assert await request(port, source="127.0.1.1") == "b0"  # another network
            st = lb.stats()["web"]
            assert (st.rejected_prefix, st.rejected) == (1, 0)
            for _, w in held:
                w.close()
            await asyncio.sleep(0.05)
            assert await request(port) == "b0"
        finally:
            await lb.close()
            await stop(bs)

    run(scenario())


def test_idle_connections_are_closed() -> None:
    async def scenario() -> None:
        bs = await backends(1)
        lb = await balancer([spec("web", [bs[0].endpoint()])], idle_timeout=0.3)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", lb.stats()["web"].port)
            loop = asyncio.get_running_loop()
            for i in range(4):  # talking keeps it open past the timeout
                if i:
                    await asyncio.sleep(0.12)
                writer.write(b"x\n")
                assert await reader.readline() == b"b0\n"
            last = loop.time()
            assert await reader.read() == b""
            assert 0.28 <= loop.time() - last <= 0.8
            writer.close()
        finally:
            await lb.close()
            await stop(bs)

    run(scenario())


def test_prefer_local_endpoints() -> None:
    async def scenario() -> None:
        bs = await backends(3)
        eps = [bs[0].endpoint(), bs[1].endpoint(local=True), bs[2].endpoint()]
        lb = await balancer([spec("web", eps)], outlier_consecutive_failures=1)
        port = lb.stats()["web"].port
        try:
            assert {await request(port) for _ in range(6)} == {"b1"}
            await bs[1].kill()  # the local one fails: the others take over
            assert {await request(port) for _ in range(6)} == {"b0", "b2"}
        finally:
            await lb.close()
            await stop(bs)

    run(scenario())


def test_a_port_in_use_is_reported_and_bound_once_free() -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]

    async def scenario() -> None:
        bs = await backends(1)
        lb = await balancer([spec("web", [bs[0].endpoint()], port=port)], bind_retry_interval=0.1)
        try:
            st = lb.stats()["web"]
            assert not st.listening
            assert st.bind_error is not None
            assert "in use" in st.bind_error
            blocker.close()
            for _ in range(50):
                await asyncio.sleep(0.05)
                if lb.stats()["web"].listening:
                    break
            assert lb.stats()["web"].bind_error is None
            assert await request(port) == "b0"
        finally:
            await lb.close()
            await stop(bs)

    try:
        run(scenario())
    finally:
        blocker.close()


def test_close_leaves_no_file_descriptor_open() -> None:
    stuck = StuckListener("127.0.0.31")

    async def scenario() -> None:
        bs = await backends(2)
        before = open_fds()  # after the loop's first stream (libuv keeps a spare fd per loop)
        lb = await balancer([spec("web", [b.endpoint() for b in bs]),
                             spec("hang", [stuck.endpoint()]),
                             spec("dns", [b.endpoint() for b in bs], protocol="udp")],
                            connect_timeout=10.0)
        st = lb.stats()
        clients = [await asyncio.open_connection("127.0.0.1", st["web"].port) for _ in range(5)]
        for r, w in clients:
            w.write(b"x\n")
            assert await r.readline()  # connected through, held open
        hanging = [await asyncio.open_connection("127.0.0.1", st["hang"].port) for _ in range(3)]
        loop = asyncio.get_running_loop()
        udp, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                     remote_addr=("127.0.0.1", st["dns"].port))
        udp.sendto(b"q")
        await asyncio.sleep(0.1)
        assert lb.stats()["web"].active == 5
        assert lb.stats()["hang"].active == 3
        await lb.close()
        for _, w in clients + hanging:
            w.close()
            with contextlib.suppress(ConnectionError):
                await w.wait_closed()
        udp.close()
        await asyncio.sleep(0.01)
        for _ in range(100):  # the endpoints see the resets
            if not any(b.writers for b in bs):
                break
            await asyncio.sleep(0.01)
        assert not new_fds(before)
        await stop(bs)

    try:
        run(scenario())
    finally:
        stuck.close()


def test_close_in_the_middle_of_connecting_releases_everything() -> None:
    async def scenario() -> None:
        bs = await backends(3)
        before = open_fds()
        lb = await balancer([spec("web", [b.endpoint() for b in bs])])
        port = lb.stats()["web"].port
        loop = asyncio.get_running_loop()
        for delay in (0.0, 0.001, 0.003, 0.01):
            if delay:
                lb = await balancer([spec("web", [b.endpoint() for b in bs])])
                port = lb.stats()["web"].port
            clients = [loop.create_task(request(port)) for _ in range(150)]
            await asyncio.sleep(delay)
            began = loop.time()
            await lb.close()
            assert loop.time() - began < 1.0
            await asyncio.gather(*clients, return_exceptions=True)
        for _ in range(100):
            if not any(b.writers for b in bs):
                break
            await asyncio.sleep(0.01)
        assert not new_fds(before)

    run(scenario())


async def moody_endpoint(b: Backend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers a line with a line, but now and then resets, half-closes or closes early."""
    rng = random.Random(b.accepted)
    while line := await reader.readline():
        mood = rng.randrange(10)
        if mood == 0:
            writer.transport.abort()
            return
        writer.write(line.upper())
        if mood == 1:  # half-close: no more from us, but read what comes
            writer.write_eof()
            await reader.read()
            return
        if mood == 2:
            return
        await writer.drain()


async def moody_client(port: int, rng: random.Random) -> str:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return "refused"
    kind = rng.randrange(5)
    try:
        writer.write(b"hello\n")
        if kind == 0:
            writer.transport.abort()
            return "abort"
        if kind == 1:
            writer.write_eof()
            await reader.read()
            return "half-close"
        if kind == 2:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return "reset"
        for _ in range(3):
            await reader.readline()
            writer.write(b"again\n")
        return "talk"
    except (ConnectionError, asyncio.IncompleteReadError):
        return "error"
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def test_clients_and_endpoints_misbehaving_leave_no_connection_behind() -> None:
    async def scenario() -> None:
        bs = await backends(3, moody_endpoint)
        before = open_fds()
        lb = await balancer([spec("web", [b.endpoint() for b in bs])])
        port = lb.stats()["web"].port
        loop = asyncio.get_running_loop()
        end = loop.time() + 1.5
        rng = random.Random(7)
        kinds: Counter[str] = Counter()

        async def worker() -> None:
            while loop.time() < end:
                kinds[await asyncio.wait_for(moody_client(port, rng), 5)] += 1

        await asyncio.gather(*(worker() for _ in range(20)))
        assert len(kinds) >= 4
        for _ in range(100):  # every connection ends (the endpoints' last ones included)
            if lb.stats()["web"].active == 0:
                break
            await asyncio.sleep(0.02)
        st = lb.stats()["web"]
        assert st.active == 0
        assert st.total == sum(kinds.values())
        assert await request(port) in {"HELLO", ""}  # still serving
        await lb.close()
        for _ in range(100):
            if not any(b.writers for b in bs):
                break
            await asyncio.sleep(0.01)
        assert not new_fds(before)

    run(scenario())


def test_a_service_of_another_job_with_the_same_name_takes_the_place_of_the_first() -> None:
    """The table is keyed by namespace/job/group/service: a job stopped and another one that
    names its service the same way both change the table at once."""
    async def scenario() -> None:
        bs = await backends(2)
        lb = await balancer([])
        try:
            await lb.update({"default/a/g/web": spec("web", [bs[0].endpoint()])})
            await lb.update({"default/b/g/web": spec("web", [bs[1].endpoint()])})
            assert list(lb.stats()) == ["default/b/g/web"]
            assert await request(lb.stats()["default/b/g/web"].port) == "b1"
        finally:
            await lb.close()
            await stop(bs)

    run(scenario())
