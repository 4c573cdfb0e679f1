"""The controller, assembled: it builds the parts, starts them, and stops them.

The store and the state it loads; the single write path (``Cluster``), the scheduling
loop (``Evaluator``), jobs, nodes and the autoscaler; the gRPC server with one endpoint
per noun (``controller.api``); gossip and what the controller does with its events;
metrics. On SQLite the one controller always leads. On etcd several run and elect a
leader (``controller.leadership``): every one serves reads, only the leader writes,
schedules and holds the agents' streams, and the others answer writes with where the
leader is. ``lead`` and ``step_down`` start and stop the leader's parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from controller import trust
from controller.acl import Acl
from controller.api.acl import AclEndpoint
from controller.api.allocations import AllocationsEndpoint
from controller.api.authz import Authorizer, RateLimiter
from controller.api.events import EventsEndpoint
from controller.api.exec import ExecEndpoint
from controller.api.jobs import JobsEndpoint
from controller.api.leader import LeaderEndpoint
from controller.api.members import MembersEndpoint
from controller.api.namespaces import NamespacesEndpoint
from controller.api.node import NodeEndpoint
from controller.api.nodes import NodesEndpoint
from controller.api.operator import OperatorEndpoint
from controller.api.rpc import controller_service, node_service
from controller.api.secrets import SecretsEndpoint
from controller.api.services import ServicesEndpoint
from controller.api.volumes import VolumesEndpoint
from controller.autoscaler import AutoscalerConfig
from controller.channels import MAX_AGENT_MESSAGE, Channels
from controller.cluster import Cluster
from controller.config import ControllerConfig
from controller.evaluator import Evaluator
from controller.gc import GarbageCollector, GcPolicy
from controller.gossip_events import GossipEvents
from controller.http.api import HttpApi
from controller.http.server import HttpServer
from controller.http.ui import WebUi
from controller.jobs import Jobs
from controller.leadership import Leadership, LeaderStatus
from controller.metrics import ControllerCollector
from controller.nodes import NodeAdmin, NodeMonitor
from controller.periodic import Launcher
from controller.scaling import Autoscaler
from controller.secrets import Secrets
from controller.snapshot import Snapshots, restore_at_start
from controller.state import ClusterState
from controller.store.base import EPOCH, Changes, Store
from controller.usage import UsageTable
from orch import daemon, join, keyring, pki
from orch.errors import ConfigError
from orch.gossip.crypto import Keyring
from orch.gossip.metrics import GossipCollector
from orch.gossip.transport import GossipNode
from orch.metrics import MetricsServer, announce_metrics, registry_with
from orch.net import (
    CONTROLLER_HTTP_PORT,
    CONTROLLER_METRICS_PORT,
    CONTROLLER_RPC_PORT,
    host_of,
    parse_addr,
)
from orch.v1 import controller_pb2, controller_pb2_grpc, node_pb2

log = logging.getLogger("controller")

MAX_REQUEST = 16 * 1024 * 1024
"""Largest message the controller accepts (gRPC answers RESOURCE_EXHAUSTED past it): a job
with many groups."""
MAX_RESPONSE = MAX_AGENT_MESSAGE
"""Largest message the controller sends (a big desired set, a page of logs it relays)."""
AGENT_PING_MIN_MS = 5_000
"""The shortest interval between an agent's keepalive pings the controller accepts (ms): a
stream the controller sends nothing on for a while is pinged every 10 s by its agent
(``agent.controller_link``), and gRPC's default (5 minutes) answered the third ping with
GOAWAY (too_many_pings), dropping every idle agent's stream about every 30 s."""


CONNECTION_IDLE_MS = 120_000
"""A client connection that carries no call for this long is closed (GOAWAY; the client
opens a new one when it needs it): connections left open by clients that went away (a
cancelled stream's channel, a crashed orchctl) do not pile up for as long as the
controller runs. An agent's stream is a call: it is never idle."""


def server_options(ping_min_ms: int = AGENT_PING_MIN_MS,
                   idle_ms: int = CONNECTION_IDLE_MS) -> list[tuple[str, int]]:
    """The gRPC server's options: message limits, the agents' keepalive pings accepted
    every ``ping_min_ms`` (gRPC's name for that is ``grpc.http2.min_ping_interval_without_
    data_ms``; an unknown name is silently ignored, so a test holds a stream with it), and
    connections without a call closed after ``idle_ms``."""
    return [("grpc.max_receive_message_length", MAX_REQUEST),
            ("grpc.max_send_message_length", MAX_RESPONSE),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", ping_min_ms),
            ("grpc.http2.max_ping_strikes", 0),  # only members (mTLS) reach it
            ("grpc.max_connection_idle_ms", idle_ms)]



SERVICES = ("ControllerService", "NodeService")
"""The gRPC services of the controller (besides health and reflection)."""


def open_store(cfg: ControllerConfig) -> Store:
    Path(cfg.data_dir).mkdir(parents=True, exist_ok=True)
    if cfg.store == "etcd":
        from controller.store.etcd import EtcdStore

        if not cfg.etcd_endpoints:
            raise ConfigError("store = etcd needs etcd_endpoints (host:port, repeatable)",
                              where="etcd_endpoints")
        return EtcdStore(cfg.etcd_endpoints, prefix=cfg.etcd_prefix, tls=cfg.etcd_tls)
    from controller.store.sqlite import SQLiteStore

    return SQLiteStore(os.path.join(cfg.data_dir, "controller.db"), synchronous=cfg.store_sync)


class Controller:
    def __init__(self, cfg: ControllerConfig, store: Store | None = None) -> None:
        self.cfg = cfg
        self.store = store or open_store(cfg)
        self.leader = LeaderStatus(cfg.name)
        self.gossip: GossipNode | None = None
        self.metrics: MetricsServer | None = None
        self.http: HttpServer | None = None
        self.http_advertise = ""
        self._server: grpc.aio.Server | None = None
        self._health: health.HealthServicer | None = None
        self._leader_tasks: list[asyncio.Task[None]] = []
        self._loads = 0
        """State loads started (a follower's, a new leader's): the newest one wins."""
        self._tasks: list[asyncio.Task[None]] = []
        self.trust: trust.Trust | None = None

    @property
    def rpc_address(self) -> str:
        """The gRPC address this controller gives others ("" until it listens)."""
        return self.leader.address

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self._abandon()  # nothing half-started is left behind (ports, the store lock)
            raise

    async def _abandon(self) -> None:
        steps: list[Awaitable[object]] = []
        if self._server is not None:
            steps.append(self._server.stop(0))
        if self.http is not None:
            steps.append(self.http.stop())
        if self.gossip is not None:
            steps.append(self.gossip.stop())
        if self.metrics is not None:
            steps.append(self.metrics.stop())
        steps.append(self.store.close())
        for step in steps:
            with contextlib.suppress(Exception):
                await step

    async def _start(self) -> None:
        cfg = self.cfg
        host, port = parse_addr(cfg.rpc_addr, default_port=CONTROLLER_RPC_PORT, where="rpc_addr")
        await self._trust_files(host)
        await self.store.open()
        if cfg.restore_snapshot:
            bundle = pki.Bundle.of(cfg.data_dir)
            ca = pki.load_cert(bundle.ca.read_bytes()) if bundle.ca.exists() else None
            await restore_at_start(self.store, Path(cfg.restore_snapshot),
                                   Path(cfg.data_dir) / "snapshots",
                                   ca_digest=pki.digest(ca) if ca is not None else "")
        state = ClusterState.from_store(await self.store.load())
        log.info("state loaded", extra={"index": state.index, "jobs": len(state.jobs),
                                        "allocations": len(state.allocs), "nodes": len(state.nodes)})
        self._build(state, address=cfg.rpc_advertise or f"{host}:{port}")
        daemon.refuse_plain_text("the controller's gRPC API", host, secured=self.trust is not None,
                                 insecure=cfg.insecure, how="bootstrap the cluster (--bootstrap) "
                                 "or join one (--join-token)")

        server = self._server = grpc.aio.server(options=server_options())
        bound = server.add_secure_port(f"{host}:{port}", self.trust.server_credentials()) \
            if self.trust is not None else server.add_insecure_port(f"{host}:{port}")
        if not bound:
            raise OSError(f"cannot listen on {host}:{port}")
        adv = cfg.rpc_advertise or f"{host}:{bound}"
        if adv.startswith("0.0.0.0:"):
            raise ValueError("rpc_addr 0.0.0.0 needs rpc_advertise (the address agents use)")
        self.leader.address = adv

        gbind = parse_addr(cfg.bind, where="bind")
        keys = keyring.initial_keys(cfg.data_dir, cfg.keys)
        daemon.refuse_plain_text("gossip", gbind[0], secured=bool(keys), insecure=cfg.insecure,
                                 how="give it a key (keys, or the cluster's from a bootstrap "
                                 "or a join)")
        gossip = self.gossip = GossipNode(
            cfg.gossip, name=cfg.name, bind=gbind,
            advertise=parse_addr(cfg.advertise, where="advertise") if cfg.advertise else None,
            keyring=Keyring(keys) if keys else None,
            state={"role": "controller", "rpc": adv}, rng=random.Random(),
            snapshot=Path(cfg.data_dir) / "members.snapshot")
        self._serve(server, gossip)
        await server.start()
        for name in ["", *self._service_names(), "orch.store"]:  # orch.store: NOT_SERVING
            self.store_health(True, name)                        # while etcd is away

        await self._serve_http()
        self.gossip_events.listen(gossip)
        await gossip.start()
        if self.http is not None:  # where followers send HTTP clients' writes
            gossip.set_state({"http": self.http_advertise})
        # the configured seeds, or else the agents this controller knew before it restarted
        seeds = list(cfg.join) or sorted(
            n.gossip_address for n in state.nodes.values()
            if n.gossip_address and n.status == node_pb2.NODE_STATUS_READY)
        if seeds:
            gossip.join([parse_addr(s, where="join") for s in seeds])

        if cfg.metrics_addr:
            mhost, mport = parse_addr(cfg.metrics_addr, default_port=CONTROLLER_METRICS_PORT,
                                      where="metrics_addr")
            self.metrics = MetricsServer(registry_with(
                ControllerCollector(self.leader, self.evaluator, self.authz,
                                    self.gossip_events, self.gc, self.nodes_monitor, self.usage),
                GossipCollector(gossip)), mhost, mport)
            await self.metrics.start()
            announce_metrics(gossip, mhost, self.metrics.port)
        if self.trust is not None:
            self._tasks.append(asyncio.create_task(self._renew(), name="renew-certificate"))
        if cfg.store == "etcd":
            from controller.store.etcd import EtcdStore

            assert isinstance(self.store, EtcdStore)
            self.leader.election = Leadership(self, self.store, name=cfg.name, address=adv,
                                              ttl=cfg.leader_ttl,
                                              follower_refresh=cfg.follower_refresh)
            await self.leader.election.start()
        else:
            await self.lead()
        log.info("controller serving", extra={"rpc": adv, "node": cfg.name})

    async def _trust_files(self, host: str) -> None:
        """Join a cluster (a join token and no certificate yet) or bootstrap one (the first
        start with ``bootstrap``), leaving what they make in ``data_dir/pki``."""
        cfg = self.cfg
        bundle = pki.Bundle.of(cfg.data_dir)
        if cfg.tls.enabled or bundle.complete():
            return
        ips = trust.server_ips(cfg.rpc_advertise or f"{host}:0")
        text = await daemon.read_join_token(cfg)
        if text:
            token = pki.JoinToken.parse(text)
            if token.role != "controller":
                raise ConfigError("this is an agent's join token: a controller joins with "
                                  "`orchctl cluster join-token controller`'s", where="join_token")
            await join.join(token, cfg.controllers, bundle, data_dir=cfg.data_dir,
                            name=cfg.name, ips=ips, address=cfg.rpc_advertise)
        elif cfg.bootstrap:
            port = parse_addr(cfg.rpc_addr, default_port=CONTROLLER_RPC_PORT, where="rpc_addr")[1]
            trust.bootstrap(bundle, cfg.data_dir, name=cfg.name, ips=ips,
                            address=cfg.rpc_advertise or f"{host}:{port or CONTROLLER_RPC_PORT}")

    def _build(self, state: ClusterState, address: str) -> None:
        """The parts that hold and change the state."""
        cfg = self.cfg
        self.trust = trust.Trust.of(cfg.data_dir, cfg.tls, state, name=cfg.name,
                                    address=address, cert_days=cfg.cert_days)
        self.cluster = Cluster(self.store, state, may_write=self.leader.may_write)
        self.evaluator = Evaluator(self.cluster, reconcile_interval=cfg.reconcile_interval)
        self.secrets = Secrets(state, pki.Bundle.of(cfg.data_dir).secrets_key)
        self.cluster.secrets_of = self.secrets.for_allocations
        self.jobs = Jobs(self.cluster, self.evaluator, secrets=self.secrets)
        self.launcher = Launcher(self.cluster, self.evaluator)
        self.nodes_monitor = NodeMonitor(self.cluster, self.evaluator, node_grace=cfg.node_grace,
                                         failover_grace=cfg.failover_grace,
                                         max_down_fraction=cfg.max_down_fraction,
                                         brake_window=cfg.brake_window)
        self.nodes = NodeAdmin(self.cluster, self.evaluator,
                               on_forgotten=self.nodes_monitor.forget)
        self.usage = UsageTable()
        self.gc = GarbageCollector(self.cluster, self.usage, GcPolicy(
            job_threshold=cfg.job_gc_threshold, eval_threshold=cfg.eval_gc_threshold,
            deployment_threshold=cfg.deployment_gc_threshold,
            node_threshold=cfg.node_gc_threshold, max_versions=cfg.job_max_versions,
            batch=cfg.gc_batch, defrag_interval=cfg.store_defrag_interval),
            interval=cfg.gc_interval,
            on_node_forgotten=self.nodes_monitor.forget, after=lambda: self.channels.prune())
        self.autoscaler = Autoscaler(state, self.jobs, self.usage, AutoscalerConfig(
            interval=cfg.autoscale_interval, stabilization=cfg.autoscale_stabilization))
        self.acl = Acl(state)
        self.authz = Authorizer(
            identify=self.trust.identify if self.trust is not None else None,
            acl_on=cfg.acl or self.trust is not None, acl=self.acl, state=state,
            limiter=RateLimiter(cfg.rate_limit, cfg.rate_burst))
        self.channels = Channels(self.trust.tls if self.trust is not None else cfg.tls, state)
        self.gossip_events = GossipEvents(self.leader, self.nodes_monitor, self.cluster)
        self.snapshots = Snapshots(self.cluster, Path(cfg.data_dir) / "snapshots",
                                   ca_digest=self.trust.authority.digest if self.trust else "",
                                   name=cfg.name, on_restored=self._restored)

    def _serve(self, server: grpc.aio.Server, gossip: GossipNode) -> None:
        """The operator API (one endpoint per noun), the agents' streams, health, reflection."""
        cfg, authz, leader = self.cfg, self.authz, self.leader
        node = NodeEndpoint(authz, leader=leader, monitor=self.nodes_monitor, cluster=self.cluster,
                            usage=self.usage, trust=self.trust, gossip=gossip)
        self.servicer = controller_service([
            JobsEndpoint(authz, leader, self.jobs, self.autoscaler, self.launcher),
            AllocationsEndpoint(authz, leader, self.cluster, self.evaluator, self.nodes,
                                self.channels, self.usage),
            NodesEndpoint(authz, leader, self.nodes, gossip, node.end),
            MembersEndpoint(authz, gossip, name=cfg.name, data_dir=cfg.data_dir,
                            state=self.cluster.state, channels=self.channels),
            AclEndpoint(authz, leader, self.acl, self.cluster, self.trust,
                        rotated=self._write_join_tokens),
            EventsEndpoint(authz, self.cluster),
            ServicesEndpoint(authz, self.cluster.state, self.usage, self.cluster.index),
            LeaderEndpoint(authz, leader, gossip),
            NamespacesEndpoint(authz, leader, self.cluster, self.evaluator.namespaces),
            SecretsEndpoint(authz, leader, self.cluster, self.secrets, self.evaluator.namespaces),
            VolumesEndpoint(authz, self.nodes),
            ExecEndpoint(authz, leader, self.cluster, self.channels),
            OperatorEndpoint(authz, leader, self.gc, self.snapshots, self.acl, cfg.name),
        ])
        controller_pb2_grpc.add_ControllerServiceServicer_to_server(self.servicer, server)
        controller_pb2_grpc.add_NodeServiceServicer_to_server(node_service([node]), server)
        self._health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection([*self._service_names(), reflection.SERVICE_NAME,
                                             health.SERVICE_NAME], server)

    async def _serve_http(self) -> None:
        """The HTTP API and the web UI (``controller.http``): the same servicer, gate and
        TLS as gRPC."""
        cfg = self.cfg
        if not cfg.http_addr:
            return
        host, port = parse_addr(cfg.http_addr, default_port=CONTROLLER_HTTP_PORT,
                                where="http_addr")
        daemon.refuse_plain_text("the controller's HTTP API and web UI", host,
                                 secured=self.trust is not None, insecure=cfg.insecure,
                                 how="bootstrap the cluster (--bootstrap) or join one "
                                 "(--join-token)")
        api = HttpApi(self.servicer, self.cluster, self.leader, tls=self.trust is not None,
                      http_of=self._http_of)
        ui = WebUi(api, self.cluster, self.acl, self.authz, secure=self.trust is not None)
        self.http = HttpServer(api, host, port, tls=self.trust.tls if self.trust else None,
                               verify_client=cfg.http_verify_client, ui=ui.routes)
        await self.http.start()
        self.http_advertise = cfg.http_advertise or f"{host}:{self.http.port}"
        if self.http_advertise.startswith("0.0.0.0:"):
            self.http_advertise = f"{host_of(self.leader.address)}:{self.http.port}"

    def _http_of(self, rpc_address: str) -> str:
        """The HTTP address of the controller serving gRPC at ``rpc_address``, as gossip
        says ("" when no alive controller says so)."""
        if rpc_address == self.leader.address:
            return self.http_advertise
        if self.gossip is None:
            return ""
        for m in self.gossip.members():
            http = m.state.get("http")
            if m.state.get("role") == "controller" and m.state.get("rpc") == rpc_address \
                    and isinstance(http, str) and str(m.status) == "alive":
                return http
        return ""

    @staticmethod
    def _service_names() -> list[str]:
        return [controller_pb2.DESCRIPTOR.services_by_name[s].full_name for s in SERVICES]

    # --- leading and following ------------------------------------------------------------------

    async def lead(self) -> None:
        """Start leading: the state afresh from the (fenced) store, the loops, every job
        evaluated again (reconciliation and deployments resume where the store says)."""
        state = self.cluster.state
        if self.leader.election is not None:
            self._loads += 1  # a follower's load still under way is dropped
            # What this controller holds is whole as of its index (a follower's loads replace
            # it at once); once elected nobody else commits (fencing), so when the store is
            # still at that index there is nothing to read again: a new leader of a large
            # state serves writes in a second rather than after reading it all.
            if not state.index or await self.store.index() != state.index:  # type: ignore[attr-defined]
                await state.reload(await self.store.load())
            self.nodes_monitor.reset()
            self.cluster.reset_endpoints()
        await self._lineage()
        if self.trust is not None:
            await self._first_term_trust()
        self.leader.term_over = asyncio.Event()
        self.leader.leading = True
        self.evaluator.start()
        self._leader_tasks = [asyncio.create_task(self._liveness(), name="liveness"),
                              asyncio.create_task(self.autoscaler.run(), name="autoscaler"),
                              asyncio.create_task(self.launcher.run(), name="periodic"),
                              asyncio.create_task(self.gc.run(), name="garbage-collector")]
        self.evaluator.enqueue_all("leader-elected" if self.leader.election else "startup")
        if self.gossip is not None:
            self.gossip.set_state({"leader": "true"})
        log.info("leading", extra={"index": state.index, "jobs": len(state.jobs),
                                   "nodes": len(state.nodes)})

    async def _lineage(self) -> None:
        """The cluster id and the store's epoch, on a store that has none yet: the id this
        controller's cluster has (written beside its certificates at bootstrap or join), else
        a new one; the epoch, now (a fresh store is a newer lineage than any before it)."""
        meta = self.cluster.state.meta
        bundle = pki.Bundle.of(self.cfg.data_dir)
        changes = Changes()
        if "cluster_id" not in meta:
            changes.meta["cluster_id"] = bundle.cluster_id() or str(uuid.uuid4())
        if EPOCH not in meta:
            changes.meta[EPOCH] = str(time.time_ns())
        if changes:
            await self.cluster.write(changes)
        cluster_id = meta["cluster_id"]
        if bundle.dir.is_dir() and not bundle.cluster_id():
            pki.write_file(bundle.cluster_file, cluster_id.encode() + b"\n", secret=False)

    def _restored(self) -> None:
        """A snapshot was restored: the nodes get their graces anew, every job is evaluated."""
        self.nodes_monitor.reset()
        self.evaluator.enqueue_all("snapshot-restore")

    async def _first_term_trust(self) -> None:
        """As leader: join secrets when there are none, this controller among those the
        keyring reaches, and (once, on a cluster bootstrapped here) the management token,
        written for the operator beside their certificate."""
        state = self.cluster.state
        operator = pki.Bundle.of(self.cfg.data_dir).dir / trust.OPERATOR_DIR
        async with self.cluster.lock:
            changes = trust.Trust.new_secrets(state.meta)
            mine = trust.META_CONTROLLER + self.cfg.name
            if state.meta.get(mine) != self.leader.address:
                changes.meta[mine] = self.leader.address
            secret = ""
            if not self.acl.bootstrapped and operator.is_dir():
                _, secret, made = self.acl.bootstrap()
                changes.meta.update(made.meta)
            await self.cluster.commit(changes)
        if secret:
            pki.write_file(operator / "management.token", secret.encode() + b"\n", secret=True)
            log.warning("made the management token", extra={
                "file": str(operator / "management.token")})
        self._write_join_tokens()

    def _write_join_tokens(self) -> None:
        """On the controller that bootstrapped the cluster, the current join tokens beside the
        operator's credentials (the installer and the Compose harness join with them)."""
        operator = pki.Bundle.of(self.cfg.data_dir).dir / trust.OPERATOR_DIR
        if operator.is_dir() and self.trust is not None:
            for role in pki.JOIN_ROLES:
                pki.write_file(operator / f"join-{role}.token",
                               str(self.trust.token(role)).encode() + b"\n", secret=True)

    async def _renew(self) -> None:
        """Renew this controller's own certificate before it ends (it holds the CA)."""
        assert self.trust is not None
        every = max(1.0, min(3600.0, self.cfg.cert_days * 86400 / 50))
        while True:
            await asyncio.sleep(every)
            try:
                await asyncio.to_thread(self.trust.renew_own)
            except Exception:
                log.exception("renewing this controller's certificate failed")

    async def step_down(self, reason: str) -> None:
        """Stop leading: no more writes or scheduling; agents are sent to the next leader."""
        if not self.leader.leading:
            return
        self.leader.leading = False
        self.leader.term_over.set()
        await self.evaluator.stop()
        for t in self._leader_tasks:
            t.cancel()
        await asyncio.gather(*self._leader_tasks, return_exceptions=True)
        self._leader_tasks = []
        if self.gossip is not None:
            self.gossip.set_state({"leader": None})
        log.warning("stepped down", extra={"reason": reason})

    async def catch_up(self) -> None:
        """A follower: reload the state when the leader has written since (and publish the
        new events to this controller's watchers)."""
        state = self.cluster.state
        index = await self.store.index()  # type: ignore[attr-defined]
        if index == state.index:
            return
        before = state.index
        self._loads += 1
        mine = self._loads
        snap = await self.store.load()
        events = await self.store.events_since(before) if before else []
        fresh = await ClusterState.load(snap)
        if mine != self._loads or self.leader.leading:
            return  # a newer load (a term that started meanwhile) has the last word
        state.become(fresh)
        if events:
            self.cluster.events.publish(events)
        self.cluster.index.moved()

    def store_health(self, ok: bool, service: str = "orch.store") -> None:
        """Report whether the store answers (gRPC health ``orch.store``; metrics read the
        election's ``store_available``)."""
        if self._health is not None:
            self._health.set(service, health_pb2.HealthCheckResponse.SERVING if ok
                             else health_pb2.HealthCheckResponse.NOT_SERVING)

    async def _liveness(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.cfg.node_grace / 4))
            try:
                await self.nodes_monitor.check()
                await self.nodes.drain_pass()
            except Exception:
                log.exception("node liveness check failed")

    # --- the daemon -----------------------------------------------------------------------------

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, finish what is in flight (up to ``grace``), hand the leadership
        over, leave the cluster."""
        if self.leader.election is not None:  # hand over first: agents move to the next leader
            await self.leader.election.stop()
        if self.http is not None:
            await self.http.stop()
        if self._server is not None:
            await self._server.stop(grace)
        await self.step_down("shutting down")
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.gossip_events.close()
        if self.gossip is not None:
            await self.gossip.leave()
        if self.metrics is not None:
            await self.metrics.stop()
        await self.channels.close()
        await self.store.close()

    def describe(self) -> str:
        """One line for the service manager's status."""
        gossip = f"{self.gossip.addr[0]}:{self.gossip.addr[1]}" if self.gossip is not None else "-"
        http = f", http {self.http.url}" if self.http is not None else ""
        return f"controller {self.cfg.name}: rpc {self.rpc_address}{http}, gossip {gossip}"

    def reload(self, cfg: ControllerConfig) -> daemon.Reload:
        """SIGHUP: apply the gossip keys of a freshly read configuration; name the settings
        that wait for a restart."""
        out = daemon.Reload(needs_restart=daemon.changed_settings(self.cfg, cfg))
        keys = cfg.keys if daemon.reload_keys(self.gossip, self.cfg.keys, cfg.keys, out) \
            else self.cfg.keys
        self.cfg = dataclasses.replace(self.cfg, keys=keys, log_level=cfg.log_level,
                                       log_format=cfg.log_format)
        return out
