"""The agent's configuration: one dataclass, filled from a TOML file and flags.

    # /etc/orch/agent.toml
    name = "agent-1"
    bind = "127.0.0.2:7946"
    join = ["127.0.0.3:7946"]
    [tags]
    rack = "r1"
    [gossip]              # any GossipConfig field
    probe_interval = 1.0
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from agent.gossip.config import GossipConfig
from agent.lb.config import LbConfig
from orch.errors import ConfigError
from orch.tls import TlsConfig

DEFAULT_PORT = 7946


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    name: str = field(default_factory=socket.gethostname)
    """This member's name in the cluster (unique); the host name by default."""
    bind: str = f"0.0.0.0:{DEFAULT_PORT}"
    """Gossip address (UDP and TCP on the same port)."""
    advertise: str = ""
    """Address other members use to reach us; the bind address unless it is 0.0.0.0."""
    join: list[str] = field(default_factory=list)
    """Seed members host:port; retried with backoff until one answers."""
    keys: list[str] = field(default_factory=list)
    """Gossip encryption keys (base64, 16/24/32 bytes); the first is primary. Empty: no
    encryption (only for trusted networks)."""
    tags: dict[str, str] = field(default_factory=dict)
    """Published in this member's node state (role, datacenter, labels...)."""
    data_dir: str = "/var/lib/orch"
    rpc_addr: str = "0.0.0.0:4648"
    """gRPC address of this agent's AgentService (logs, status, restarts)."""
    rpc_advertise: str = ""
    """Address the controller uses to reach it; the rpc_addr, or the gossip address's host."""
    metrics_addr: str = "127.0.0.1:9646"
    """Where /metrics is served (Prometheus); empty: not served."""
    lb_enabled: bool = True
    """Host the routing mesh: every published service's port, forwarded to its endpoints."""
    lb_bind: str = "0.0.0.0"
    """Address the published ports listen on."""
    lb: LbConfig = field(default_factory=LbConfig)
    """The load balancer's timeouts, limits and outlier detection (``[lb]``)."""
    controllers: list[str] = field(default_factory=list)
    """Controller RPC addresses; empty: found through gossip (members tagged role=controller)."""
    drivers: list[str] = field(default_factory=lambda: ["docker", "process"])
    """Task drivers to offer (a driver whose engine is down is not offered until it is up)."""
    datacenter: str = "dc1"
    region: str = "global"
    node_class: str = ""
    meta: dict[str, str] = field(default_factory=dict)
    """Operator labels, for constraints (${meta.rack})."""
    cpu_millicores: int = 0
    """CPU offered to tasks; 0: every core (1000 per core)."""
    memory_mb: int = 0
    """Memory offered to tasks; 0: what the kernel reports."""
    reserved_cpu_millicores: int = 0
    reserved_memory_mb: int = 256
    """Kept back for the system and the agent itself."""
    usage_interval: float = 10.0
    """Seconds between samples of each allocation's CPU and memory (reported to the
    controller for metrics and the autoscaler)."""
    allow_privileged: bool = False
    """Whether tasks may run privileged containers on this node (jobs asking for one are
    placed only on nodes that allow it)."""
    allow_host_network: bool = True
    """Whether containers may share the host's network (``network.mode: host``); false keeps
    every container in its own network namespace. (Jobs cannot bind-mount host paths.)"""
    process_limits: bool = True
    """Give every process task a cgroup (root; cgroup v1 or v2 with the cpu and memory
    controllers): its memory_mb as a hard limit, its cpu_millicores as a CPU weight.
    False, or a host where that is impossible: process tasks run without limits."""
    docker_network_mode: str = ""
    """"" (task containers get networks of their own, ports published on the host), or
    ``container:self`` for an agent that runs in a container itself: task containers join
    its network namespace (see RuntimeConfig.docker_network_mode)."""
    tls: TlsConfig = field(default_factory=TlsConfig)
    """mTLS for every gRPC connection (CA, this daemon's certificate and key); off when empty."""
    log_level: str = "info"
    log_format: str = "auto"
    """json, human, or auto (human on a terminal)."""
    gossip: GossipConfig = field(default_factory=GossipConfig)


def parse_addr(text: str, *, default_port: int = DEFAULT_PORT, where: str = "address") -> tuple[str, int]:
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
