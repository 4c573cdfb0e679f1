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

import functools
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
    names: dict[str, dict[int, list[Record]]] = field(default_factory=dict)
    """Every name that has records (its lower-case text, absolute), by type."""
    parents: set[str] = field(default_factory=set)
    """Names that exist only as parents of others (NOERROR with no data, not NXDOMAIN)."""
    left_out: int = 0
    """Services, nodes and allocations whose names are no DNS label."""
    version: int = 0
    text: str = ""
    """The origin's text (``orch.``)."""

    def __post_init__(self) -> None:
        self.text = self.origin.to_text()

    def add(self, name: str, record: Record) -> None:
        types = self.names.get(name)
        if types is None:  # a new name: its parents exist from now on
            types = self.names[name] = {}
            origin = self.text
            parent = name.split(".", 1)[1]
            while parent != origin and parent not in self.parents:
                self.parents.add(parent)
                parent = parent.split(".", 1)[1]
        types.setdefault(record.rdata.rdtype, []).append(record)

    def lookup(self, name: dns.name.Name) -> dict[int, list[Record]] | None:
        """The records of ``name`` by type; {} for a name that exists with none; None for a
        name that does not exist."""
        text = name.to_text().lower()
        found = self.names.get(text)
        if found is not None:
            return found
        return {} if text in self.parents or name == self.origin else None


@functools.lru_cache(maxsize=65536)
def _label(text: str) -> str | None:
    """``text`` as one lower-case DNS label; None when it cannot be one."""
    if not text or len(text) > LABEL_MAX or "." in text:
        return None
    try:
        dns.name.Name([text.lower().encode("ascii")])
    except (UnicodeEncodeError, dns.name.LabelTooLong, dns.name.EmptyLabel):
        return None
    return text.lower()


@functools.lru_cache(maxsize=65536)
def _addr(host: str) -> dns.rdata.Rdata | None:
    """The A or AAAA record of an address (made once: rdata are immutable)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.version == 4:
        return dns.rdtypes.IN.A.A(dns.rdataclass.IN, A, str(ip))  # type: ignore[no-untyped-call]
    return dns.rdtypes.IN.AAAA.AAAA(dns.rdataclass.IN, AAAA, str(ip))  # type: ignore[no-untyped-call]


@functools.lru_cache(maxsize=65536)
def _name(text: str) -> dns.name.Name:
    return dns.name.from_text(text)


ServiceRecords = tuple[tuple[str, Record], ...]


@functools.lru_cache(maxsize=16384)
def _service(svc: ServiceSpec, origin: str, ttl: int) -> tuple[ServiceRecords, int]:
    """A service's names and records, and how many of its endpoints have none. Made once
    per service as it is (a rebuild redoes only the services that changed)."""
    name, ns = _label(svc.name), _label(svc.namespace)
    if name is None or ns is None:
        return (), 1
    names = [f"{name}.service.{ns}.{origin}"]
    if svc.namespace == "default":
        names.append(f"{name}.service.{origin}")
    out: list[tuple[str, Record]] = []
    hosts: set[str] = set()
    left_out = 0
    for ep in svc.endpoints:
        rd, alloc = _addr(ep.host), _label(ep.alloc_id)
        if rd is None or alloc is None:
            left_out += 1
            continue
        target_text = f"{alloc}.alloc.{origin}"
        target = _name(target_text)
        out.append((target_text, Record(rd, ttl)))
        srv = dns.rdtypes.IN.SRV.SRV(dns.rdataclass.IN, SRV, 1, 1, ep.port, target)  # type: ignore[no-untyped-call]
        first = ep.host not in hosts  # one A record per address, one SRV per endpoint
        hosts.add(ep.host)
        for n in names:
            if first:
                out.append((n, Record(rd, ttl)))
            out.append((n, Record(srv, ttl, ((target, rd),))))
    return tuple(out), left_out


def build(origin: dns.name.Name, catalog: Mapping[str, ServiceSpec],
          nodes: Iterable[tuple[str, str]], *, me: str, mesh_host: str, service_ttl: int,
          node_ttl: int, version: int = 0) -> Zone:
    """The zone of ``catalog`` (healthy endpoints, by service key) and ``nodes`` (live
    members: name, address); ``me`` is this agent's node, ``mesh_host`` the address its
    routing mesh is reached at ("" none)."""
    zone = Zone(origin, version=version)
    text = zone.text
    for node, host in nodes:
        label, rd = _label(node), _addr(host)
        if label is None or rd is None:
            zone.left_out += 1
            continue
        zone.add(f"{label}.node.{text}", Record(rd, node_ttl))
    mesh = _addr(mesh_host) if mesh_host else None
    me_label = _label(me)
    allocs: set[str] = set()
    alloc_suffix = ".alloc." + text
    for svc in catalog.values():
        records, left_out = _service(svc, text, service_ttl)
        zone.left_out += left_out
        for key, record in records:
            if key.endswith(alloc_suffix):
                if key in allocs:
                    continue
                allocs.add(key)
            zone.add(key, record)
        name, ns = _label(svc.name), _label(svc.namespace)
        if svc.published_port and mesh is not None and me_label is not None and name and ns:
            mesh_name = f"{name}.mesh.{ns}.{text}"
            if mesh_name not in zone.names:
                target = _name(f"{me_label}.node.{text}")
                zone.add(mesh_name, Record(mesh, service_ttl))
                zone.add(mesh_name, Record(dns.rdtypes.IN.SRV.SRV(  # type: ignore[no-untyped-call]
                    dns.rdataclass.IN, SRV, 1, 1, svc.published_port, target), service_ttl,
                    ((target, mesh),)))
    return zone
