"""Answering one DNS query from a zone (pure: bytes in, bytes out, no I/O).

dnspython parses and renders every packet (name compression, EDNS, truncation); this
module decides what to say. A query that does not parse is dropped (``malformed``), one
that parses but is no plain query gets FORMERR or NOTIMP, a name outside the zone REFUSED
(or ``forward``: the I/O shell sends it upstream), an unknown name NXDOMAIN with the
zone's SOA, a name without the asked type NOERROR with the SOA; a UDP answer too large for
the client leaves out the SRV targets' addresses first, then is sent truncated (TC) so
that the client asks again over TCP.

Rendered answers are cached by the query's bytes (its id apart) until the zone changes,
a few orderings each, so that a hot name costs a dictionary lookup and the answer order
still varies from one query to the next.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.SOA
import dns.rrset

from agent.dns.config import DnsConfig
from agent.dns.zone import ANY, SOA, Record, Zone

OUTCOMES = ("answer", "nodata", "nxdomain", "refused", "formerr", "notimp", "truncated",
            "forward", "servfail", "ratelimited", "malformed")
"""How a query ended (the metrics' ``outcome`` label: a closed set)."""
QTYPES = ("A", "AAAA", "SRV", "SOA", "ANY", "other")
"""The metrics' ``qtype`` label: the types the zone holds, and the rest as ``other``."""
CACHE_ENTRIES = 20_000
"""Distinct queries whose answers are cached (cleared whole when full or when the zone
changes): bounds the cache whatever names clients ask for."""
ORDERINGS = 4
"""Orderings of one answer kept in the cache (one is picked at random per query)."""
MIN_QUERY = 12
"""A DNS header's size: anything shorter is dropped before it is parsed."""


@dataclass(frozen=True, slots=True)
class Result:
    wire: bytes | None
    """The answer (None: drop the packet, or forward it)."""
    outcome: str
    qtype: str
    query: dns.message.Message | None = None
    """The parsed query, when it is to be forwarded."""


def _same(a: dict[int, list[Record]] | None, b: dict[int, list[Record]] | None) -> bool:
    """Whether two zones hold the very same records for a name (the zone builder reuses a
    service's records while the service is unchanged, so identity is the test)."""
    if a is None or b is None:
        return a is b
    return a.keys() == b.keys() and all(
        len(a[t]) == len(b[t]) and all(x is y for x, y in zip(a[t], b[t], strict=True))
        for t in a)


def qtype_label(rdtype: int) -> str:
    text = dns.rdatatype.to_text(dns.rdatatype.RdataType.make(rdtype))
    return text if text in QTYPES else "other"


class Answerer:
    def __init__(self, cfg: DnsConfig, zone: Zone, rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.origin = cfg.origin
        self.rng = rng or random.Random()
        self.forwarding = bool(cfg.upstreams)
        self._cache: dict[tuple[bool, bool, bytes], tuple[list[bytes], str, str, str]] = {}
        """(udp, forwarding, the query without its id) -> (orderings rendered, outcome, qtype, the
        name asked, lower-case)."""
        self.zone = zone
        self.soa = dns.rdtypes.ANY.SOA.SOA(  # type: ignore[no-untyped-call]
            dns.rdataclass.IN, SOA, dns.name.Name([b"ns"]).concatenate(self.origin),
            dns.name.Name([b"hostmaster"]).concatenate(self.origin), 1, 3600, 600, 86400,
            cfg.service_ttl)

    def set_zone(self, zone: Zone) -> None:
        """Answer from ``zone`` from now on. Cached answers stay for the names whose records
        are the very same in both zones (a zone rebuilt for one changed service keeps the
        cached answers of every other), and go for the rest."""
        old, self.zone = self.zone, zone
        moved = old.parents ^ zone.parents  # names that now exist, or no longer, as parents
        for key, (_, _, _, name) in list(self._cache.items()):
            if name in moved or not _same(old.names.get(name), zone.names.get(name)):
                del self._cache[key]

    def respond(self, wire: bytes, *, udp: bool, forward: bool | None = None) -> Result:
        """The answer to ``wire``, a query received over UDP (``udp``) or TCP; names of
        other zones are for upstreams when ``forward`` (None: when ``upstreams`` are set),
        else REFUSED."""
        if len(wire) < MIN_QUERY:
            return Result(None, "malformed", "other")
        fwd = self.forwarding if forward is None else forward
        key = (udp, fwd, wire[2:])
        hit = self._cache.get(key)
        if hit is not None:
            variants, outcome, qtype, _ = hit
            return Result(wire[:2] + self.rng.choice(variants)[2:], outcome, qtype)
        try:
            query = dns.message.from_wire(wire, ignore_trailing=False)
        except Exception:  # dnspython raises many kinds for bad packets: all mean "drop"
            return Result(None, "malformed", "other")
        if query.flags & dns.flags.QR:
            return Result(None, "malformed", "other")  # a response sent to us: never answer it
        if query.opcode() != dns.opcode.QUERY:
            return self._error(query, dns.rcode.NOTIMP, "notimp", udp)
        if len(query.question) != 1:
            return self._error(query, dns.rcode.FORMERR, "formerr", udp)
        q = query.question[0]
        qtype = qtype_label(q.rdtype)
        if q.rdclass not in (dns.rdataclass.IN, dns.rdataclass.ANY):
            return self._error(query, dns.rcode.REFUSED, "refused", udp, qtype)
        name = q.name.canonicalize()
        if not name.is_subdomain(self.origin):
            if fwd:
                return Result(None, "forward", qtype, query)
            return self._error(query, dns.rcode.REFUSED, "refused", udp, qtype)
        variants, outcome = [], ""
        for _ in range(ORDERINGS):
            out, outcome = self._render(query, name, q.rdtype, udp, fwd)
            variants.append(out)
        if len(self._cache) >= CACHE_ENTRIES:
            self._cache.clear()
        self._cache[key] = (variants, outcome, qtype, name.to_text().lower())
        return Result(variants[0], outcome, qtype)

    def _error(self, query: dns.message.Message, rcode: dns.rcode.Rcode, outcome: str,
               udp: bool, qtype: str = "other") -> Result:
        r = dns.message.make_response(query)
        r.set_rcode(rcode)
        return Result(self._wire(r, udp, query), outcome, qtype)

    def _render(self, query: dns.message.Message, name: dns.name.Name, rdtype: int,
                udp: bool, fwd: bool) -> tuple[bytes, str]:
        r = dns.message.make_response(query)
        r.flags |= dns.flags.AA
        if fwd:
            r.flags |= dns.flags.RA
        found = self.zone.lookup(name)
        if found is None:
            r.set_rcode(dns.rcode.NXDOMAIN)
            self._soa(r)
            return self._wire(r, udp, query), "nxdomain"
        if rdtype == SOA and name == self.origin:
            r.answer.append(self._rrset(name, [Record(self.soa, self.cfg.service_ttl)]))
            return self._wire(r, udp, query), "answer"
        groups = list(found.values()) if rdtype == ANY else [found.get(rdtype, [])]
        records = [rec for g in groups for rec in g]
        if not records:
            self._soa(r)
            return self._wire(r, udp, query), "nodata"
        if len(records) > self.cfg.max_answers:
            records = self.rng.sample(records, self.cfg.max_answers)
        else:
            records = self.rng.sample(records, len(records))
        by_type: dict[int, list[Record]] = {}
        for rec in records:
            by_type.setdefault(rec.rdata.rdtype, []).append(rec)
        extra: dict[dns.name.Name, list[Record]] = {}
        for recs in by_type.values():
            r.answer.append(self._rrset(name, recs))
            for rec in recs:
                for target, rd in rec.extra:
                    extra.setdefault(target, []).append(Record(rd, rec.ttl))
        for target, recs in extra.items():
            r.additional.append(self._rrset(target, recs))
        wire = self._wire(r, udp, query)
        return wire, "truncated" if dns.flags.TC & int.from_bytes(wire[2:4], "big") else "answer"

    def _soa(self, r: dns.message.Message) -> None:
        r.authority.append(self._rrset(self.origin, [Record(self.soa, self.cfg.service_ttl)]))

    @staticmethod
    def _rrset(name: dns.name.Name, recs: list[Record]) -> dns.rrset.RRset:
        rrset = dns.rrset.RRset(name, dns.rdataclass.IN, recs[0].rdata.rdtype)
        rrset.update_ttl(recs[0].ttl)
        for rec in recs:
            rrset.add(rec.rdata)
        return rrset

    def _wire(self, r: dns.message.Message, udp: bool, query: dns.message.Message) -> bytes:
        if udp:
            limit = min(max(512, query.payload), self.cfg.udp_payload) if query.edns >= 0 else 512
        else:
            limit = 65535
        try:
            return r.to_wire(max_size=limit)
        except dns.exception.TooBig:
            pass
        if r.additional:  # the SRV targets' addresses are a courtesy: left out before TC
            r.additional.clear()
            try:
                return r.to_wire(max_size=limit)
            except dns.exception.TooBig:
                pass
        r.answer.clear()
        r.authority.clear()
        r.flags |= dns.flags.TC
        return r.to_wire(max_size=limit)
