"""The endpoint table from gossip node states: who publishes what, and who is trusted."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from agent.lb import discovery
from agent.lb.discovery import Expected
from orch.gossip.core import MemberInfo
from orch.gossip.messages import Status
from orch.jobspec.model import Group, Network, Port, Service, Task
from orch.v1 import controller_pb2

GROUP = Group(name="g", tasks=(Task(name="t"),), network=Network(ports=(
    Port(label="http"), Port(label="dns", protocol="udp"), Port(label="admin"))), services=(
    Service(name="web", port="http", published_port=8080, lb_policy="maglev"),
    Service(name="dns", port="dns", published_port=5353, protocol="udp"),
    Service(name="admin", port="admin")))  # not published: discovery only
WEB = "default/shop/g/web"
HOSTS = {"n1": "127.0.0.2", "n2": "127.0.0.3", "n3": "127.0.0.4", "evil": "127.0.0.66"}


def member(name: str, state: Mapping[str, object], status: Status = Status.ALIVE) -> MemberInfo:
    return MemberInfo(name, (HOSTS.get(name, "127.0.0.9"), 7946), status, 0, state, 1, 0.0)


def publish(alloc: str, node: str, ports: dict[str, int], **kw: str) -> dict[str, Any]:
    return discovery.entries(alloc, GROUP, ports, HOSTS[node], job="shop", **kw)


def expected(*placed: tuple[str, str, int], service: str = "web", port: int = 8080,
             namespace: str = "default", job: str = "shop") -> controller_pb2.ExpectedService:
    return controller_pb2.ExpectedService(
        namespace=namespace, job=job, group="g", name=service, published_port=port,
        protocol="tcp", lb_policy="round_robin",
        endpoints=[controller_pb2.ExpectedEndpoint(alloc_id=a, node=n, port=p)
                   for a, n, p in placed])


def placed(*services: controller_pb2.ExpectedService) -> Expected:
    return Expected.from_proto(controller_pb2.ExpectedEndpoints(version=1, services=services))


def test_an_allocation_publishes_one_key_per_service_with_a_port() -> None:
    got = discovery.entries("a1", GROUP, {"http": 21000, "dns": 21001}, "127.0.0.2",
                            namespace="prod", job="shop")
    assert got == {
        "ep:web:a1": ["127.0.0.2", 21000, 8080, "tcp", "maglev", 1, False, "prod", "shop", "g"],
        "ep:dns:a1": ["127.0.0.2", 21001, 5353, "udp", "round_robin", 1, False, "prod", "shop",
                      "g"],
    }


def test_the_table_holds_the_placed_endpoints_of_alive_members() -> None:
    n1 = publish("a1", "n1", {"http": 21000, "dns": 21001, "admin": 21002})
    n2 = publish("b2", "n2", {"http": 22000})
    n3 = publish("c3", "n3", {"http": 23000})
    exp = placed(expected(("a1", "n1", 21000), ("b2", "n2", 22000), ("c3", "n3", 23000)))
    table = discovery.endpoint_table(
        [member("n1", n1), member("n2", {**n2, "role": "agent"}),
         member("n3", n3, Status.SUSPECT)], me="n2", expected=exp).services
    assert set(table) == {WEB}  # dns was not placed; admin has no published port
    web = table[WEB]
    # the spec is the controller's (round robin), not what the members say (maglev)
    assert (web.name, web.published_port, web.protocol, web.policy) == (
        "web", 8080, "tcp", "round_robin")
    assert [(e.alloc_id, e.node, e.port, e.local) for e in web.endpoints] == [
        ("a1", "n1", 21000, False), ("b2", "n2", 22000, True)]  # n3 is suspected: left out


def test_malformed_endpoints_from_a_member_are_refused_and_counted() -> None:
    good = publish("a1", "n1", {"http": 21000})
    bad = {"ep:web:x1": ["h", "not a port", 8080, "tcp", "round_robin", 1, False],
           "ep:web:x2": ["h", 1, 8080, "sctp", "round_robin", 1, False],
           "ep:web:x3": "garbage", "ep:broken": [1, 2, 3, 4, 5, 6, 7]}
    built = discovery.endpoint_table([member("n1", {**good, **bad})], me="n9",
                                     expected=placed(expected(("a1", "n1", 21000))))
    assert [e.alloc_id for e in built.services[WEB].endpoints] == ["a1"]
    assert built.refused["malformed"] == 4


def test_endpoints_the_controller_did_not_place_there_are_refused() -> None:
    """Any member can publish anything in its node state: only what the controller placed
    on that member, at that member's own address and port, reaches the table."""
    real = publish("a1", "n1", {"http": 21000})
    fake_alloc = publish("zz", "evil", {"http": 31000})                # never placed
    stolen = publish("a1", "evil", {"http": 21000})                    # placed on n1
    elsewhere = {"ep:web:b2": ["10.1.2.3", 22000, 8080, "tcp", "round_robin", 1, False]}
    wrong_port = {"ep:web:c3": [HOSTS["n3"], 9999, 8080, "tcp", "round_robin", 1, False]}
    exp = placed(expected(("a1", "n1", 21000), ("b2", "n2", 22000), ("c3", "n3", 23000)))
    built = discovery.endpoint_table(
        [member("n1", real), member("evil", {**fake_alloc, **stolen}),
         member("n2", elsewhere), member("n3", wrong_port)], me="n1", expected=exp)
    assert [e.alloc_id for e in built.services[WEB].endpoints] == ["a1"]
    assert {k: v for k, v in built.refused.items() if v} == {
        "unexpected": 1, "node": 1, "address": 1, "port": 1}


def test_jobs_in_other_namespaces_with_the_same_service_name_stay_apart() -> None:
    mine = publish("a1", "n1", {"http": 21000})
    theirs = discovery.entries("t1", GROUP, {"http": 21500}, HOSTS["n2"], namespace="team",
                               job="shop")
    exp = placed(expected(("a1", "n1", 21000)),
                 expected(("t1", "n2", 21500), namespace="team", port=9090))
    table = discovery.endpoint_table([member("n1", mine), member("n2", theirs)], me="n1",
                                     expected=exp).services
    assert {k: (v.published_port, [e.alloc_id for e in v.endpoints])
            for k, v in table.items()} == {WEB: (8080, ["a1"]),
                                           "team/shop/g/web": (9090, ["t1"])}


def test_before_the_controller_is_heard_only_our_own_endpoints_count() -> None:
    mine = publish("a1", "n1", {"http": 21000})
    other = publish("b2", "n2", {"http": 22000})
    built = discovery.endpoint_table([member("n1", mine), member("n2", other)], me="n1")
    assert [e.alloc_id for e in built.services[WEB].endpoints] == ["a1"]
    assert built.services[WEB].policy == "maglev"  # our own allocation's spec
    assert built.refused["unexpected"] == 1


@pytest.mark.parametrize("bad", [
    controller_pb2.ExpectedService(name="web", job="j", published_port=70000, protocol="tcp",
                                   lb_policy="p2c"),
    controller_pb2.ExpectedService(name="web", job="j", published_port=80, protocol="sctp",
                                   lb_policy="p2c"),
    controller_pb2.ExpectedService(name="", job="j", published_port=80, protocol="tcp",
                                   lb_policy="p2c")])
def test_expected_services_that_make_no_sense_are_left_out(
        bad: controller_pb2.ExpectedService) -> None:
    assert placed(bad).services == {}
