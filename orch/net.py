"""Addresses and the well-known ports, shared by every role.

orch's ports follow Nomad's where there is one to follow (4646 HTTP, 4647 RPC, 4648
the agent's side) and memberlist's for gossip (7946).
"""

from __future__ import annotations

import ipaddress

from orch.errors import ConfigError

GOSSIP_PORT = 7946
"""Gossip, UDP and TCP on the same port (memberlist's default)."""
CONTROLLER_HTTP_PORT = 4646
"""The controller's HTTP API and web UI (Nomad's HTTP port)."""
CONTROLLER_RPC_PORT = 4647
"""The controller's gRPC API: orchctl and the agents' streams."""
AGENT_RPC_PORT = 4648
"""An agent's gRPC AgentService: logs, status, restarts, keyring."""
AGENT_METRICS_PORT = 9646
"""An agent's Prometheus ``/metrics``."""
CONTROLLER_METRICS_PORT = 9647
"""A controller's Prometheus ``/metrics``."""

Addr = tuple[str, int]


def parse_addr(text: str, *, default_port: int = GOSSIP_PORT, where: str = "address") -> Addr:
    """``host:port`` or ``host`` into a tuple; ConfigError naming ``where`` when wrong."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(default_port)
    try:
        p = int(port)
    except ValueError:
        raise ConfigError(f"port must be a number, got {port!r}", where=where) from None
    if not host or not 0 <= p < 65536:
        raise ConfigError(f"expected host:port, got {text!r}", where=where)
    return host, p


def host_of(address: str) -> str:
    """The host part of ``host:port`` (the whole text when it has no port)."""
    return address.rpartition(":")[0] or address


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is on the loopback interface only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
