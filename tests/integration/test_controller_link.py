"""An agent's controller link against fake controllers on real sockets (127.0.81.4x): what
it reports reaches the controller that holds its stream now, after a NotLeader answer or
a move to the leader gossip names; expected-endpoint changes out of step end the stream,
and the next one starts with a whole set."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.controller_link import ControllerLink
from agent.desired import DesiredSet
from agent.lb.discovery import Expected
from orch.v1 import controller_pb2, controller_pb2_grpc, node_pb2
from orch.vocab import ENDPOINT_CHANGES
from tests.integration.synthetic import wait_until

pytestmark = pytest.mark.timeout(30)


class FakeController(controller_pb2_grpc.NodeServiceServicer):
    """Answers every stream with NotLeader(``redirect``) when set; else leads: sends one
    desired set and records what the node sends until the stream ends."""

    def __init__(self, redirect: str | None = None) -> None:
        self.redirect = redirect
        self.received: list[controller_pb2.NodeMessage] = []
        self.address = ""

    async def Join(self, request: controller_pb2.JoinRequest,
                   context: Any) -> controller_pb2.Credentials:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not a real controller")
        raise AssertionError("not reached")

    async def Renew(self, request: controller_pb2.RenewRequest,
                    context: Any) -> controller_pb2.Credentials:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not a real controller")
        raise AssertionError("not reached")

    async def Connect(self, request_iterator: AsyncIterator[controller_pb2.NodeMessage],
                      context: Any) -> AsyncIterator[controller_pb2.ControllerMessage]:
        first = await anext(aiter(request_iterator))
        assert first.WhichOneof("msg") == "register"
        if self.redirect is not None:
            yield controller_pb2.ControllerMessage(
                not_leader=controller_pb2.NotLeader(leader="leader", address=self.redirect))
            return
        yield controller_pb2.ControllerMessage(desired=controller_pb2.DesiredAllocations(
            version=1))
        async for msg in request_iterator:
            self.received.append(msg)

    def reported(self, alloc_id: str) -> bool:
        return any(a.id == alloc_id for m in self.received if m.WhichOneof("msg") == "allocations"
                   for a in m.allocations.allocations)


@asynccontextmanager
async def serving(host: str, servicer: FakeController) -> AsyncIterator[FakeController]:
    server = grpc.aio.server()
    controller_pb2_grpc.add_NodeServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"{host}:0")
    servicer.address = f"{host}:{port}"
    await server.start()
    try:
        yield servicer
    finally:
        await server.stop(None)


def link(addresses: list[str], moved: Callable[[str], str | None] | None = None,
         on_endpoints: Callable[[Expected], None] | None = None) -> ControllerLink:
    async def on_desired(d: DesiredSet) -> None:
        pass
    return ControllerLink(lambda: node_pb2.Node(id="n1", name="n1"), lambda: list(addresses),
                          on_desired, list, backoff_max=0.2, moved=moved, recheck=0.05,
                          on_endpoints=on_endpoints)


def service(job: str, *alloc_ids: str) -> controller_pb2.ExpectedService:
    svc = controller_pb2.ExpectedService(namespace="default", job=job, group="g", name=job,
                                         published_port=80, protocol="tcp",
                                         lb_policy="round_robin")
    for a in alloc_ids:
        svc.endpoints.add(alloc_id=a, node="n2", port=20000)
    return svc


class EndpointScript(FakeController):
    """Sends each stream the next script's messages after the desired set, then holds it
    open; the registrations it got are kept."""

    def __init__(self, scripts: list[list[controller_pb2.ControllerMessage]]) -> None:
        super().__init__()
        self.scripts = scripts
        self.registrations: list[node_pb2.Node] = []

    async def Connect(self, request_iterator: AsyncIterator[controller_pb2.NodeMessage],
                      context: Any) -> AsyncIterator[controller_pb2.ControllerMessage]:
        first = await anext(aiter(request_iterator))
        self.registrations.append(first.register)
        yield controller_pb2.ControllerMessage(desired=controller_pb2.DesiredAllocations(
            version=1))
        for out in self.scripts[min(len(self.registrations), len(self.scripts)) - 1]:
            yield out
        async for msg in request_iterator:
            self.received.append(msg)


async def test_a_report_after_a_not_leader_answer_reaches_the_leader() -> None:
    """The stream a follower ended must not keep a sender that takes the next report."""
    async with serving("127.0.81.41", FakeController()) as leader, \
            serving("127.0.81.42", FakeController(redirect=leader.address)) as follower:
        lk = link([follower.address])
        lk.start()
        try:
            await wait_until(lambda: lk.connected and lk.controller == leader.address, within=10)
            for i in range(3):  # each one, not only the first
                lk.report([node_pb2.Allocation(id=f"a{i}",
                                               client_status=node_pb2.CLIENT_STATUS_RUNNING)])
                await wait_until(functools.partial(leader.reported, f"a{i}"), within=3)
        finally:
            await lk.stop()


async def test_moves_to_the_leader_gossip_names_and_reports_there() -> None:
    async with serving("127.0.81.41", FakeController()) as old, \
            serving("127.0.81.42", FakeController()) as new:
        where: dict[str, str | None] = {"to": None}
        lk = link([old.address], moved=lambda current: where["to"])
        lk.start()
        try:
            await wait_until(lambda: lk.controller == old.address, within=10)
            where["to"] = new.address  # the controller holding the stream is gone from gossip
            await wait_until(lambda: lk.controller == new.address, within=10)
            where["to"] = None
            lk.report([node_pb2.Allocation(id="a1", client_status=node_pb2.CLIENT_STATUS_RUNNING)])
            await wait_until(lambda: new.reported("a1"), within=3)
            assert not old.reported("a1")
        finally:
            await lk.stop()


async def test_expected_endpoint_changes_out_of_step_start_the_stream_again() -> None:
    def whole(version: int, *services: controller_pb2.ExpectedService
              ) -> controller_pb2.ControllerMessage:
        return controller_pb2.ControllerMessage(endpoints=controller_pb2.ExpectedEndpoints(
            version=version, services=services))

    def changes(base: int, version: int, *services: controller_pb2.ExpectedService
                ) -> controller_pb2.ControllerMessage:
        return controller_pb2.ControllerMessage(
            endpoint_changes=controller_pb2.ExpectedEndpointChanges(
                version=version, base_version=base, services=services))

    script = EndpointScript([
        [whole(3, service("a", "a1")), changes(3, 4, service("b", "b1")),
         changes(9, 10, service("c", "c1"))],  # not the version held: the stream ends
        [changes(5, 6, service("d", "d1"))],  # changes before the stream's whole set: too
        [whole(7, service("a", "a1", "a2")), changes(7, 8, service("e", "e1"))]])
    seen: list[tuple[int, set[str]]] = []
    async with serving("127.0.81.43", script) as ctl:
        lk = link([ctl.address], on_endpoints=lambda e: seen.append(
            (e.version, set(e.services))))
        lk.start()
        try:
            await wait_until(lambda: lk.expected.version == 8, within=10)
            assert len(script.registrations) == 3
            assert all(ENDPOINT_CHANGES in r.features for r in script.registrations)
            assert seen == [(3, {"default/a/g/a"}), (4, {"default/a/g/a", "default/b/g/b"}),
                            (7, {"default/a/g/a"}), (8, {"default/a/g/a", "default/e/g/e"})]
            assert set(lk.expected.expected.placed) == {("a1", "a"), ("a2", "a"), ("e1", "e")}
        finally:
            await lk.stop()


def _established(port: int) -> int:
    """TCP connections of this network namespace established to ``port`` (their server
    side), as /proc/net/tcp and tcp6 list them (gRPC listens on IPv6 sockets)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


class FailingController(FakeController):
    """Sends one desired set, then ends the stream with an error once ``fail`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = asyncio.Event()

    async def Connect(self, request_iterator: AsyncIterator[controller_pb2.NodeMessage],
                      context: Any) -> AsyncIterator[controller_pb2.ControllerMessage]:
        await anext(aiter(request_iterator))
        yield controller_pb2.ControllerMessage(desired=controller_pb2.DesiredAllocations(
            version=1))
        await self.fail.wait()
        await context.abort(grpc.StatusCode.UNAVAILABLE, "going away")


async def test_a_stopped_or_broken_stream_closes_its_connection_at_once() -> None:
    """A stream that ended (the link stopped, or the controller broke it off) holds no
    connection open: a finished gRPC call kept referenced keeps its connection, and the
    controller keeps that connection's TLS and HTTP/2 state (tens of KB) as long."""
    async with serving("127.0.81.43", FailingController()) as ctl:
        assert isinstance(ctl, FailingController)
        port = int(ctl.address.rsplit(":", 1)[1])
        lk = link([ctl.address])
        lk.start()
        try:
            await wait_until(lambda: lk.connected, within=10)
            assert _established(port) == 1
            ctl.fail.set()  # the stream fails: the link opens another (a new channel)
            await wait_until(lambda: ctl.fail.is_set() and not lk.connected, within=10)
            ctl.fail.clear()
            await wait_until(lambda: lk.connected, within=10)
            await wait_until(lambda: _established(port) == 1, within=5)
        finally:
            await lk.stop()
        await wait_until(lambda: _established(port) == 0, within=5)
