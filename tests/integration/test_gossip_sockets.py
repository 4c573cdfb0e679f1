"""Gossip on real sockets: every member on its own 127.0.0.x address, short timings."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import msgpack
import pytest

from orch.gossip import codec
from orch.gossip.config import PROTOCOL_VERSION, GossipConfig
from orch.gossip.core import EventKind, MemberEvent
from orch.gossip.crypto import Keyring, new_key
from orch.gossip.messages import Status
from orch.gossip.transport import GossipNode

FAST = GossipConfig.fast()


async def wait_until(pred: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.02)


def alive_names(node: GossipNode) -> set[str]:
    return {m.name for m in node.alive()}


def status_of(node: GossipNode, name: str) -> Status | None:
    m = next((m for m in node.members() if m.name == name), None)
    return None if m is None else m.status


async def start(name: str, host: str, seeds: list[GossipNode] = (),  # type: ignore[assignment]
                keys: list[str] | None = None, state: dict[str, str] | None = None) -> GossipNode:
    node = GossipNode(FAST, name=name, bind=(host, 0), keyring=Keyring(list(keys)) if keys else None,
                      state=state)
    await node.start()
    if seeds:
        node.join([s.addr for s in seeds])
    return node


@asynccontextmanager
async def cluster(n: int, keys: list[str] | None = None) -> AsyncIterator[list[GossipNode]]:
    nodes: list[GossipNode] = []
    try:
        first = await start("m0", "127.0.0.2", keys=keys)
        nodes.append(first)
        for i in range(1, n):
            nodes.append(await start(f"m{i}", f"127.0.0.{i + 2}", [first], keys=keys))
        names = {x.name for x in nodes}
        await wait_until(lambda: all(alive_names(x) == names for x in nodes))
        yield nodes
    finally:
        for x in nodes:
            await x.stop()


def record(nodes: list[GossipNode]) -> list[tuple[str, MemberEvent]]:
    seen: list[tuple[str, MemberEvent]] = []

    def recorder(who: str) -> Callable[[MemberEvent], None]:
        return lambda ev: seen.append((who, ev))

    for x in nodes:
        x.on_event(recorder(x.name))
    return seen


async def test_members_join_and_converge() -> None:
    async with cluster(5) as nodes:
        assert all(len(x.alive()) == 5 for x in nodes)
        assert {m.addr[0] for m in nodes[0].members()} == {f"127.0.0.{i}" for i in range(2, 7)}


async def test_a_crashed_member_is_detected_by_all() -> None:
    async with cluster(5) as nodes:
        victim = nodes[2]
        others = [x for x in nodes if x is not victim]
        t0 = time.monotonic()
        await victim.stop()  # no leave: a crash as far as the others can tell
        await wait_until(lambda: all(status_of(x, victim.name) is Status.DEAD for x in others))
        # fast timings: the minimum suspicion timeout is 0.6 s, the maximum 3.6 s
        assert time.monotonic() - t0 < 5.0


async def test_a_member_that_leaves_is_left_not_dead() -> None:
    async with cluster(4) as nodes:
        seen = record(nodes)
        await nodes[1].leave()
        others = [nodes[0], *nodes[2:]]
        await wait_until(lambda: all(status_of(x, "m1") is Status.LEFT for x in others))
        assert not [ev for _, ev in seen if ev.name == "m1" and ev.kind is EventKind.DEAD]


async def test_a_crashed_member_rejoins_on_restart() -> None:
    async with cluster(4) as nodes:
        host = nodes[3].addr[0]
        await nodes[3].stop()
        await wait_until(lambda: status_of(nodes[0], "m3") is Status.DEAD)
        reborn = GossipNode(FAST, name="m3", bind=(host, 0))
        await reborn.start()
        reborn.join([nodes[0].addr])
        nodes[3] = reborn
        await wait_until(lambda: all(alive_names(x) == {"m0", "m1", "m2", "m3"} for x in nodes))
        assert reborn.core is not None
        assert reborn.core.incarnation > 0  # it refuted its own death


async def test_node_state_changes_are_seen_everywhere() -> None:
    async with cluster(5) as nodes:
        nodes[4].set_state({"role": "controller", "rpc": "127.0.0.6:4647"})
        await wait_until(lambda: all(
            next(m for m in x.members() if m.name == "m4").state.get("rpc") == "127.0.0.6:4647"
            for x in nodes))
        nodes[4].set_state({"rpc": None})
        await wait_until(lambda: all(
            "rpc" not in next(m for m in x.members() if m.name == "m4").state for x in nodes))


async def test_a_member_with_the_wrong_key_is_refused() -> None:
    key = new_key()
    async with cluster(3, keys=[key]) as nodes:
        outsider = await start("intruder", "127.0.0.9", nodes[:1], keys=[new_key()])
        try:
            await asyncio.sleep(1.0)
            assert "intruder" not in {m.name for x in nodes for m in x.members()}
            assert outsider.alive() == [m for m in outsider.members() if m.name == "intruder"]
            assert nodes[0].wire.dropped.get("decrypt", 0) >= 1
        finally:
            await outsider.stop()


async def test_key_rotation_loses_no_member() -> None:
    old, new = new_key(), new_key()
    async with cluster(4, keys=[old]) as nodes:
        seen = record(nodes)
        for x in nodes:
            x.install_key(new)
        await asyncio.sleep(0.3)
        for x in nodes:  # one member at a time: for a while both keys are primary somewhere
            x.use_key(new)
            await asyncio.sleep(0.3)
        for x in nodes:
            x.remove_key(old)
        await asyncio.sleep(1.0)
        assert not [ev for _, ev in seen if ev.kind in (EventKind.SUSPECT, EventKind.DEAD)]
        assert all(len(x.alive()) == 4 for x in nodes)
        # the old key no longer opens anything; the new one does
        stale = await start("stale", "127.0.0.10", nodes[:1], keys=[old])
        fresh = await start("fresh", "127.0.0.11", nodes[:1], keys=[new])
        try:
            await wait_until(lambda: "fresh" in alive_names(nodes[0]))
            await asyncio.sleep(0.5)
            assert "stale" not in alive_names(nodes[0])
        finally:
            await stale.stop()
            await fresh.stop()


async def test_malformed_input_leaves_the_member_healthy() -> None:
    async with cluster(3) as nodes:
        target = nodes[0]
        seen = record(nodes)
        garbage = [
            os.urandom(100),  # random bytes
            b"\x01",  # truncated envelope
            bytes([PROTOCOL_VERSION + 7, 0, 0]) + b"\x90",  # another protocol version
            codec.seal(b"\xc1\xc1\xc1", "", None),  # not msgpack
            codec.seal(msgpack.packb({"not": "a list"}), "", None),
            codec.seal(msgpack.packb([[1, "seq", 2, 3], [99], "x"]), "", None),  # bad messages
            codec.seal(b"\x90", "other-cluster", None),  # another cluster's label
            codec.seal(b"\x91" + b"\x00" * 60_000, "", None),  # oversized
        ]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(20):
                for g in garbage:
                    s.sendto(g, target.addr)
        # the stream port: random bytes, an absurd length, a frame that is not push-pull
        for blob in (os.urandom(64), struct.pack(">I", 2**31) + b"xx",
                     codec.frame(codec.seal(msgpack.packb([1, 2, 3]), "", None))):
            r, w = await asyncio.open_connection(*target.addr)
            w.write(blob)
            await w.drain()
            await asyncio.wait_for(r.read(), 5)  # the member closes the connection
            w.close()
        await asyncio.sleep(1.0)
        dropped = {**target.wire.dropped}
        assert target.core is not None
        for reason, count in target.core.stats.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + count
        assert {"decode", "version", "label"} <= set(dropped)
        assert not [ev for _, ev in seen if ev.kind in (EventKind.SUSPECT, EventKind.DEAD)]
        assert all(len(x.alive()) == 3 for x in nodes)


async def test_a_restarted_member_rejoins_from_its_snapshot_without_seeds(tmp_path: Path) -> None:
    async with cluster(3) as nodes:
        me = GossipNode(FAST, name="phoenix", bind=("127.0.0.9", 0),
                        snapshot=tmp_path / "members.snapshot")
        await me.start()
        me.join([nodes[0].addr])
        names = {x.name for x in nodes} | {"phoenix"}
        await wait_until(lambda: alive_names(me) == names)
        port = me.addr[1]
        await me.stop()  # a crash: no leave
        again = GossipNode(FAST, name="phoenix", bind=("127.0.0.9", port),
                           snapshot=tmp_path / "members.snapshot")
        await again.start()  # and no join: the snapshot is all it has
        try:
            await wait_until(lambda: alive_names(again) == names, within=15)
            await wait_until(lambda: all("phoenix" in alive_names(x) for x in nodes), within=15)
        finally:
            await again.stop()


FLOOD = """
import socket, sys, time
from orch.gossip import codec
from orch.gossip.messages import Alive
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
payload = codec.seal(codec.pack([codec.encode(Alive(0, f"fake-{i:05d}", "10.9.9.9", 7946, 0))
                                 for i in range(400)]), "", None)
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.bind(("127.0.0.40", 0))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            s.sendto(payload, (host, port))
        except OSError:
            pass
"""


async def test_a_datagram_flood_neither_holds_the_loop_nor_delays_the_others() -> None:
    """One source sending full datagrams as fast as it can: they wait in its own queue, and
    the member handles them in short turns, the others' pings and acks among them."""
    async with cluster(3) as nodes:
        target = nodes[0]
        seen = record(nodes)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", FLOOD, *map(str, target.addr), "2.0")
        lags: list[float] = []
        loop = asyncio.get_running_loop()
        end = loop.time() + 2.0
        while loop.time() < end:
            t = loop.time()
            await asyncio.sleep(0.01)
            lags.append(loop.time() - t - 0.01)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        assert target.wire.packets_received > 1000
        assert max(lags) < 0.25  # generous: the machine is shared; handled, it is ~0.01
        assert not [ev for _, ev in seen if ev.kind in (EventKind.SUSPECT, EventKind.DEAD)]
        assert all(len(x.alive()) == 3 for x in nodes)


async def test_a_member_stopped_with_an_exchange_half_received_closes_it_quietly(
        caplog: pytest.LogCaptureFixture) -> None:
    """Closing the server left a peer's half-sent exchange open until its timeout, and the
    handler's task, cancelled when the loop ended, was logged as an error by Python 3.11's
    stream server ('Exception in callback', seen at the end of every hostile benchmark)."""
    node = await start("m0", "127.0.0.2")
    reader, writer = await asyncio.open_connection(*node.addr)
    writer.write(b"\x00\x00")  # half a frame's length
    await writer.drain()
    await wait_until(lambda: node._streams_in == 1)
    with caplog.at_level(logging.ERROR):
        await node.stop()
        assert await asyncio.wait_for(reader.read(), FAST.stream_timeout / 2) == b""
    writer.close()
    assert node._streams_in == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
