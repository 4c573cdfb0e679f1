"""The DNS server's settings (``[dns]`` in the agent's file): every default written once."""

from __future__ import annotations

from dataclasses import dataclass, field

import dns.name


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsConfig:
    enabled: bool = True
    """Serve DNS on this agent."""
    addr: str = "127.0.0.1:8600"
    """Where the agent answers (UDP and TCP). Consul's port; resolvers that cannot name a
    port (resolv.conf, Docker's ``--dns``) need ``task_addr``."""
    task_addr: str = ""
    """A second listener for tasks, on port 53 (resolv.conf cannot name another): "" none;
    "bridge" the Docker bridge's gateway address (what bridged containers reach the host
    by); or an address. Docker tasks on the bridge get it as their resolver, process tasks
    a resolv.conf naming it."""
    domain: str = "orch."
    """The zone answered: ``<service>.service.<namespace>.<domain>`` and so on."""
    service_ttl: int = 0
    """Seconds a service's or allocation's answer may be cached (endpoints come and go;
    Consul's default is 0 too)."""
    node_ttl: int = 5
    """Seconds a node's address may be cached."""
    upstreams: list[str] = field(default_factory=list)
    """Resolvers (``host[:port]``) that other zones are forwarded to; empty: REFUSED."""
    node_resolvers: str = "/etc/resolv.conf"
    """The node's resolver file. When ``upstreams`` is empty, the task listener
    (``task_addr``) forwards other zones to its nameservers, so that tasks whose resolver
    is the agent still resolve every other name; "" none (REFUSED, as the main listener)."""
    upstream_timeout: float = 2.0
    """Seconds an upstream has to answer before the client gets SERVFAIL."""
    rate: float = 2000.0
    """Queries per second each source address may send (a token bucket); more are dropped
    and counted."""
    burst: int = 4000
    """Queries a source may send at once, above its rate."""
    sources: int = 4096
    """Source addresses whose buckets are kept (the oldest is forgotten first): bounds the
    limiter's memory whatever the number of senders."""
    udp_payload: int = 1232
    """Largest UDP answer, whatever a client's EDNS asks (the DNS flag day's safe size);
    larger answers are truncated (TC) and the client asks again over TCP."""
    tcp_clients: int = 256
    """TCP connections served at once; more wait for one to close."""
    tcp_idle: float = 10.0
    """Seconds a TCP connection may stay idle."""
    max_answers: int = 256
    """Records in one answer at most (a service of more endpoints answers a random
    subset), so that a TCP answer stays under 64 KiB."""

    def __post_init__(self) -> None:
        try:
            name = dns.name.from_text(self.domain)
        except Exception as e:
            raise ValueError(f"dns.domain {self.domain!r} is not a domain name ({e})") from None
        if name == dns.name.root:
            raise ValueError("dns.domain may not be the root")
        for what, v, lo in (("service_ttl", self.service_ttl, 0), ("node_ttl", self.node_ttl, 0),
                            ("burst", self.burst, 1), ("sources", self.sources, 1),
                            ("tcp_clients", self.tcp_clients, 1),
                            ("max_answers", self.max_answers, 1)):
            if v < lo:
                raise ValueError(f"dns.{what} must be >= {lo}, got {v}")
        if not 512 <= self.udp_payload <= 4096:
            raise ValueError(f"dns.udp_payload must be within 512..4096, got {self.udp_payload}")
        if self.rate <= 0 or self.upstream_timeout <= 0 or self.tcp_idle <= 0:
            raise ValueError("dns.rate, dns.upstream_timeout and dns.tcp_idle must be > 0")

    @property
    def origin(self) -> dns.name.Name:
        return dns.name.from_text(self.domain)
