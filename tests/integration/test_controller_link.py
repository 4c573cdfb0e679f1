"""The agent's controller link against real gRPC servers on loopback: a controller that
freezes holding the stream (it neither answers nor breaks it) is left as soon as gossip
names another leader, without waiting for keepalive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from agent.controller_link import ControllerLink
from orch.v1 import controller_pb2, controller_pb2_grpc, node_pb2


class Controller(controller_pb2_grpc.NodeServiceServicer):
    """Sends one desired set on each stream; a frozen one then never answers again."""

    def __init__(self, *, frozen: bool) -> None:
        self.frozen = frozen
        self.streams = 0
        self._forever = asyncio.Event()

    async def Connect(self, request_iterator: AsyncIterator[controller_pb2.NodeMessage],
                      context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[
                          controller_pb2.ControllerMessage]:
        self.streams += 1
        yield controller_pb2.ControllerMessage(
            desired=controller_pb2.DesiredAllocations(version=1))
        if self.frozen:
            await self._forever.wait()
        else:
            async for _ in request_iterator:
                pass


async def serve(servicer: Controller) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    controller_pb2_grpc.add_NodeServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def wait_for(check: Callable[[], bool], within: float) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "waited too long"
        await asyncio.sleep(0.02)


async def test_a_frozen_controller_is_left_for_the_leader_gossip_names() -> None:
    frozen, leader = Controller(frozen=True), Controller(frozen=False)
    (s1, a1), (s2, a2) = await serve(frozen), await serve(leader)
    gossip_leader: list[str | None] = [None]
    applied: list[int] = []

    async def on_desired(d: controller_pb2.DesiredAllocations) -> None:
        applied.append(d.version)

    link = ControllerLink(lambda: node_pb2.Node(name="n1"), lambda: [a1, a2], on_desired,
                          list, leader=lambda: gossip_leader[0], leader_check_interval=0.05)
    link.start()
    try:
        await wait_for(lambda: link.controller == a1, 5)
        await asyncio.sleep(0.3)  # no leader in gossip: the link stays where it is
        assert link.controller == a1
        gossip_leader[0] = a2
        t0 = asyncio.get_running_loop().time()
        await wait_for(lambda: link.controller == a2, 3)
        assert asyncio.get_running_loop().time() - t0 < 2
        assert (frozen.streams, leader.streams) == (1, 1)
        await asyncio.sleep(0.3)  # and stays with the leader
        assert (link.controller, leader.streams) == (a2, 1)
    finally:
        await link.stop()
        await s1.stop(0)
        await s2.stop(0)
