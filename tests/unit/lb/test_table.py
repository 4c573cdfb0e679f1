"""The agent's one endpoint table: built once per change, read alike by the routing mesh,
the DNS server and templates."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import dns.message
import dns.rdatatype
import pytest

from agent.dns.config import DnsConfig
from agent.dns.server import DnsServer
from agent.lb import discovery
from agent.lb.balancer import LoadBalancer
from agent.lb.mesh import Mesh
from agent.lb.metrics import LbCollector
from agent.lb.model import ServiceSpec
from agent.lb.table import EndpointTable
from orch.gossip.config import GossipConfig
from orch.gossip.core import EventKind, MemberEvent, MemberInfo
from orch.gossip.messages import Status
from orch.gossip.transport import GossipNode
from orch.jobspec.model import Group, Network, Port, Service, Task
from orch.v1 import controller_pb2

GROUP = Group(name="g", tasks=(Task(name="t"),), network=Network(ports=(Port(label="http"),)),
              services=(Service(name="web", port="http", published_port=8080),))
WEB = "default/shop/g/web"
HOSTS = {"n1": "127.0.0.2", "n2": "127.0.0.3", "evil": "127.0.0.66"}
WITHIN = 5.0
"""Seconds a build may take to be seen (it takes microseconds; this only bounds a bug)."""


class Gossip:
    """The members a table is built from, and their events (what a GossipNode gives it)."""

    def __init__(self) -> None:
        self.states: dict[str, Mapping[str, Any]] = {name: {} for name in HOSTS}
        self.handlers: list[Callable[[MemberEvent], None]] = []

    def members(self) -> Iterable[MemberInfo]:
        return [MemberInfo(n, (HOSTS[n], 7946), Status.ALIVE, 1, s, 1, 0.0)
                for n, s in self.states.items()]

    def on_event(self, handler: Callable[[MemberEvent], None]) -> None:
        self.handlers.append(handler)

    def fire(self, name: str) -> None:
        for fn in self.handlers:
            fn(MemberEvent(EventKind.UPDATE, name, (HOSTS[name], 7946), 1, 0.0))


class Recording(LoadBalancer):
    """A load balancer that keeps the tables it is given (binding ports is not for this
    tier; tests/integration/test_mesh.py serves them for real)."""

    def __init__(self) -> None:
        super().__init__()
        self.given: list[Mapping[str, ServiceSpec]] = []

    async def update(self, services: Mapping[str, ServiceSpec]) -> None:
        self.given.append(dict(services))


def placed(*allocs: tuple[str, str, int]) -> discovery.Expected:
    return discovery.Expected.from_proto(controller_pb2.ExpectedEndpoints(version=1, services=[
        controller_pb2.ExpectedService(
            namespace="default", job="shop", group="g", name="web", published_port=8080,
            protocol="tcp", lb_policy="round_robin",
            endpoints=[controller_pb2.ExpectedEndpoint(alloc_id=a, node=n, port=p)
                       for a, n, p in allocs])]))


def publish(alloc: str, node: str, port: int) -> dict[str, Any]:
    return discovery.entries(alloc, GROUP, {"http": port}, HOSTS[node], job="shop")


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every ``discovery.endpoint_table`` call, by whom (``me``)."""
    calls: list[str] = []
    real = discovery.endpoint_table

    def counted(members: Iterable[MemberInfo], me: str,
                expected: discovery.Expected | None = None) -> discovery.Table:
        calls.append(me)
        return real(members, me, expected)
    monkeypatch.setattr(discovery, "endpoint_table", counted)
    return calls


async def next_build(table: EndpointTable) -> None:
    seen = asyncio.Event()

    def fn(_: EndpointTable) -> None:
        seen.set()
    table.listeners.append(fn)
    try:
        await asyncio.wait_for(seen.wait(), WITHIN)
    finally:
        table.listeners.remove(fn)


def answer(server: DnsServer, name: str) -> list[str]:
    got = server.handle(dns.message.make_query(name, "A").to_wire(), "127.0.0.1", udp=True)
    assert got.wire is not None
    return sorted(r.to_text() for rrset in dns.message.from_wire(got.wire).answer
                  for r in rrset if r.rdtype == dns.rdatatype.A)


async def test_one_change_builds_the_table_once_and_every_reader_takes_that_build(
        builds: list[str]) -> None:
    gossip = Gossip()
    table = EndpointTable("n1", settle=0.0, resync=3600.0)
    lb = Recording()
    mesh = Mesh(lb, GossipNode(GossipConfig.fast(), name="n1", bind=("127.0.0.2", 0)), table)
    server = DnsServer(DnsConfig(), "n1")
    templates: list[int] = []  # as the agent's: render again when the generation moved

    def render(t: EndpointTable) -> None:
        if t.generation != (templates[-1] if templates else 0):
            templates.append(t.generation)
    table.listeners.append(render)
    applied = asyncio.Event()
    mesh.listeners.append(lambda _: applied.set())
    table.start(gossip)
    mesh.start()
    server.start(table)
    try:
        await next_build(table)
        assert (builds, table.builds, table.generation) == (["n1"], 1, 0)

        # a burst: two members' states, the agent's own endpoints, the controller's word
        gossip.states["n1"] = publish("a1", "n1", 21000)
        gossip.states["n2"] = publish("b2", "n2", 22000)
        gossip.states["evil"] = publish("zz", "evil", 9)  # placed by no one
        gossip.fire("n2")
        gossip.fire("evil")
        table.changed()
        table.set_expected(placed(("a1", "n1", 21000), ("b2", "n2", 22000)))
        await next_build(table)
        await asyncio.wait_for(applied.wait(), WITHIN)

        assert (builds, table.builds, table.generation) == (["n1", "n1"], 2, 1)
        assert mesh.generation == server.generation == table.generation == 1
        assert templates == [1]
        assert [set(t) for t in lb.given] == [{WEB}]
        assert mesh.table == table.table.services
        hosts = [HOSTS["n1"], HOSTS["n2"]]
        assert [e.host for e in table.endpoints("default", "web")] == hosts
        assert answer(server, "web.service.default.orch.") == hosts
        # what was refused is counted once, by the one build, and exported by the mesh's
        # metrics
        assert table.table.refused == {**dict.fromkeys(discovery.REASONS, 0), "unexpected": 1}
        refused = next(m for m in LbCollector(mesh).collect()
                       if m.name == "orch_lb_endpoints_refused")
        assert {s.labels["reason"]: s.value for s in refused.samples}["unexpected"] == 1

        # an event that changes no endpoint: one more build, the same generation, no update
        gossip.fire("n2")
        await next_build(table)
        assert (table.builds, table.generation, len(builds)) == (3, 1, 3)
        assert len(lb.given) == 1
        assert templates == [1]
    finally:
        await server.close()
        await mesh.close()
        await table.close()


async def test_dns_reads_the_table_with_no_load_balancer(builds: list[str]) -> None:
    gossip = Gossip()
    gossip.states["n2"] = publish("b2", "n2", 22000)
    table = EndpointTable("n1", settle=0.0, resync=3600.0)
    table.set_expected(placed(("b2", "n2", 22000)))
    table.start(gossip)
    try:
        await next_build(table)
        server = DnsServer(DnsConfig(), "n1")
        server.start(table)  # after a build: takes it at once
        assert server.generation == table.generation == 1
        assert answer(server, "web.service.default.orch.") == [HOSTS["n2"]]
        assert answer(server, "n2.node.orch.") == [HOSTS["n2"]]
        gossip.states["n2"] = {}  # withdrawn
        gossip.fire("n2")
        await next_build(table)
        assert answer(server, "web.service.default.orch.") == []
        assert server.generation == table.generation == 2
        assert len(builds) == 2
        await server.close()
    finally:
        await table.close()


async def test_a_sweep_builds_the_table_with_no_event() -> None:
    table = EndpointTable("n1", settle=0.0, resync=0.001)
    table.start(Gossip())
    try:
        for _ in range(3):
            await next_build(table)
        assert table.builds >= 3
        assert table.generation == 0
    finally:
        await table.close()


async def test_a_failing_reader_does_not_keep_the_others_from_the_table() -> None:
    table = EndpointTable("n1", settle=0.0, resync=3600.0)
    seen: list[int] = []

    def broken(_: EndpointTable) -> None:
        raise RuntimeError("a reader's bug")
    table.listeners += [broken, lambda t: seen.append(t.builds)]
    gossip = Gossip()
    table.start(gossip)
    try:
        await next_build(table)
        gossip.fire("n2")
        await next_build(table)
        assert seen == [1, 2]
    finally:
        await table.close()
