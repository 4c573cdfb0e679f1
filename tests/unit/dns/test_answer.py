"""The DNS zone and answers (pure): names, types, order, truncation, errors, bad packets."""

from __future__ import annotations

import random
import struct

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.dns import zone as zones
from agent.dns.answer import Answerer
from agent.dns.config import DnsConfig
from agent.lb.model import Endpoint, ServiceSpec


def _svc(name: str, n: int, *, namespace: str = "default", published: int = 0,
         base: int = 0) -> ServiceSpec:
    return ServiceSpec(name=name, namespace=namespace, job="j", group="g",
                       published_port=published, endpoints=tuple(
                           Endpoint(alloc_id=f"{name}-{namespace}-{base + i}", node=f"n{i % 3}",
                                    host=f"10.0.{i // 250}.{i % 250 + 1}", port=20000 + i)
                           for i in range(n)))


def _answerer(catalog: dict[str, ServiceSpec], cfg: DnsConfig | None = None,
              seed: int = 1) -> Answerer:
    cfg = cfg or DnsConfig()
    zone = zones.build(cfg.origin, catalog, [("n0", "10.1.0.1"), ("n1", "10.1.0.2"),
                                             ("n2", "fd00::2")],
                       me="n0", mesh_host="10.1.0.1", service_ttl=cfg.service_ttl,
                       node_ttl=cfg.node_ttl)
    return Answerer(cfg, zone, random.Random(seed))


def ask(a: Answerer, name: str, rdtype: str = "A", *, udp: bool = True,
        payload: int | None = None) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, use_edns=payload is not None,
                               payload=payload or 512)
    r = a.respond(q.to_wire(), udp=udp)
    assert r.wire is not None
    out = dns.message.from_wire(r.wire)
    assert out.id == q.id
    return out


def addresses(m: dns.message.Message) -> list[str]:
    return [rd.to_text() for rrset in m.answer for rd in rrset]


CATALOG = {"default/j/g/web": _svc("web", 3, published=8080),
           "prod/j/g/web": _svc("web", 2, namespace="prod", base=10),
           "default/j/g/db": _svc("db", 1)}


def test_a_records_are_the_healthy_endpoints_of_the_namespace() -> None:
    a = _answerer(CATALOG)
    assert sorted(addresses(ask(a, "web.service.default.orch."))) == [
        "10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert sorted(addresses(ask(a, "web.service.prod.orch."))) == ["10.0.0.1", "10.0.0.2"]
    assert sorted(addresses(ask(a, "WEB.Service.orch."))) == [  # default namespace, any case
        "10.0.0.1", "10.0.0.2", "10.0.0.3"]
    m = ask(a, "web.service.default.orch.")
    assert m.flags & dns.flags.AA
    assert m.rcode() == dns.rcode.NOERROR
    assert m.answer[0].ttl == 0


def test_srv_names_each_endpoint_with_its_port_and_address() -> None:
    m = ask(_answerer(CATALOG), "web.service.default.orch.", "SRV")
    srv = sorted((rd.port, rd.target.to_text()) for rd in m.answer[0])
    assert srv == [(20000, "web-default-0.alloc.orch."), (20001, "web-default-1.alloc.orch."),
                   (20002, "web-default-2.alloc.orch.")]
    glue = {rrset.name.to_text(): rrset[0].to_text() for rrset in m.additional}
    assert glue == {"web-default-0.alloc.orch.": "10.0.0.1",
                    "web-default-1.alloc.orch.": "10.0.0.2",
                    "web-default-2.alloc.orch.": "10.0.0.3"}


def test_mesh_name_answers_this_agent_and_the_published_port() -> None:
    a = _answerer(CATALOG)
    assert addresses(ask(a, "web.mesh.default.orch.")) == ["10.1.0.1"]
    m = ask(a, "web.mesh.default.orch.", "SRV")
    assert [(rd.port, rd.target.to_text()) for rd in m.answer[0]] == [(8080, "n0.node.orch.")]
    # a service without a published port has no mesh name
    assert ask(a, "db.mesh.default.orch.").rcode() == dns.rcode.NXDOMAIN


def test_nodes_and_allocations() -> None:
    a = _answerer(CATALOG)
    assert addresses(ask(a, "n1.node.orch.")) == ["10.1.0.2"]
    assert ask(a, "n1.node.orch.").answer[0].ttl == 5
    assert addresses(ask(a, "n2.node.orch.", "AAAA")) == ["fd00::2"]
    assert ask(a, "n2.node.orch.", "A").answer == []  # exists, no A: NODATA
    assert addresses(ask(a, "db-default-0.alloc.orch.")) == ["10.0.0.1"]


def test_unknown_names_are_nxdomain_with_the_soa_and_parents_nodata() -> None:
    a = _answerer(CATALOG)
    m = ask(a, "nope.service.default.orch.")
    assert m.rcode() == dns.rcode.NXDOMAIN
    assert m.authority[0].rdtype == dns.rdatatype.SOA
    assert m.authority[0].name == dns.name.from_text("orch.")
    m = ask(a, "service.default.orch.")
    assert m.rcode() == dns.rcode.NOERROR
    assert not m.answer
    assert m.authority
    assert ask(a, "orch.", "SOA").answer[0].rdtype == dns.rdatatype.SOA


def test_other_zones_are_refused_unless_forwarding() -> None:
    m = ask(_answerer(CATALOG), "example.com.")
    assert m.rcode() == dns.rcode.REFUSED
    assert not m.flags & dns.flags.RA
    a = _answerer(CATALOG, DnsConfig(upstreams=["127.0.0.1:5353"]))
    q = dns.message.make_query("example.com.", "A")
    r = a.respond(q.to_wire(), udp=True)
    assert r.outcome == "forward"
    assert r.wire is None
    assert r.query is not None


def test_configured_domain() -> None:
    a = _answerer(CATALOG, DnsConfig(domain="cluster.example"))
    assert len(addresses(ask(a, "web.service.default.cluster.example."))) == 3
    assert ask(a, "web.service.default.orch.").rcode() == dns.rcode.REFUSED


def test_answer_order_varies() -> None:
    a = _answerer({"default/j/g/web": _svc("web", 8)})
    orders = {tuple(addresses(ask(a, "web.service.orch."))) for _ in range(40)}
    assert len(orders) > 1
    assert all(len(o) == 8 for o in orders)


def test_large_answers_truncate_over_udp_and_come_whole_over_tcp() -> None:
    a = _answerer({"default/j/g/big": _svc("big", 100), "default/j/g/mid": _svc("mid", 60)})
    m = ask(a, "big.service.orch.", "SRV")
    assert m.flags & dns.flags.TC
    assert not m.answer
    r = a.respond(dns.message.make_query("big.service.orch.", "SRV").to_wire(), udp=True)
    assert r.outcome == "truncated"
    m = ask(a, "big.service.orch.", "SRV", udp=False)
    assert not m.flags & dns.flags.TC
    assert len(m.answer[0]) == 100
    # EDNS lets a UDP answer grow up to udp_payload
    assert ask(a, "mid.service.orch.", "A").flags & dns.flags.TC
    m = ask(a, "mid.service.orch.", "A", payload=4096)  # 60 A records: ~1 KB
    assert not m.flags & dns.flags.TC
    assert len(m.answer[0]) == 60


def test_answers_are_capped() -> None:
    a = _answerer({"default/j/g/big": _svc("big", 80)}, DnsConfig(max_answers=50))
    m = ask(a, "big.service.orch.", "A", udp=False)
    assert len(m.answer[0]) == 50


def test_names_that_are_no_label_are_left_out() -> None:
    cat = {"default/j/g/x": _svc("a.b", 1), "default/j/g/y": _svc("x" * 64, 1),
           "default/j/g/z": _svc("ok", 1)}
    a = _answerer(cat)
    assert a.zone.left_out == 2
    assert addresses(ask(a, "ok.service.orch."))


def _header(qd: int = 1, flags: int = 0x0100) -> bytes:
    return struct.pack("!HHHHHH", 0x1234, flags, qd, 0, 0, 0)


@pytest.mark.parametrize("packet", [
    b"", b"\x12", _header(),  # too short, header alone with a missing question
    _header() + b"\x03web\x07service",  # truncated name
    _header() + b"\xc0\x0c\x00\x01\x00\x01",  # a compression pointer to itself (a loop)
    _header() + b"\xc0\x0e\xc0\x0c\x00\x01\x00\x01",  # two pointers to each other
    _header(flags=0x8100) + dns.message.make_query("web.service.orch.", "A").to_wire()[12:],
])
def test_bad_packets_are_dropped_and_counted(packet: bytes) -> None:
    r = _answerer(CATALOG).respond(packet, udp=True)
    assert r.wire is None
    assert r.outcome == "malformed"


def test_queries_that_are_no_plain_query_get_an_error() -> None:
    a = _answerer(CATALOG)
    q = dns.message.make_query("web.service.orch.", "A")
    q.set_opcode(dns.opcode.NOTIFY)
    r = a.respond(q.to_wire(), udp=True)
    assert r.outcome == "notimp"
    assert dns.message.from_wire(r.wire).rcode() == dns.rcode.NOTIMP  # type: ignore[arg-type]
    two = _header(qd=2) + 2 * dns.message.make_query("web.service.orch.", "A").to_wire()[12:]
    r = a.respond(two, udp=True)
    assert r.outcome == "formerr"


def test_oversized_packets_are_refused_whole() -> None:
    q = dns.message.make_query("web.service.orch.", "A").to_wire()
    r = _answerer(CATALOG).respond(q + b"\x00" * 70000, udp=False)
    assert r.wire is None
    assert r.outcome == "malformed"


SHARED = _answerer(CATALOG)


@given(st.binary(max_size=600))
@settings(max_examples=150)  # more in tests/unit/test_fuzz.py and the fuzz tier
def test_random_packets_never_raise_and_never_answer_wrongly(data: bytes) -> None:
    r = SHARED.respond(data, udp=True)
    if r.wire is not None:
        m = dns.message.from_wire(r.wire)
        assert m.id == int.from_bytes(data[:2], "big")
        assert m.flags & dns.flags.QR
        assert len(r.wire) <= 512 or m.edns >= 0


def test_cached_answers_keep_the_query_id_and_change_with_the_zone() -> None:
    a = _answerer(CATALOG)
    first = ask(a, "web.service.orch.")
    again = ask(a, "web.service.orch.")
    assert sorted(addresses(first)) == sorted(addresses(again))
    a.set_zone(zones.build(a.origin, {}, [], me="n0", mesh_host="", service_ttl=0, node_ttl=5))
    assert ask(a, "web.service.orch.").rcode() == dns.rcode.NXDOMAIN


def test_config_refuses_bad_values() -> None:
    with pytest.raises(ValueError, match="domain"):
        DnsConfig(domain=".")
    with pytest.raises(ValueError, match="udp_payload"):
        DnsConfig(udp_payload=100)


def test_srv_addresses_are_left_out_before_truncating() -> None:
    a = _answerer({"default/j/g/web": _svc("web", 9)})
    m = ask(a, "web.service.orch.", "SRV")
    assert not m.flags & dns.flags.TC
    assert len(m.answer[0]) == 9
    assert not m.additional
    assert len(ask(a, "web.service.orch.", "SRV", payload=1232).additional) == 9


def test_a_new_zone_keeps_the_cached_answers_of_unchanged_names() -> None:
    cfg = DnsConfig()
    web, db = _svc("web", 3), _svc("db", 2)
    a = Answerer(cfg, zones.build(cfg.origin, {"w": web, "d": db}, [], me="n0", mesh_host="",
                                  service_ttl=0, node_ttl=5), random.Random(1))
    ask(a, "web.service.orch.")
    ask(a, "db.service.orch.")
    ask(a, "new.service.orch.")  # NXDOMAIN, cached
    assert len(a._cache) == 3
    grown = _svc("db", 3)  # db gains an endpoint; web is as it was
    a.set_zone(zones.build(cfg.origin, {"w": web, "d": grown, "n": _svc("new", 1)}, [],
                           me="n0", mesh_host="", service_ttl=0, node_ttl=5))
    assert len(a._cache) == 1  # web's answer only
    assert len(addresses(ask(a, "db.service.orch."))) == 3
    assert len(addresses(ask(a, "new.service.orch."))) == 1
