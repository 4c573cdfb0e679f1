"""What the load balancer reports: plain data, for ``orchctl`` and the Prometheus exporter.

Counters only grow (Prometheus ``_total``); gauges are the state at the snapshot. The
connect-latency histogram has fixed buckets, as a Prometheus histogram's, counted per
bucket (not cumulative); ``cumulative()`` gives the exposition's ``le`` form.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0)
"""Upper bounds in seconds of the connect-latency buckets; one more bucket (+Inf) follows."""


@dataclass(slots=True)
class Histogram:
    """Observed values per bucket of ``bounds`` (the last count is above every bound)."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    sum: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def copy(self) -> Histogram:
        return Histogram(self.bounds, list(self.counts), self.sum, self.count)

    def cumulative(self) -> list[tuple[float, int]]:
        """``[(le, count of values ≤ le), ..., (inf, count)]`` as Prometheus exposes it."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out

    def quantile(self, q: float) -> float:
        """An upper bound of the q-quantile: the bound of the bucket it falls in."""
        if self.count == 0:
            return 0.0
        rank = q * self.count
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            if running >= rank:
                return bound
        return float("inf")


@dataclass(frozen=True, slots=True)
class EndpointStats:
    name: str
    """host:port."""
    alloc_id: str
    node: str
    state: str
    """healthy, probing (back from an ejection), ejected, or draining (removed)."""
    active: int
    total: int
    connect_failures: int
    ejections: int


@dataclass(frozen=True, slots=True)
class ServiceStats:
    name: str
    protocol: str
    policy: str
    port: int
    """The published port (the one bound when 0 was asked for)."""
    listening: bool
    bind_error: str | None
    """Why the port is not bound now (it is retried); None when listening."""
    active: int
    """Open client connections (TCP) or sessions (UDP), draining ones included."""
    total: int
    """Client connections (sessions) accepted."""
    rejected: int
    """Clients turned away by ``max_connections``."""
    failed: int
    """Clients closed because no endpoint could be reached (or none existed)."""
    bytes_in: int
    """Bytes (payload) from clients to endpoints."""
    bytes_out: int
    """Bytes from endpoints to clients."""
    connect_failures: int
    """Connects to endpoints that failed or timed out (UDP: ICMP errors)."""
    retries: int
    """Connects made to a further endpoint after a failure."""
    ejections: int
    """Endpoint ejections by outlier detection."""
    endpoints: dict[str, int]
    """Endpoints by state: healthy, probing, ejected, draining."""
    endpoint_details: tuple[EndpointStats, ...]
    connect_latency: Histogram
    """Seconds from the start of a successful connect to its completion (TCP)."""
    namespace: str = "default"
    job: str = ""
    group: str = ""
    rejected_prefix: int = 0
    """Clients turned away by ``max_per_prefix``."""
    rejected_rate: int = 0
    """Datagrams from new UDP clients dropped past ``udp_new_session_rate``."""
    rejected_busy: int = 0
    """Datagrams from new UDP clients dropped while the published socket's queue was past
    ``udp_busy_backlog`` (the event loop behind)."""
    evicted: int = 0
    """UDP sessions not established yet ended to make room for a new client."""
    mode: str = "proxy"
    """Which data plane forwards it: proxy (user space) or kernel (nftables)."""
    packets_in: int = 0
    """Packets from clients (kernel mode only: the proxy counts bytes)."""
    packets_out: int = 0
    """Packets to clients (kernel mode only)."""
