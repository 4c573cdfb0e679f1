"""The endpoint table from gossip node states: who publishes what, and who is trusted."""

from __future__ import annotations

from agent.lb import discovery
from orch.gossip.core import MemberInfo
from orch.gossip.messages import Status
from orch.jobspec.model import Group, Network, Port, Service, Task

GROUP = Group(name="g", tasks=(Task(name="t"),), network=Network(ports=(
    Port(label="http"), Port(label="dns", protocol="udp"), Port(label="admin"))), services=(
    Service(name="web", port="http", published_port=8080, lb_policy="maglev"),
    Service(name="dns", port="dns", published_port=5353, protocol="udp"),
    Service(name="admin", port="admin")))  # not published: discovery only


def member(name: str, state: dict[str, object], status: Status = Status.ALIVE) -> MemberInfo:
    return MemberInfo(name, ("127.0.0.9", 7946), status, 0, state, 1, 0.0)


def test_an_allocation_publishes_one_key_per_service_with_a_port() -> None:
    got = discovery.entries("a1", GROUP, {"http": 21000, "dns": 21001}, "127.0.0.2")
    assert got == {
        "ep:web:a1": ["127.0.0.2", 21000, 8080, "tcp", "maglev", 1, False],
        "ep:dns:a1": ["127.0.0.2", 21001, 5353, "udp", "round_robin", 1, False],
    }


def test_the_table_holds_alive_members_endpoints_only() -> None:
    n1 = discovery.entries("a1", GROUP, {"http": 21000, "dns": 21001, "admin": 21002}, "127.0.0.2")
    n2 = discovery.entries("b2", GROUP, {"http": 22000}, "127.0.0.3")
    n3 = discovery.entries("c3", GROUP, {"http": 23000}, "127.0.0.4")
    table = discovery.endpoint_table(
        [member("n1", n1), member("n2", {**n2, "role": "agent"}),
         member("n3", n3, Status.SUSPECT)], me="n2")
    assert set(table) == {"web", "dns"}  # admin has no published port
    web = table["web"]
    assert (web.published_port, web.protocol, web.policy) == (8080, "tcp", "maglev")
    assert [(e.alloc_id, e.node, e.port, e.local) for e in web.endpoints] == [
        ("a1", "n1", 21000, False), ("b2", "n2", 22000, True)]  # n3 is suspected: left out
    assert table["dns"].protocol == "udp"


def test_malformed_endpoints_from_a_member_are_ignored() -> None:
    good = discovery.entries("a1", GROUP, {"http": 21000}, "127.0.0.2")
    bad = {"ep:web:x1": ["h", "not a port", 8080, "tcp", "round_robin", 1, False],
           "ep:web:x2": ["h", 1, 8080, "sctp", "round_robin", 1, False],
           "ep:web:x3": "garbage", "ep:broken": [1, 2, 3, 4, 5, 6, 7]}
    table = discovery.endpoint_table([member("n1", {**good, **bad})], me="n9")
    assert [e.alloc_id for e in table["web"].endpoints] == ["a1"]
