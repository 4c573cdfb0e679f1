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
from orch.net import CONTROLLER_HTTP_PORT, CONTROLLER_METRICS_PORT, CONTROLLER_RPC_PORT
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
    http_addr: str = f"127.0.0.1:{CONTROLLER_HTTP_PORT}"
    """Where the HTTP API (``/v1``) and the web UI (``/ui``) are served (port 0 picks a
    free one; empty: not served). HTTPS with the cluster's trust; plain HTTP on loopback
    only."""
    http_advertise: str = ""
    """The HTTP address other controllers send clients to (a follower's redirect of a
    write); by default http_addr, unless it is 0.0.0.0."""
    http_verify_client: bool = False
    """Require a client certificate from the cluster CA on HTTPS too, as gRPC does (a
    browser then needs the operator's certificate). Off: a request without one is
    admitted on its access token alone."""
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
    brake_window: float = 600.0
    """Seconds a node marked down still counts for ``max_down_fraction`` (with the nodes
    ready now, and those marked down while the current wave of unreachable nodes lasts):
    a node gone for longer no longer brakes the next failure."""
    gc_interval: float = 300.0
    """Seconds between garbage collections on the leader (Nomad's 5 minutes)."""
    job_gc_threshold: float = 4 * 3600.0
    """Seconds a dead job (stopped, or a batch job whose work is over) with nothing running
    is kept, with what it owns, after its last change (Nomad's 4 h)."""
    eval_gc_threshold: float = 3600.0
    """Seconds evaluations, and allocations that stopped for good, are kept (Nomad's 1 h)."""
    deployment_gc_threshold: float = 3600.0
    """Seconds a deployment that ended is kept (Nomad's 1 h); a job's latest stays."""
    node_gc_threshold: float = 24 * 3600.0
    """Seconds a node that is down is kept before it is forgotten (Nomad's 24 h); a removed
    node's id stays refused for ever."""
    job_max_versions: int = 6
    """Versions of each job kept (Nomad's job_tracked_versions), besides the stable one a
    revert goes back to."""
    store_defrag_interval: float = 24 * 3600.0
    """Seconds between rewrites of the SQLite store in order (``VACUUM``, after a garbage
    collection; commits wait while it runs: 0.3 s for a 70 MB store); 0 never. Months of
    churn scatter its pages and slow its commits. etcd's operators defragment its members."""
    gc_batch: int = 500
    """Records one garbage-collection commit deletes at most (the commit lock is held for
    one such commit, so scheduling goes on between them)."""
    autoscale_interval: float = 15.0
    """Seconds between autoscaler evaluations (groups with an enabled ``scaling`` block)."""
    autoscale_stabilization: float = 300.0
    """Seconds of recommendations a scale-down looks back over (it takes their maximum)."""
    reconcile_interval: float = 30.0
    """Seconds between full reconciliation sweeps over every job."""
    restore_snapshot: str = ""
    """A snapshot file (``orchctl operator snapshot save``) restored into the store at start,
    before the controller serves anyone: how a lost store comes back without its agents
    following an empty one meanwhile. Every start with it set restores again: unset it
    afterwards."""
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
