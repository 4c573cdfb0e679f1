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

from dataclasses import dataclass, field

from agent.dns.config import DnsConfig
from agent.lb.config import LbConfig
from agent.runtime.config import TaskSettings
from orch.config import DaemonConfig
from orch.net import AGENT_METRICS_PORT, AGENT_RPC_PORT


@dataclass(frozen=True, kw_only=True)
class AgentConfig(DaemonConfig, TaskSettings):
    """The agent's settings: the shared ones (``DaemonConfig``), what it allows its tasks
    (``TaskSettings``), and its own below."""

    rpc_addr: str = f"0.0.0.0:{AGENT_RPC_PORT}"
    """gRPC address of this agent's AgentService (logs, status, restarts)."""
    metrics_addr: str = f"127.0.0.1:{AGENT_METRICS_PORT}"
    """Where /metrics is served (Prometheus); empty: not served."""
    tags: dict[str, str] = field(default_factory=dict)
    """Published in this member's node state (role, datacenter, labels...)."""
    lb_enabled: bool = True
    """Host the routing mesh: every published service's port, forwarded to its endpoints."""
    lb_bind: str = "0.0.0.0"
    """Address the published ports listen on."""
    lb: LbConfig = field(default_factory=LbConfig)
    """The load balancer's timeouts, limits and outlier detection (``[lb]``)."""
    dns: DnsConfig = field(default_factory=DnsConfig)
    """The agent's DNS server: service, node and allocation names (``[dns]``)."""
    drivers: list[str] = field(default_factory=lambda: ["docker"])
    """Task drivers to offer (a driver whose engine is down is not offered until it is up).
    The process driver runs tasks on the host itself, as Nomad's raw_exec: off unless
    listed here (``drivers = ["docker", "process"]``)."""
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
    exec_max_sessions: int = 16
    """Commands people may run in this node's tasks at once (``orchctl alloc exec``); more
    are refused (RESOURCE_EXHAUSTED) until one ends."""
    exec_idle_timeout: float = 1800.0
    """Seconds a command may go without input or output before it is killed (a forgotten
    shell does not hold a session for ever)."""

    def __post_init__(self) -> None:
        TaskSettings.__post_init__(self)
        if self.exec_max_sessions < 1:
            raise ValueError(f"exec_max_sessions must be >= 1, got {self.exec_max_sessions}")
        if self.exec_idle_timeout <= 0:
            raise ValueError(f"exec_idle_timeout must be > 0, got {self.exec_idle_timeout:g}")
