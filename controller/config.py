"""The controller's configuration: one dataclass, filled from a TOML file and flags.

    # /etc/orch/controller.toml
    name = "controller-1"
    bind = "10.0.0.1:7946"          # gossip
    rpc_addr = "10.0.0.1:4647"      # gRPC: orchctl and the agents
    data_dir = "/var/lib/orch"
    [gossip]
    probe_interval = 1.0
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Literal

from orch.config import DaemonConfig
from orch.net import CONTROLLER_METRICS_PORT, CONTROLLER_RPC_PORT
from orch.tls import TlsConfig


@dataclass(frozen=True, kw_only=True)
class ControllerConfig(DaemonConfig):
    """The controller's settings: the shared ones (``DaemonConfig``) and its own below."""

    name: str = field(default_factory=lambda: f"controller-{socket.gethostname()}")
    """This controller's member name in the gossip cluster."""
    rpc_addr: str = f"0.0.0.0:{CONTROLLER_RPC_PORT}"
    """gRPC address for orchctl and the agents (port 0 picks a free one)."""
    metrics_addr: str = f"127.0.0.1:{CONTROLLER_METRICS_PORT}"
    """Where /metrics is served (Prometheus); empty: not served."""
    bootstrap: bool = False
    """Make the cluster's trust on the first start (a CA, this controller's certificate,
    the operator's, the first gossip key; at the first term the join tokens and the
    management token): the first controller of a new cluster. Later starts find it in
    ``data_dir/pki`` and need it no more."""
    store: Literal["sqlite", "etcd"] = "sqlite"
    """Where the state lives: sqlite (one controller, in data_dir) or etcd (several
    controllers electing a leader)."""
    etcd_endpoints: list[str] = field(default_factory=list)
    """etcd members host:port (store = etcd); every member needs --max-txn-ops=10000
    --max-request-bytes=10485760."""
    etcd_prefix: str = "/orch"
    """Key prefix of this cluster's state in etcd (one etcd can hold several clusters)."""
    leader_ttl: int = 5
    """Seconds the leader's etcd lease outlives its last keepalive: a crashed leader is
    replaced within about this plus a second."""
    follower_refresh: float = 1.0
    """Seconds between a follower's reads of the store's index (reads it serves lag the
    leader by up to this; longer when a reload takes long, ``controller.leadership``)."""
    store_sync: Literal["full", "normal"] = "full"
    """SQLite synchronous mode: full (an acknowledged write survives power loss) or normal
    (survives a crash of the process, not of the machine)."""
    node_grace: float = 10.0
    """Seconds an agent's stream may be gone before its node is marked down."""
    failover_grace: float = 15.0
    """Seconds the agents of nodes known from before this controller started have to connect
    again before their nodes are marked down (unless gossip says they are dead): an agent
    that lost its controller retries with a backoff of up to 10 s (as Nomad's
    failover_heartbeat_ttl); at least a second per 50 nodes (``controller.nodes``)."""
    max_down_fraction: float = 0.5
    """Never mark more than this share of the nodes down at once (likely a partition)."""
    autoscale_interval: float = 15.0
    """Seconds between autoscaler evaluations (groups with an enabled ``scaling`` block)."""
    autoscale_stabilization: float = 300.0
    """Seconds of recommendations a scale-down looks back over (it takes their maximum)."""
    reconcile_interval: float = 30.0
    """Seconds between full reconciliation sweeps over every job."""
    etcd_tls: TlsConfig = field(default_factory=TlsConfig)
    """mTLS towards etcd (store = etcd): the CA that signed the etcd members' certificates
    and this controller's client certificate and key (etcd started with
    ``--client-cert-auth``); off when empty. May name the same files as ``tls``."""
    acl: bool = False
    """Require an access token on the operator API without TLS too (``orchctl acl
    bootstrap`` makes the first). With TLS, tokens are always required."""
    rate_limit: float = 200.0
    """Operator API calls a second per client (token, else certificate or address), on
    average; 0: no limit."""
    rate_burst: float = 400.0
    """Calls a client may make at once before ``rate_limit`` applies."""
