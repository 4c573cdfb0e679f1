"""Load balancer settings: every default written once, beside its meaning.

The timings follow what HAProxy and Envoy users run on a LAN: connects fail
fast and are retried elsewhere, idle connections live for minutes, and a
removed endpoint's connections get half a minute to finish.
"""

from __future__ import annotations

from dataclasses import dataclass

from orch.errors import ConfigError

MODES = ("kernel", "proxy")
MAX_UDP_RECEIVE_BUFFER = 64 * 1024 * 1024
"""Upper bound of ``udp_receive_buffer``: kernel memory per published UDP port."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LbConfig:
    mode: str = "kernel"
    """Data plane of the published services: ``kernel`` (nftables forwards them; the agent
    falls back to ``proxy`` where nftables or CAP_NET_ADMIN is missing, and says so) or
    ``proxy`` (the user-space proxy only). In kernel mode, a service whose policy is
    least_conn or p2c, or that sends the PROXY protocol, stays in the proxy."""

    # --- connecting to endpoints ----------------------------------------------------------
    connect_timeout: float = 2.0
    """Seconds a connect to one endpoint may take before it counts as failed and the next
    endpoint is tried. Checked every eighth of it (one timer per service, none per
    connection): a hung connect is given up after 1 to 1.125 × this."""
    connect_retries: int = 3
    """Further endpoints tried after a failed connect (each a different one while untried
    ones remain); the client is closed only when all of them failed."""
    prefer_local: bool = True
    """Send to endpoints on this node (``Endpoint.local``) while one of them is usable;
    elsewhere only when none is."""
    prefer_nearest: bool = False
    """Among the usable endpoints (after ``prefer_local``), send only to the nearest: those
    whose estimated round-trip time (network coordinates, ``Endpoint.rtt``) is within
    ``nearest_tolerance`` of the nearest one's. Endpoints of unknown distance count as far."""
    nearest_tolerance: float = 0.001
    """Seconds of estimated RTT beyond the nearest endpoint's that still count as near."""

    # --- connection limits ---------------------------------------------------------------
    idle_timeout: float = 600.0
    """Seconds without a byte in either direction after which a TCP connection is closed.
    Checked lazily: a connection closes between ``idle_timeout`` and 1.25 × that."""
    max_connections: int = 10_000
    """Open client connections (TCP) or sessions (UDP) per service; a client beyond it is
    closed at once (TCP) or its datagram dropped (UDP), and counted as rejected."""
    drain_grace: float = 30.0
    """Seconds the connections of a removed endpoint, or of a removed service, may go on
    before they are closed. New connections go elsewhere at once."""
    max_per_prefix: int = 2_000
    """Open connections (TCP) or sessions (UDP) per service from one client network (a /24
    for IPv4, a /64 for IPv6: ``prefix_v4``, ``prefix_v6``); a client beyond it is turned
    away and counted (reason ``prefix``). One network cannot take a service's
    ``max_connections`` from everyone else; a fifth of them leaves room for many clients
    behind one NAT."""
    prefix_v4: int = 24
    """Bits of an IPv4 client address that make its network for ``max_per_prefix``."""
    prefix_v6: int = 64
    """Bits of an IPv6 client address that make its network for ``max_per_prefix``."""

    # --- back-pressure -------------------------------------------------------------------
    write_high_water: int = 256 * 1024
    """Bytes queued towards one side after which reading from the other side pauses.
    Memory per connection is bounded by about two of these plus one read (256 KiB)."""
    write_low_water: int = 64 * 1024
    """Bytes queued below which reading resumes."""
    pending_limit: int = 64 * 1024
    """Bytes from a client kept while its endpoint connect is in progress (sent once
    connected, and again to the next endpoint when the connect fails); reading pauses
    beyond it."""

    # --- passive outlier detection -------------------------------------------------------
    outlier_consecutive_failures: int = 3
    """Consecutive failed connects after which an endpoint is ejected."""
    outlier_base_ejection: float = 5.0
    """Seconds of the first ejection; the n-th lasts base × 2^(n-1), up to the maximum."""
    outlier_max_ejection: float = 300.0
    """Upper bound of one ejection, in seconds. An endpoint that stayed in for this long
    after its last ejection starts again from the base time."""
    outlier_max_ejection_percent: int = 50
    """At most this share of a service's endpoints is ejected at once (at least one when
    there are two or more; never the last one), as Envoy's max_ejection_percent."""

    # --- UDP -----------------------------------------------------------------------------
    udp_session_timeout: float = 60.0
    """Seconds without a datagram either way after which a UDP client's session (and its
    endpoint affinity) ends."""
    udp_pending_limit: int = 64
    """Datagrams from a new client kept while its session socket opens; more are dropped."""
    udp_new_sessions: int = 1_000
    """UDP sessions per service not established yet: the client has not sent a datagram
    since its endpoint answered (a spoofed source never sees the answers). Beyond it, a new
    client takes the place of the new session idle longest, and so does a new client when
    the service is at ``max_connections``: a flood of spoofed sources churns through this
    many sessions (and socket descriptors) of its own and never displaces an established
    client, nor keeps a new one out."""
    udp_new_session_rate: float = 2_000.0
    """New UDP sessions opened per second per service (bursts of as many); a datagram from
    a new client beyond it is dropped at once and counted (reason ``rate``). Opening a
    session takes a socket and tens of microseconds; dropping a datagram takes one: a flood
    of spoofed sources is shed at the cost of a dictionary look-up per datagram, and the
    load balancer keeps up with its established clients."""
    udp_receive_buffer: int = 4 * 1024 * 1024
    """Bytes of a published UDP port's kernel receive buffer (``SO_RCVBUF``; as root beyond
    ``net.core.rmem_max``). A busy event loop (a garbage collection, a sweep, a burst of new
    sessions) leaves datagrams queued there; a full buffer drops every client's alike, so
    it holds a few thousand datagrams (tens of milliseconds of a flood) instead of the
    kernel's default of a few hundred."""
    udp_busy_backlog: int = 256 * 1024
    """Bytes queued on a published UDP port past which a datagram from a new client is
    dropped (counted as rejected, reason ``busy``) even within ``udp_new_session_rate``: the
    event loop is behind, and new sessions (a socket each) would keep it behind while the
    queue overflows and established clients' datagrams are lost with the flood's."""
    udp_new_session_timeout: float = 5.0
    """Seconds a UDP session that is not established lives without a datagram (an
    established one: ``udp_session_timeout``)."""

    # --- listeners -----------------------------------------------------------------------
    bind_retry_interval: float = 5.0
    """Seconds between attempts to bind a published port that could not be bound."""
    listen_backlog: int = 1024
    """Listen backlog of each published TCP port."""
    maglev_table_size: int = 65537
    """Entries of each Maglev lookup table (a prime, much larger than the endpoint count:
    M ≥ 100 × N keeps each endpoint's share within about 1 % and disruption near 1/N)."""

    # --- the kernel data plane ----------------------------------------------------------
    kernel_probe_interval: float = 2.0
    """Seconds between TCP connects to each endpoint of a kernel-mode service: the kernel
    sees no failed connect, so outlier detection (the ``outlier_*`` settings) is fed by
    these instead; an endpoint that refuses or does not answer within ``connect_timeout``
    ``outlier_consecutive_failures`` times in a row leaves new flows until its ejection
    ends. 0 turns probing off (health then comes from the endpoints' own checks only)."""
    kernel_probe_concurrency: int = 64
    """Probe connects in flight at once (a round over many endpoints takes longer rather
    than opening more sockets)."""

    def __post_init__(self) -> None:
        positive = ("connect_timeout", "idle_timeout", "drain_grace", "outlier_base_ejection",
                    "outlier_max_ejection", "udp_session_timeout", "bind_retry_interval",
                    "udp_new_session_timeout", "udp_new_session_rate")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"must be > 0, got {getattr(self, name)}", where=f"lb.{name}")
        counts = ("connect_retries", "max_connections", "write_high_water", "write_low_water",
                  "pending_limit", "outlier_consecutive_failures", "udp_pending_limit",
                  "listen_backlog", "max_per_prefix", "udp_new_sessions",
                  "udp_receive_buffer", "udp_busy_backlog")
        for name in counts:
            if getattr(self, name) < (0 if name == "connect_retries" else 1):
                raise ConfigError(f"must be a positive count, got {getattr(self, name)}",
                                  where=f"lb.{name}")
        if self.kernel_probe_interval < 0:
            raise ConfigError(f"must be >= 0, got {self.kernel_probe_interval}",
                              where="lb.kernel_probe_interval")
        if self.kernel_probe_concurrency < 1:
            raise ConfigError(f"must be a positive count, got {self.kernel_probe_concurrency}",
                              where="lb.kernel_probe_concurrency")
        if self.mode not in MODES:
            raise ConfigError(f"must be one of {', '.join(MODES)}, got {self.mode!r}",
                              where="lb.mode")
        if self.udp_receive_buffer > MAX_UDP_RECEIVE_BUFFER:
            raise ConfigError(f"must be at most {MAX_UDP_RECEIVE_BUFFER} bytes, got "
                              f"{self.udp_receive_buffer}", where="lb.udp_receive_buffer")
        if self.udp_busy_backlog >= self.udp_receive_buffer:
            raise ConfigError("must be less than udp_receive_buffer (the queue never "
                              "reaches a full buffer)", where="lb.udp_busy_backlog")
        if self.write_low_water > self.write_high_water:
            raise ConfigError("must not exceed write_high_water", where="lb.write_low_water")
        if not 0 <= self.outlier_max_ejection_percent <= 100:
            raise ConfigError("must be within 0..100", where="lb.outlier_max_ejection_percent")
        if self.outlier_max_ejection < self.outlier_base_ejection:
            raise ConfigError("must not be below outlier_base_ejection",
                              where="lb.outlier_max_ejection")
        if not 0 <= self.prefix_v4 <= 32:
            raise ConfigError(f"must be within 0..32, got {self.prefix_v4}", where="lb.prefix_v4")
        if not 0 <= self.prefix_v6 <= 128:
            raise ConfigError(f"must be within 0..128, got {self.prefix_v6}",
                              where="lb.prefix_v6")
        if not _is_prime(self.maglev_table_size):
            raise ConfigError(f"must be a prime, got {self.maglev_table_size} "
                              "(e.g. 65537, 16381, 4099, 1021)", where="lb.maglev_table_size")


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True
