"""The zone an agent answers, built from its endpoint table and gossip's members (pure).

Names under the domain (``orch.`` by default)::

    <service>.service.<namespace>.<domain>   A/AAAA: each healthy endpoint's address
                                             SRV: port and <alloc-id>.alloc.<domain> of each
    <service>.service.<domain>               the same, in the default namespace
    <service>.mesh.<namespace>.<domain>      A: this agent (the routing mesh listens on every
                                             agent); SRV: the published port (for clients that
                                             want the load balancer rather than one replica)
    <node>.node.<domain>                     A/AAAA: a live member's address
    <alloc-id>.alloc.<domain>                A/AAAA: where an allocation's endpoints listen

A zone is rebuilt whole when the table changes (a burst of gossip events costs one build)
and looked up once per query; its records are dnspython rdata made at build time.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.IN.SRV

from agent.lb.model import ServiceSpec

A, AAAA, SRV, SOA, ANY = (dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.SRV,
                          dns.rdatatype.SOA, dns.rdatatype.ANY)
LABEL_MAX = 63
"""A DNS label's limit: a service, namespace, node or allocation name longer than this (or
not a valid label) has no DNS name; it is left out (and counted), never truncated."""


@dataclass(frozen=True, slots=True)
class Record:
    """One record of a name: its data, and for SRV the address records of its target."""

    rdata: dns.rdata.Rdata
    ttl: int
    extra: tuple[tuple[dns.name.Name, dns.rdata.Rdata], ...] = ()


@dataclass(slots=True)
class Zone:
    origin: dns.name.Name
    names: dict[dns.name.Name, dict[int, list[Record]]] = field(default_factory=dict)
    """Every name that has records, by type."""
    parents: set[dns.name.Name] = field(default_factory=set)
    """Names that exist only as parents of others (NOERROR with no data, not NXDOMAIN)."""
    left_out: int = 0
    """Services, nodes and allocations whose names are no DNS label."""
    version: int = 0

    def add(self, name: dns.name.Name, record: Record) -> None:
        self.names.setdefault(name, {}).setdefault(record.rdata.rdtype, []).append(record)
        parent = name.parent()
        while parent != self.origin and parent not in self.parents:
            self.parents.add(parent)
            parent = parent.parent()

    def lookup(self, name: dns.name.Name) -> dict[int, list[Record]] | None:
        """The records of ``name`` by type; {} for a name that exists with none; None for a
        name that does not exist."""
        found = self.names.get(name)
        if found is not None:
            return found
        return {} if name in self.parents or name == self.origin else None


def _label(text: str) -> dns.name.Name | None:
    try:
        n = dns.name.Name([text.lower().encode("ascii")])
    except (UnicodeEncodeError, dns.name.LabelTooLong, dns.name.EmptyLabel):
        return None
    if not text or len(text) > LABEL_MAX or "." in text:
        return None
    return n


def _addr(host: str) -> dns.rdata.Rdata | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.version == 4:
        return dns.rdtypes.IN.A.A(dns.rdataclass.IN, A, str(ip))  # type: ignore[no-untyped-call]
    return dns.rdtypes.IN.AAAA.AAAA(dns.rdataclass.IN, AAAA, str(ip))  # type: ignore[no-untyped-call]


def build(origin: dns.name.Name, catalog: Mapping[str, ServiceSpec],
          nodes: Iterable[tuple[str, str]], *, me: str, mesh_host: str, service_ttl: int,
          node_ttl: int, version: int = 0) -> Zone:
    """The zone of ``catalog`` (healthy endpoints, by service key) and ``nodes`` (live
    members: name, address); ``me`` is this agent's node, ``mesh_host`` the address its
    routing mesh is reached at ("" none)."""
    zone = Zone(origin, version=version)
    node_label = dns.name.Name([b"node"]).concatenate(origin)
    alloc_label = dns.name.Name([b"alloc"]).concatenate(origin)
    for node, host in nodes:
        label, rd = _label(node), _addr(host)
        if label is None or rd is None:
            zone.left_out += 1
            continue
        zone.add(label.concatenate(node_label), Record(rd, node_ttl))
    allocs: set[dns.name.Name] = set()
    for svc in catalog.values():
        name, ns = _label(svc.name), _label(svc.namespace)
        if name is None or ns is None:
            zone.left_out += 1
            continue
        names = [name.concatenate(dns.name.Name([b"service", *ns.labels])).concatenate(
            origin)]
        if svc.namespace == "default":
            names.append(name.concatenate(dns.name.Name([b"service"])).concatenate(origin))
        for ep in svc.endpoints:
            rd, alloc = _addr(ep.host), _label(ep.alloc_id)
            if rd is None or alloc is None:
                zone.left_out += 1
                continue
            target = alloc.concatenate(alloc_label)
            if target not in allocs:
                allocs.add(target)
                zone.add(target, Record(rd, service_ttl))
            srv = dns.rdtypes.IN.SRV.SRV(dns.rdataclass.IN, SRV, 1, 1, ep.port, target)  # type: ignore[no-untyped-call]
            for n in names:
                if not any(r.rdata == rd for r in zone.names.get(n, {}).get(rd.rdtype, ())):
                    zone.add(n, Record(rd, service_ttl))
                zone.add(n, Record(srv, service_ttl, ((target, rd),)))
        mesh = _addr(mesh_host) if mesh_host else None
        me_label = _label(me)
        if svc.published_port and mesh is not None and me_label is not None:
            mesh_name = name.concatenate(dns.name.Name([b"mesh", *ns.labels])).concatenate(
                origin)
            if mesh_name not in zone.names:
                target = me_label.concatenate(node_label)
                zone.add(mesh_name, Record(mesh, service_ttl))
                zone.add(mesh_name, Record(dns.rdtypes.IN.SRV.SRV(  # type: ignore[no-untyped-call]
                    dns.rdataclass.IN, SRV, 1, 1, svc.published_port, target), service_ttl,
                    ((target, mesh),)))
    return zone
