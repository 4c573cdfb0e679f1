"""The agent, assembled: gossip, the task runtime, the stream to the controller, AgentService.

The controller sends the node's desired allocations; the runtime converges to
them and reports back. If the controller is lost, the agent keeps running what
it has and reconnects; if the agent restarts, the runtime adopts its tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Awaitable, Iterable
from pathlib import Path
from typing import Any

import aiodocker
import dns.resolver
import grpc
from prometheus_client.registry import Collector

from agent import fingerprint
from agent.agent_service import AgentService
from agent.cluster_pin import PinCollector, PinFile
from agent.config import AgentConfig
from agent.controller_link import ControllerLink, leader_elsewhere
from agent.desired import DesiredSet
from agent.dns.metrics import DnsCollector
from agent.dns.server import DnsServer
from agent.lb import discovery
from agent.lb.dataplane import DataPlane
from agent.lb.mesh import Mesh
from agent.lb.metrics import LbCollector
from agent.lb.table import EndpointTable
from agent.runtime import convert
from agent.runtime.config import HostVolume, RuntimeConfig
from agent.runtime.driver import TaskDriver
from agent.runtime.metrics import RuntimeCollector
from agent.runtime.runtime import Runtime, default_drivers
from agent.runtime.state import AllocSpec, AllocStatus, DriverStatus
from orch import daemon, join, keyring, pki, prometheus_sd
from orch.errors import ConfigError, ControllerRefusedError
from orch.gossip.crypto import Keyring
from orch.gossip.messages import Status
from orch.gossip.metrics import GossipCollector
from orch.gossip.transport import GossipNode
from orch.metrics import SD_PATH, MetricsServer, announce_metrics, registry_with
from orch.net import AGENT_METRICS_PORT, AGENT_RPC_PORT, parse_addr
from orch.templates import Endpoint as TemplateEndpoint
from orch.tls import TlsConfig, open_channel, server_credentials
from orch.v1 import controller_pb2, controller_pb2_grpc, job_pb2, node_pb2
from orch.vocab import host_volume_attributes

log = logging.getLogger("agent")
SNAPSHOT = "members.snapshot"
"""The gossip members this agent knew (in data_dir): a restart rejoins them without seeds."""
FILES_SETTLE = 0.1
"""Seconds a burst of changes to the service catalog settles before task templates render
again."""

VERIFY_TIMEOUT = 5.0
"""Seconds a controller named by gossip has to prove it is one (a TLS handshake)."""
RESERVED_STATE = frozenset({"role", "rpc", "node_id", "metrics"})
"""Node-state keys the agent sets itself; tags cannot change them at run time."""
DISCONNECT_CHECK = 0.2
"""Seconds between looks at how long no controller was heard (disconnect.stop_after)."""
REFUSAL_LOG_EVERY = 60.0
"""Seconds between log lines about one controller whose desired sets are refused."""


def check_host_volumes(volumes: Iterable[HostVolume]) -> None:
    """ConfigError naming the first ``[[host_volume]]`` whose folder does not exist."""
    for i, v in enumerate(volumes):
        if not Path(v.path).is_dir():
            raise ConfigError(f"host volume {v.name!r}: {v.path} is not a folder on this node "
                              "(create it, or remove the volume)", where=f"host_volume[{i}].path")


def node_resolvers(path: str) -> list[str]:
    """The nameservers of the node's resolver file (``host:53`` each; none when there is no
    such file or it names none), read by dnspython."""
    if not path:
        return []
    try:
        found = dns.resolver.Resolver(filename=path, configure=True).nameservers
    except (OSError, dns.resolver.NoResolverConfiguration):
        return []
    return [f"[{a}]:53" if ":" in str(a) else f"{a}:53" for a in found]


DOCKER_TIMEOUT = 5.0
"""Seconds Docker has to say where its bridge is."""


async def docker_bridge_gateway() -> str:
    """The gateway address of Docker's default bridge (where bridged containers reach
    the host); "" when Docker does not answer or has none."""
    try:
        async with aiodocker.Docker() as client:
            async with asyncio.timeout(DOCKER_TIMEOUT):
                net = await client.networks.get("bridge")
                info = await net.show()
    except Exception as e:  # Docker absent or down: no bridge to serve
        log.debug("no Docker bridge", extra={"error": str(e)})
        return ""
    return bridge_gateway(info)


def bridge_gateway(info: dict[str, Any]) -> str:
    """The gateway of a Docker network as ``docker network inspect`` shows it: the one its
    IPAM names, else the first address of its IPv4 subnet, which the bridge driver gives
    the bridge itself (the default bridge that a first start of dockerd creates names
    none); "" when neither is there."""
    configs = (info.get("IPAM") or {}).get("Config") or []
    for c in configs:
        if c.get("Gateway"):
            return str(c["Gateway"])
    for c in configs:
        with contextlib.suppress(ValueError, TypeError):
            net = ipaddress.ip_network(c.get("Subnet") or "", strict=False)
            if net.version == 4 and net.num_addresses > 2:
                return str(net.network_address + 1)
    return ""


class Agent:
    def __init__(self, cfg: AgentConfig, *, drivers: dict[str, TaskDriver] | None = None) -> None:
        self.cfg = cfg
        self.data_dir = Path(cfg.data_dir)
        self.node_id = fingerprint.node_id(self.data_dir)
        host = (parse_addr(cfg.advertise, where="advertise") if cfg.advertise
                else parse_addr(cfg.bind, where="bind"))[0]
        rcfg = RuntimeConfig.on_node(cfg, node_id=self.node_id, node_name=cfg.name,
                                     data_dir=self.data_dir,
                                     address="" if host in ("0.0.0.0", "::", "") else host)
        self.runtime = Runtime(rcfg, drivers if drivers is not None else {
            n: d for n, d in default_drivers(rcfg).items() if n in cfg.drivers})
        self.gossip: GossipNode | None = None
        self.rpc_address = ""
        self._server: grpc.aio.Server | None = None
        self.service: AgentService | None = None
        """Its AgentService (logs, status, restarts, commands), once started."""
        self._tasks: list[asyncio.Task[None]] = []
        self._specs: dict[str, AllocSpec] = {}
        self._refresh_pending = False
        self.metrics: MetricsServer | None = None
        self.mesh: Mesh | None = None
        self.dns: DnsServer | None = None
        """The DNS server, when ``dns.enabled``."""
        self.dataplane: DataPlane | None = None
        self.tls = cfg.tls
        """The TLS this agent uses (set at start: made by hand, or from a join)."""
        self.published_ports: frozenset[int] = frozenset()
        """The ports this node's load balancer publishes (reported as reserved)."""
        self.own_ports: frozenset[int] = frozenset()
        """The ports this agent's own servers listen on (gossip, RPC, metrics)."""
        self.endpoints = EndpointTable(cfg.name)
        """The one endpoint table the mesh, DNS and templates read (built once per change)."""
        self._files_generation = 0
        self.pins: PinFile | None = None
        """The cluster and store epoch whose desired sets this agent applies (set at start)."""
        self._refusals: dict[str, float] = {}

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self._abandon()  # nothing half-started is left behind (ports, tasks)
            raise

    async def _abandon(self) -> None:
        steps: list[Awaitable[object]] = []
        if self._server is not None:
            steps.append(self._server.stop(0))
        if self.gossip is not None:
            steps.append(self.gossip.stop())
        if self.metrics is not None:
            steps.append(self.metrics.stop())
        steps.append(self.endpoints.close())
        if self.mesh is not None:
            steps.append(self.mesh.close())
        if self.dns is not None:
            steps.append(self.dns.close())
        steps.append(self.runtime.close())
        for step in steps:
            with contextlib.suppress(Exception):
                await step

    async def _start(self) -> None:
        cfg = self.cfg
        host, port = parse_addr(cfg.rpc_addr, default_port=AGENT_RPC_PORT, where="rpc_addr")
        gbind = parse_addr(cfg.bind, where="bind")
        gadv = parse_addr(cfg.advertise, where="advertise") if cfg.advertise else None
        adv_host = (gadv or gbind)[0]
        self.tls = await self._trust(adv_host if host in ("0.0.0.0", "") else host)
        self.pins = PinFile(self.data_dir)
        daemon.refuse_plain_text("the agent's gRPC service", host, secured=self.tls.enabled,
                                 insecure=cfg.insecure, how="join the cluster (--join-token "
                                 "and --controller)")
        check_host_volumes(cfg.host_volume)
        keys = keyring.initial_keys(cfg.data_dir, cfg.keys)
        daemon.refuse_plain_text("gossip", gbind[0], secured=bool(keys), insecure=cfg.insecure,
                                 how="join the cluster (its gossip key comes with the "
                                 "certificate), or give it a key")
        await self.runtime.start()

        server = self._server = grpc.aio.server()
        self.service = AgentService(
            self.runtime, self.status, tls_on=self.tls.enabled,
            keyring=lambda req: keyring.apply(self.gossip, req, cfg.data_dir, cfg.name),
            exec_max_sessions=cfg.exec_max_sessions, exec_idle_timeout=cfg.exec_idle_timeout)
        controller_pb2_grpc.add_AgentServiceServicer_to_server(self.service, server)
        bound = server.add_secure_port(f"{host}:{port}", server_credentials(self.tls)) \
            if self.tls.enabled else server.add_insecure_port(f"{host}:{port}")
        await server.start()
        self.own_ports = frozenset({bound})

        self.rpc_address = cfg.rpc_advertise or (
            f"{adv_host if host in ('0.0.0.0', '') else host}:{bound}")
        self.gossip = GossipNode(
            cfg.gossip, name=cfg.name, bind=gbind, advertise=gadv,
            keyring=Keyring(keys) if keys else None, rng=random.Random(),
            state={"role": "agent", "rpc": self.rpc_address, "node_id": self.node_id,
                   **cfg.tags}, snapshot=self.data_dir / SNAPSHOT)
        await self.gossip.start()
        if cfg.join:
            self.gossip.join([parse_addr(s, where="join") for s in cfg.join])
        self.runtime.catalog = self._catalog
        self.runtime.node_info = self._node_info
        self.endpoints.listeners.append(self._table_built)
        self.endpoints.start(self.gossip)

        if cfg.lb_enabled:
            self.dataplane = DataPlane(cfg.lb, bind_host=cfg.lb_bind)
            self.mesh = Mesh(self.dataplane, self.gossip, self.endpoints)
            self.mesh.start()
        if cfg.dns.enabled:
            await self._start_dns(adv_host)

        if cfg.metrics_addr:
            mhost, mport = parse_addr(cfg.metrics_addr, default_port=AGENT_METRICS_PORT,
                                      where="metrics_addr")
            collectors: list[Collector] = [GossipCollector(self.gossip),
                                           RuntimeCollector(self.runtime),
                                           PinCollector(self.pins)]
            if self.mesh is not None:
                collectors.append(LbCollector(self.mesh))
            if self.dns is not None:
                collectors.append(DnsCollector(self.dns))
            self.metrics = MetricsServer(registry_with(*collectors), mhost, mport, json_routes={
                SD_PATH: lambda: prometheus_sd.targets(
                    self.gossip.members() if self.gossip is not None else ()).groups})
            await self.metrics.start()
            announce_metrics(self.gossip, mhost, self.metrics.port)
        self.link = ControllerLink(self.registration, self.controller_addresses,
                                   self._apply, self._full_report,
                                   connect=self._controller_channel,
                                   moved=self._leader_elsewhere, verify=self._is_controller,
                                   on_endpoints=self._expected_endpoints)
        self.link.start()
        self._tasks.append(asyncio.create_task(self._forward_updates(), name="runtime-updates"))
        self._tasks.append(asyncio.create_task(self._report_usage(), name="usage-reports"))
        self._tasks.append(asyncio.create_task(self._cut_off(), name="disconnect"))
        if self._bundle.complete() and not cfg.tls.enabled:
            self._tasks.append(asyncio.create_task(self._renew(), name="renew-certificate"))
        log.info("agent running", extra={"node": cfg.name, "node_id": self.node_id,
                                         "rpc": self.rpc_address,
                                         "drivers": ",".join(sorted(self.runtime.drivers))})

    async def stop(self, *, leave: bool = True, stop_tasks: bool = False) -> None:
        """Stop serving and talking; the tasks keep running (the next agent adopts them),
        unless ``stop_tasks``."""
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.link.stop()
        if self.metrics is not None:
            await self.metrics.stop()
        if self._server is not None:
            await self._server.stop(2.0)
        if self.gossip is not None:
            await (self.gossip.leave() if leave else self.gossip.stop())
        await self.endpoints.close()
        if self.mesh is not None:
            await self.mesh.close()
        if self.dns is not None:
            await self.dns.close()
        await self.runtime.close(stop_tasks=stop_tasks, grace=10.0)

    def describe(self) -> str:
        """One line for the service manager's status."""
        gossip = f"{self.gossip.addr[0]}:{self.gossip.addr[1]}" if self.gossip is not None else "-"
        return f"agent {self.cfg.name}: gossip {gossip}, rpc {self.rpc_address}"

    def reload(self, cfg: AgentConfig) -> daemon.Reload:
        """SIGHUP: apply the gossip keys and tags of a freshly read configuration; name the
        settings that wait for a restart."""
        out = daemon.Reload(needs_restart=daemon.changed_settings(self.cfg, cfg, live=("tags",)))
        keys = cfg.keys if daemon.reload_keys(self.gossip, self.cfg.keys, cfg.keys, out) \
            else self.cfg.keys
        old = {k: v for k, v in self.cfg.tags.items() if k not in RESERVED_STATE}
        new = {k: v for k, v in cfg.tags.items() if k not in RESERVED_STATE}
        for k in cfg.tags.keys() - new.keys():
            out.needs_restart.append(f"tags.{k} (reserved: set by the agent itself)")
        changes: dict[str, str | None] = {k: None for k in old if k not in new}
        changes.update({k: v for k, v in new.items() if old.get(k) != v})
        if changes and self.gossip is not None:
            self.gossip.set_state(changes)
            out.applied.append("tags " + ", ".join(
                f"{k}={v}" if v is not None else f"{k} removed" for k, v in changes.items()))
        self.cfg = dataclasses.replace(self.cfg, keys=keys, tags=new, log_level=cfg.log_level,
                                       log_format=cfg.log_format)
        return out

    # --- DNS -----------------------------------------------------------------------------------

    async def _start_dns(self, adv_host: str) -> None:
        """Serve DNS at ``dns.addr`` (and ``dns.task_addr``), and tell the runtime where tasks
        find it. A port taken by another program is logged and counted, as a published
        port the load balancer cannot bind: the agent runs on without that listener."""
        dcfg = self.cfg.dns
        assert self.gossip is not None
        self.dns = DnsServer(dcfg, self.cfg.name,
                             mesh_host=adv_host if self.cfg.lb_enabled else "")
        self.dns.start(self.endpoints)
        bound: tuple[str, int] | None = None
        try:
            bound = await self.dns.listen(dcfg.addr)
        except OSError as e:
            log.error("the DNS server cannot listen (another program has the port? set "
                      "dns.addr, or dns.enabled = false)", extra={"addr": dcfg.addr,
                                                                 "error": str(e)})
        servers: list[str] = []
        task_addr = dcfg.task_addr
        if task_addr == "bridge":
            gateway = await docker_bridge_gateway()
            task_addr = f"{gateway}:53" if gateway else ""
            if not gateway:
                log.warning("dns.task_addr = bridge, but Docker's bridge network has no "
                            "gateway address here: bridged tasks keep Docker's resolver")
        if task_addr:
            try:
                host, port = await self.dns.listen(task_addr, upstreams=dcfg.upstreams or [
                    a for a in node_resolvers(dcfg.node_resolvers)
                    if a not in (task_addr, dcfg.addr)])  # never itself: no loop
                if port == 53:
                    servers.append(host)
            except OSError as e:
                log.error("the DNS server cannot listen for tasks", extra={
                    "addr": task_addr, "error": str(e)})
        self.runtime.config = dataclasses.replace(
            self.runtime.config, dns_addr=f"{bound[0]}:{bound[1]}" if bound else "",
            dns_servers=tuple(servers), dns_search=(dcfg.origin.to_text(),))

    # --- trust -----------------------------------------------------------------------------------

    async def _trust(self, host: str) -> TlsConfig:
        """The TLS this agent uses: certificates made by hand (``tls``), else those a join left
        in ``data_dir/pki`` (joining first when it has a join token and none yet), else none."""
        cfg = self.cfg
        if cfg.tls.enabled:
            return cfg.tls
        text = "" if self._bundle.complete() else await daemon.read_join_token(cfg)
        if text:
            token = pki.JoinToken.parse(text)
            if token.role != "agent":
                raise ConfigError("this is a controller's join token: an agent joins with "
                                  "`orchctl cluster join-token agent`'s", where="join_token")
            await join.join(token, cfg.controllers, self._bundle, data_dir=cfg.data_dir,
                            name=cfg.name, node_id=self.node_id,
                            ips=[ip for ip in (host,) if ip not in ("", "0.0.0.0")])
        return TlsConfig.of_bundle(self._bundle) if self._bundle.complete() else TlsConfig()

    @property
    def _bundle(self) -> pki.Bundle:
        return pki.Bundle.of(self.cfg.data_dir)

    def _controller_channel(self, addr: str, options: list[tuple[str, Any]]) -> grpc.aio.Channel:
        """A channel to a controller: TLS refuses a server whose certificate is not a
        controller's."""
        return open_channel(addr, self.tls, options, server=pki.role_dns("controller"))

    async def _is_controller(self, addr: str) -> bool:
        """Whether ``addr`` proves it is a controller (a TLS handshake against its role name)
        before a gossip hint moves the stream there; without TLS nothing can be proven."""
        if not self.tls.enabled:
            return True
        channel = self._controller_channel(addr, [])
        try:
            await asyncio.wait_for(channel.channel_ready(), VERIFY_TIMEOUT)
            return True
        except (TimeoutError, grpc.aio.AioRpcError):
            return False
        finally:
            await channel.close()

    async def _renew(self) -> None:
        """Renew this agent's certificate when a third of its life is left, with no restart:
        connections made from then on use the new one, the stream goes on."""
        every = max(1.0, min(3600.0, self.cfg.cert_days * 86400 / 50))
        while True:
            await asyncio.sleep(every)
            try:
                if join.due(self._bundle):
                    addrs = [a for a in [self.link.controller, *self.controller_addresses()] if a]
                    await join.renew(self._bundle, list(dict.fromkeys(addrs)), name=self.cfg.name)
                    log.info("renewed this agent's certificate")
            except Exception as e:
                log.warning("renewing this agent's certificate failed; will try again",
                            extra={"error": str(e)})

    # --- the controller ------------------------------------------------------------------------

    def registration(self) -> node_pb2.Node:
        cfg = self.cfg
        healthy = [d.name for d in self.runtime.driver_statuses() if d.healthy]
        attrs = fingerprint.attributes()
        attrs.update({f"driver.{d}": "1" for d in healthy})
        for name in healthy:
            attrs.update(self.runtime.drivers[name].attributes())
        attrs["orch.privileged"] = "true" if cfg.allow_privileged else "false"
        attrs["orch.host_network"] = "true" if cfg.allow_host_network else "false"
        attrs.update(host_volume_attributes((v.name, v.read_only) for v in cfg.host_volume))
        if self.dataplane is not None:
            attrs.update(self.dataplane.attributes())
        cores = int(attrs.get("cpu.numcores", "1"))
        gossip = f"{self.gossip.addr[0]}:{self.gossip.addr[1]}" if self.gossip is not None else ""
        own = set(self.own_ports)
        if self.gossip is not None:
            own.add(self.gossip.bind[1])
        if self.metrics is not None and self.metrics.port:
            own.add(self.metrics.port)
        return node_pb2.Node(
            id=self.node_id, name=cfg.name or socket.gethostname(), address=self.rpc_address,
            gossip_address=gossip,
            datacenter=cfg.datacenter, region=cfg.region, node_class=cfg.node_class,
            attributes=attrs, meta=dict(cfg.meta), drivers=healthy,
            capacity=job_pb2.Resources(
                cpu_millicores=cfg.cpu_millicores or cores * 1000,
                memory_mb=cfg.memory_mb or fingerprint.memory_mb()),
            reserved=job_pb2.Resources(cpu_millicores=cfg.reserved_cpu_millicores,
                                       memory_mb=cfg.reserved_memory_mb),
            host_volumes=[node_pb2.HostVolume(name=v.name, path=v.path, read_only=v.read_only)
                          for v in cfg.host_volume],
            # nothing may be placed on the ports this agent listens on itself, nor on those
            # its load balancer publishes for the cluster's services
            reserved_ports=sorted(own | self.published_ports))

    def _leader_elsewhere(self, current: str) -> str | None:
        """Where the stream to ``current`` should move (see ``controller_link.leader_elsewhere``)."""
        return leader_elsewhere(self.gossip.members(), current) if self.gossip is not None else None

    def controller_addresses(self) -> list[str]:
        """Configured controllers first, then those gossip knows (alive, role=controller),
        the one tagged leader first."""
        found = list(self.cfg.controllers)
        if self.gossip is not None:
            known = [m for m in self.gossip.members() if m.state.get("role") == "controller"
                     and m.status is Status.ALIVE and isinstance(m.state.get("rpc"), str)]
            known.sort(key=lambda m: m.state.get("leader") != "true")
            found += [str(m.state["rpc"]) for m in known if m.state["rpc"] not in found]
        return found

    def _expected_endpoints(self, placed: discovery.Expected) -> None:
        """The controller's expected endpoints: what the load balancer may route to and
        templates may read; the published ports are reported as reserved when they
        changed."""
        self.endpoints.set_expected(placed)
        if self.mesh is not None:
            ports = frozenset(s.published_port for s in placed.services.values()
                              if s.published_port)
            if ports != self.published_ports:
                self.published_ports = ports
                self.link.reregister()

    async def _apply(self, desired: DesiredSet) -> None:
        assert self.pins is not None
        verdict = self.pins.judge(desired.cluster_id, desired.epoch)
        if not verdict.apply:
            where = self.link.controller or "the controller"
            now = time.monotonic()
            if now - self._refusals.get(where, -REFUSAL_LOG_EVERY) >= REFUSAL_LOG_EVERY:
                self._refusals[where] = now
                while len(self._refusals) > 64:
                    self._refusals.pop(next(iter(self._refusals)))
                log.error("refused a desired set: %s; nothing started or stopped", verdict.detail,
                          extra={"controller": where, "reason": verdict.reason,
                                 "cluster_id": desired.cluster_id, "epoch": desired.epoch})
            raise ControllerRefusedError(verdict.detail)
        specs = [convert.alloc_spec_from_proto(a) for a in desired.allocations]
        if (desired.epoch, desired.version) >= (self.runtime.epoch, self.runtime.version):
            self.runtime.set_secrets({(s.namespace, s.name): s.value for s in desired.secrets})
        if await self.runtime.apply(desired.version, specs, epoch=desired.epoch,
                                    remove_strays=verdict.remove_strays):
            self._specs = {s.id: s for s in specs}
            self._publish_endpoints()

    def _publish_endpoints(self) -> None:
        """Announce in gossip the service endpoints of the healthy allocations, and withdraw
        the others (see agent.lb.discovery)."""
        if self.gossip is None or self.gossip.core is None:
            return
        host = self.gossip.addr[0]
        want: dict[str, object] = {}
        for st in self.runtime.statuses():
            spec = self._specs.get(st.alloc_id)
            if spec is not None and spec.desired == "run" and st.client_status == "running" \
                    and st.healthy:
                ports = st.ports or spec.ports
                want.update(discovery.entries(spec.id, spec.group, ports, host,
                                              namespace=spec.namespace, job=spec.job))
                if ports.get("metrics"):  # for Prometheus's discovery (orch.prometheus_sd)
                    want.update(prometheus_sd.entry(
                        spec.id, host, ports["metrics"], namespace=spec.namespace,
                        job=spec.job, group=spec.group.name))
        have = {k: v for k, v in self.gossip.core.me.state.items()
                if k.startswith((discovery.PREFIX, prometheus_sd.PREFIX))}
        changes: dict[str, object] = {k: None for k in have if k not in want}
        changes.update({k: v for k, v in want.items() if have.get(k) != v})
        if changes:
            self.gossip.set_state(changes)
            self.endpoints.changed()  # our own state changes raise no membership event

    # --- what task templates read -------------------------------------------------------------

    def _catalog(self, namespace: str, service: str) -> list[TemplateEndpoint]:
        """The healthy endpoints of a service of ``namespace`` in the endpoint table (the
        load balancer's and DNS's: as the controller placed them)."""
        return [TemplateEndpoint(address=f"{e.host}:{e.port}", host=e.host, port=e.port,
                                  node=e.node, alloc_id=e.alloc_id)
                for e in self.endpoints.endpoints(namespace, service)]

    def _node_info(self) -> dict[str, Any]:
        n = self.registration()
        return {"id": n.id, "name": n.name, "datacenter": n.datacenter, "region": n.region,
                "class": n.node_class, "attr": dict(n.attributes), "meta": dict(n.meta)}

    def _table_built(self, endpoints: EndpointTable) -> None:
        """A new endpoint table: templates render again when its endpoints changed."""
        if endpoints.generation != self._files_generation:
            self._files_generation = endpoints.generation
            self._files_inputs_changed()

    def _files_inputs_changed(self) -> None:
        """The service catalog changed (endpoints come and go): templates render again,
        once per burst."""
        if self._refresh_pending:
            return
        self._refresh_pending = True

        async def later() -> None:
            await asyncio.sleep(FILES_SETTLE)
            self._refresh_pending = False
            await self.runtime.refresh_files()
        task = asyncio.get_running_loop().create_task(later(), name="refresh task files")
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    def _full_report(self) -> list[node_pb2.Allocation]:
        return [convert.alloc_status_to_proto(s) for s in self.runtime.statuses()]

    async def _forward_updates(self) -> None:
        while True:
            batch = await self.runtime.next_updates()
            statuses = [u for u in batch if isinstance(u, AllocStatus)]
            allocs = [convert.alloc_status_to_proto(u) for u in statuses]
            if allocs:  # (running waits for healthy when that is due within the link's hold)
                self.link.report(allocs, {u.alloc_id: u.health_next_in for u in statuses
                                          if u.health_next_in is not None})
                self._publish_endpoints()
            drivers = [u for u in batch if isinstance(u, DriverStatus)]
            for d in drivers:
                log.info("driver status", extra={"driver": d.name, "healthy": d.healthy,
                                                 "detail": d.detail})
            if drivers:
                self.link.reregister()

    async def _cut_off(self) -> None:
        """Stop what the disconnect block says to stop while no controller is heard."""
        while True:
            await asyncio.sleep(DISCONNECT_CHECK)
            offline = self.link.offline_for()
            if offline > 0:
                self.runtime.stop_disconnected(offline)

    async def _report_usage(self) -> None:
        """What the allocations use, for the controller's autoscaler, every sample: of the
        allocations whose group has an enabled scaling policy (the controller keeps no
        other), and what this node's load balancer sends to endpoints; nothing when there
        is neither (thousands of agents would otherwise report every allocation they run)."""
        while True:
            await asyncio.sleep(self.runtime.config.usage_interval)
            report = controller_pb2.UsageReport(time_ns=time.time_ns())
            for alloc_id, u in self.runtime.usage().items():
                spec = self._specs.get(alloc_id)
                if spec is None or spec.group.scaling is None or not spec.group.scaling.enabled:
                    continue
                report.allocations.add(alloc_id=alloc_id, cpu_seconds=u.cpu_seconds,
                                       memory_bytes=u.memory_bytes)
            for endpoint in self.endpoint_loads():
                report.endpoints.append(endpoint)
            if report.allocations or report.endpoints:
                self.link.usage(report)

    def endpoint_loads(self) -> list[controller_pb2.EndpointLoad]:
        """What this node's load balancer sends to each endpoint."""
        return self.mesh.endpoint_loads() if self.mesh is not None else []

    def status(self) -> controller_pb2.AgentStatus:
        return controller_pb2.AgentStatus(
            node=self.registration(), allocations=self._full_report(),
            applied_version=max(self.runtime.version, 0), controller=self.link.controller,
            connected=self.link.connected)

