"""What the load balancer is told, and nothing else: services and their endpoints.

The agent builds these from gossip (``discovery``) and hands the whole table to
``LoadBalancer.update`` whenever it changes; the load balancer opens, keeps or
closes listeners and moves traffic accordingly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

POLICIES = ("round_robin", "random", "least_conn", "p2c", "maglev")


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """One place a service answers: an allocation's host port on some node."""

    alloc_id: str
    node: str
    """The gossip member (node) name that runs it."""
    host: str
    port: int
    weight: int = 1
    local: bool = False
    """Runs on this agent's own node (for ``prefer_local``)."""
    proxy_protocol: bool = False
    """Send a PROXY protocol v2 header first, so the endpoint learns the client's address."""
    rtt: float | None = None
    """Estimated round-trip time (seconds) from this agent to the endpoint's node, from the
    gossip network coordinates (for ``prefer_nearest``); None when unknown."""

    @property
    def key(self) -> tuple[str, int]:
        return (self.host, self.port)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSpec:
    """A service published on every node at ``published_port``."""

    name: str
    published_port: int
    namespace: str = "default"
    job: str = ""
    group: str = ""
    """Where the service is defined (a job's group): with ``name``, its identity."""
    protocol: str = "tcp"
    """tcp or udp."""
    policy: str = "round_robin"
    """round_robin, random, least_conn, p2c or maglev (consistent hashing on the client
    address)."""
    proxy_protocol: bool = False
    """Its endpoints get a PROXY protocol v2 header first (each ``Endpoint`` says so too)."""
    endpoints: tuple[Endpoint, ...] = field(default_factory=tuple)
    """Healthy endpoints only; an endpoint that disappears drains."""
