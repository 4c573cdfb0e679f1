"""The expected endpoints go down the agents' streams as changes, on a live cluster (a
controller and an agent on 127.0.97.x, real gRPC): once a stream has the whole set, a
second job's allocations starting send it that job's service only; a stream that did not
register "endpoint-changes" gets the whole set each time; the agent's load balancer serves
both services from the set it built of the changes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from agent.server import Agent
from orch.jobspec import parse_job
from orch.v1 import controller_pb2, controller_pb2_grpc, node_pb2
from orch.vocab import ENDPOINT_CHANGES
from tests.integration.live import live_cluster
from tests.integration.mesh_util import free_port
from tests.integration.synthetic import wait_until

EXAMPLE = Path(__file__).parents[2] / "deploy" / "examples" / "hello.yaml"
NET = "127.0.97"
HELLO = "default/hello/web/hello"
SECOND = "default/second/web/second"

pytestmark = pytest.mark.timeout(120, method="thread")


class Watcher:
    """A NodeService stream opened by the test, registered as a node of its own (with no
    resources and no drivers: nothing is placed on it), that keeps what comes down."""

    def __init__(self, address: str, node_id: str, features: list[str]) -> None:
        self.node = node_pb2.Node(id=node_id, name=node_id, features=features)
        self.channel = grpc.aio.insecure_channel(address)
        self.messages: list[controller_pb2.ControllerMessage] = []
        self._done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _up(self) -> AsyncIterator[controller_pb2.NodeMessage]:
        yield controller_pb2.NodeMessage(register=self.node)
        await self._done.wait()

    async def _read(self) -> None:
        stub = controller_pb2_grpc.NodeServiceStub(self.channel)
        async for msg in stub.Connect(self._up()):
            if msg.WhichOneof("msg") in ("endpoints", "endpoint_changes"):
                self.messages.append(msg)

    def start(self) -> None:
        self._task = asyncio.create_task(self._read())

    async def close(self) -> None:
        self._done.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await self._task
        await self.channel.close()

    def kinds(self) -> list[str]:
        return [str(m.WhichOneof("msg")) for m in self.messages]

    def keys(self, i: int) -> set[str]:
        """The service keys message ``i`` carries (whole or changed)."""
        m = self.messages[i]
        services = m.endpoints.services if m.WhichOneof("msg") == "endpoints" \
            else [*m.endpoint_changes.services, *m.endpoint_changes.removed]
        return {f"{s.namespace}/{s.job}/{s.group}/{s.name}" for s in services}


def job(name: str, port: int, count: int) -> str:
    return (EXAMPLE.read_text().replace("published_port: 8080", f"published_port: {port}")
            .replace("name: hello", f"name: {name}").replace("count: 3", f"count: {count}"))


def served(agent: Agent, key: str) -> int:
    assert agent.mesh is not None
    svc = agent.mesh.table.get(key)
    return len(svc.endpoints) if svc is not None else 0


async def test_a_second_service_starting_sends_attached_agents_only_that_service(
        tmp_path: Path) -> None:
    async with live_cluster(tmp_path, agents=1, net=NET) as (ctl, agents):
        (agent,) = agents
        hello_port, second_port = free_port([agent.cfg.lb_bind]), 0
        while second_port in (0, hello_port):
            second_port = free_port([agent.cfg.lb_bind])
        await ctl.jobs.register(parse_job(job("hello", hello_port, 2), "hello.yaml"))
        await wait_until(lambda: served(agent, HELLO) == 2, within=40)

        changes = Watcher(ctl.rpc_address, "watch-changes",
                          [ENDPOINT_CHANGES, "desired-changes"])
        whole = Watcher(ctl.rpc_address, "watch-whole", [])
        changes.start()
        whole.start()
        try:
            await wait_until(lambda: changes.messages and whole.messages, within=15)
            assert changes.kinds()[0] == whole.kinds()[0] == "endpoints"
            assert changes.keys(0) == whole.keys(0) == {HELLO}
            first = changes.messages[0].endpoints.version

            await ctl.jobs.register(parse_job(job("second", second_port, 1), "second.yaml"))
            await wait_until(lambda: served(agent, SECOND) == 1, within=40)
            await wait_until(lambda: len(changes.messages) > 1 and len(whole.messages) > 1,
                             within=10)
            await asyncio.sleep(1.0)  # what else the allocation's start commits comes too

            # the stream that takes changes was sent the second job's service, nothing else
            assert set(changes.kinds()[1:]) == {"endpoint_changes"}
            for i in range(1, len(changes.messages)):
                assert changes.keys(i) == {SECOND}
            sent = [m.endpoint_changes for m in changes.messages[1:]]
            assert sent[0].base_version == first
            for before, after in itertools.pairwise(sent):
                assert after.base_version == before.version
            (svc,) = sent[-1].services
            (ep,) = svc.endpoints
            placed = ctl.cluster.state.allocs[ep.alloc_id]
            assert (placed.job, ep.node, svc.published_port) == (
                "second", "agent-1", second_port)
            # the one that does not: the whole set again
            assert set(whole.kinds()) == {"endpoints"}
            assert whole.keys(len(whole.messages) - 1) == {HELLO, SECOND}

            # the agent (it registers the feature) built its set from the changes
            assert set(agent.link.expected.expected.services) == {HELLO, SECOND}
            assert served(agent, HELLO) == 2
        finally:
            await changes.close()
            await whole.close()
