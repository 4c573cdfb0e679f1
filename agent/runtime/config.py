"""The runtime's settings: one frozen dataclass, every default written once.

``TaskSettings`` are the ones an operator sets in ``agent.toml`` (the agent's
configuration extends it); ``RuntimeConfig`` adds what the agent itself decides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path

_VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")


@dataclass(frozen=True, kw_only=True)
class HostVolume:
    """A folder of this node that jobs may mount by name (``[[host_volume]]`` in agent.toml,
    as Nomad's ``host_volume`` blocks): groups that ask for it are placed only on nodes that
    declare it."""

    name: str
    """What jobs call it (``volumes: {data: {type: host, source: <name>}}``)."""
    path: str
    """The folder on this node (absolute; it must exist when the agent starts)."""
    read_only: bool = False
    """Every mount of it is read-only, whatever a job asks; a group that writes to it is not
    placed here."""

    def __post_init__(self) -> None:
        if not _VOLUME_NAME.match(self.name):
            raise ValueError(f"host_volume name {self.name!r}: use 1 to 63 letters, digits, "
                             "'.', '-' and '_', starting with a letter or digit")
        if not self.path.startswith("/") or ".." in self.path.split("/") or self.path == "/":
            raise ValueError(f"host_volume {self.name!r}: path must be an absolute folder "
                             f"other than / and without '..', got {self.path!r}")


@dataclass(frozen=True, kw_only=True)
class TaskSettings:
    """What this node allows its tasks, and how often it samples them."""

    usage_interval: float = 10.0
    """Seconds between samples of each allocation's CPU and memory (reported to the
    controller for metrics and the autoscaler)."""
    allow_privileged: bool = False
    """Whether tasks may run privileged containers on this node (jobs asking for one are
    placed only on nodes that allow it)."""
    allow_host_network: bool = False
    """Whether containers may share the host's network (``network.mode: host``); false keeps
    every container in its own network namespace. (Jobs bind-mount no host path but the
    host volumes the node declares, `host_volume`.)"""
    process_limits: bool = True
    """Give every process task a cgroup (root; cgroup v1 or v2 with the cpu and memory
    controllers): its memory_mb as a hard limit, its cpu_millicores as a CPU weight.
    False, or a host where that is impossible: process tasks run without limits, as
    Nomad's raw_exec."""
    task_user: str = ""
    """The user a process task runs as when its job names none: "" is ``orch-task`` when
    this node has that user (the installer makes it), else ``nobody``."""
    allow_root_tasks: bool = False
    """Whether a process task may run as root (uid 0), when its job asks for it. Off, such a
    task fails to start, saying so."""
    docker_network_mode: str = ""
    """Where task containers' networks live. "": each container its own (bridge, ports
    published on the host), or the host's when the task asks for host networking.
    ``container:<name or id>``: every task container joins that container's network
    namespace, and ``container:self`` this agent's own container's (an agent that itself
    runs in a container, as in the Compose harness: the agent's container is the node).
    Joined containers publish nothing: as in host mode, tasks listen on their host ports
    (``${ORCH_PORT_<label>}``, a port's ``to`` does not apply) on that namespace's
    addresses, where the agent's checks and load balancer find them."""
    host_volume: list[HostVolume] = field(default_factory=list)
    """Folders of this node that jobs may mount by name (``[[host_volume]]`` tables:
    name, path, read_only). Docker tasks get them as bind mounts; process tasks as a bind
    into their folder (the agent as root) and their path in ``ORCH_VOLUME_<name>``."""

    def __post_init__(self) -> None:
        names = [v.name for v in self.host_volume]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"host_volume {', '.join(twice)} is declared more than once")


@dataclass(frozen=True, kw_only=True)
class RuntimeConfig(TaskSettings):
    node_id: str
    """This node's stable id: written into every container's ``orch.node`` label."""
    data_dir: Path
    """The agent's data dir; process tasks live in ``data_dir/alloc/<alloc>/<task>``."""
    node_name: str = ""
    """For messages; defaults to node_id."""
    check_address: str = "127.0.0.1"
    """Where tcp and http checks connect to a task's host port."""
    dynamic_ports: tuple[int, int] = (20000, 32000)
    """Host ports the agent may pick for dynamic ports the scheduler left unset."""
    log_max_bytes: int = 10 << 20
    """A task's log file (or Docker json-file) is rotated at this size."""
    log_max_files: int = 3
    """Rotated log files kept per stream."""
    gc_interval: float = 60.0
    """Seconds between sweeps for orch-labelled containers no allocation owns."""
    gc_kill_timeout: float = 5.0
    """Grace given to a stray container between SIGTERM and SIGKILL."""
    docker_url: str | None = None
    """The Docker engine's address; None: DOCKER_HOST, else /var/run/docker.sock."""
    docker_bind_address: str = ""
    """Host address task ports are published on ("" = every address); the agent sets its own
    address (where the routing mesh and the checks reach tasks)."""
    pids_limit: int = 4096
    """Most processes one container may run (a fork bomb stops there)."""
    image_pull_timeout: float = 300.0
    """Seconds a missing image may take to pull before the task fails."""
    dns_addr: str = ""
    """The agent's DNS server (``host:port``), for tasks as ``ORCH_DNS``; "" none."""
    dns_servers: tuple[str, ...] = ()
    """Addresses where the agent's DNS answers on port 53: bridged Docker tasks' resolvers,
    and the ``nameserver`` of process tasks' ``local/resolv.conf``."""
    dns_search: tuple[str, ...] = ()
    """Search domains for tasks (``service.<namespace>.<domain>``...)."""

    @classmethod
    def on_node(cls, settings: TaskSettings, *, node_id: str, data_dir: Path,
                node_name: str = "", address: str = "") -> RuntimeConfig:
        """The runtime's configuration on a node whose operator chose ``settings`` (the
        agent's configuration, which extends them); ``address`` is the node's own (task
        ports are published there only, and checks reach them there), "" for every address."""
        chosen = {f.name: getattr(settings, f.name) for f in fields(TaskSettings)}
        return cls(node_id=node_id, data_dir=data_dir, node_name=node_name, **chosen,
                   docker_bind_address=address, check_address=address or "127.0.0.1")

    @property
    def name(self) -> str:
        return self.node_name or self.node_id
