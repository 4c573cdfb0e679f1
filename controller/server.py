"""The controller, assembled: store, state, scheduling loop, node liveness, gRPC, gossip.

On SQLite the one controller always leads. On etcd several run; they elect a leader
(``controller.leadership``): every one serves reads, only the leader writes,
schedules and holds the agents' streams, and the others answer writes with where the
leader is.
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
from collections.abc import Awaitable, Coroutine
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from controller.acl import Acl
from controller.api.authz import Authorizer, RateLimiter
from controller.api.controller_endpoint import ControllerEndpoint
from controller.api.node_endpoint import NodeEndpoint
from controller.autoscaler import AutoscalerConfig
from controller.cluster import Cluster
from controller.config import ControllerConfig
from controller.evaluator import Evaluator
from controller.jobs import Jobs
from controller.leadership import Leadership
from controller.metrics import ControllerCollector
from controller.nodes import NodeAdmin, NodeMonitor
from controller.planner import event
from controller.scaling import Autoscaler
from controller.state import RUN, RUNNING, ClusterState
from controller.store.base import Changes, Store
from controller.usage import UsageTable
from orch import daemon, keyring
from orch.errors import ConfigError, NotFoundError, NotLeaderError, StoreError
from orch.gossip.coalesce import Batched, Coalescer, Delivered, UserEventBatcher
from orch.gossip.core import EventKind, MemberEvent
from orch.gossip.crypto import Keyring, parse_key
from orch.gossip.messages import UserEvent
from orch.gossip.metrics import GossipCollector
from orch.gossip.transport import GossipNode
from orch.metrics import MetricsServer, registry_with
from orch.net import CONTROLLER_METRICS_PORT, CONTROLLER_RPC_PORT, host_of, parse_addr
from orch.tls import open_channel, server_credentials
from orch.v1 import controller_pb2, controller_pb2_grpc, node_pb2

log = logging.getLogger("controller")

MAX_MESSAGE = 64 * 1024 * 1024
"""Largest message the controller sends, or reads from an agent it calls (logs, status)."""
MAX_REQUEST = 16 * 1024 * 1024
"""Largest message the controller accepts (gRPC answers RESOURCE_EXHAUSTED past it)."""
"""Largest gRPC message accepted (a job with many groups, a big desired set)."""


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
        self.rpc_address = ""
        self.gossip: GossipNode | None = None
        self._member_events: Batched[MemberEvent, Delivered] | None = None
        self._user_events: Batched[UserEvent, UserEvent] | None = None
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.metrics: MetricsServer | None = None
        self._background: set[asyncio.Future[object]] = set()
        self.leadership: Leadership | None = None
        """The election, on etcd; None: this controller alone always leads."""
        self._leading = False
        self._leader_tasks: list[asyncio.Task[None]] = []
        self.term_over = asyncio.Event()
        """Set when this controller stops leading (agents' streams then end)."""
        self._health: health.HealthServicer | None = None

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
        if self.gossip is not None:
            steps.append(self.gossip.stop())
        if self.metrics is not None:
            steps.append(self.metrics.stop())
        steps.append(self.store.close())
        for step in steps:
            with contextlib.suppress(Exception):
                await step

    async def _start(self) -> None:
        await self.store.open()
        state = ClusterState.from_store(await self.store.load())
        self.cluster = Cluster(self.store, state, may_write=self._may_write)
        self.evaluator = Evaluator(self.cluster, reconcile_interval=self.cfg.reconcile_interval)
        self.jobs = Jobs(self.cluster, self.evaluator)
        self.nodes_monitor = self._node_monitor()
        self.nodes = NodeAdmin(self.cluster, self.evaluator)
        self.usage = UsageTable()
        self.autoscaler = Autoscaler(state, self.jobs, self.usage,
                                     AutoscalerConfig(
                                         interval=self.cfg.autoscale_interval,
                                         stabilization=self.cfg.autoscale_stabilization))
        self.acl = Acl(state)
        self.authz = Authorizer(tls_on=self.cfg.tls.enabled, acl_on=self.cfg.acl, acl=self.acl,
                                state=state, limiter=RateLimiter(self.cfg.rate_limit,
                                                                 self.cfg.rate_burst))
        log.info("state loaded", extra={"index": state.index, "jobs": len(state.jobs),
                                        "allocations": len(state.allocs), "nodes": len(state.nodes)})

        server = self._server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", MAX_REQUEST),
            ("grpc.max_send_message_length", MAX_MESSAGE)])
        controller_pb2_grpc.add_ControllerServiceServicer_to_server(ControllerEndpoint(self), server)
        controller_pb2_grpc.add_NodeServiceServicer_to_server(NodeEndpoint(self), server)
        health_servicer = self._health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        names = [controller_pb2.DESCRIPTOR.services_by_name[s].full_name
                 for s in ("ControllerService", "NodeService")]
        reflection.enable_server_reflection([*names, reflection.SERVICE_NAME,
                                             health.SERVICE_NAME], server)
        host, port = parse_addr(self.cfg.rpc_addr, default_port=CONTROLLER_RPC_PORT,
                                where="rpc_addr")
        bound = server.add_secure_port(f"{host}:{port}", server_credentials(self.cfg.tls)) \
            if self.cfg.tls.enabled else server.add_insecure_port(f"{host}:{port}")
        if not bound:
            raise OSError(f"cannot listen on {host}:{port}")
        adv = self.cfg.rpc_advertise or f"{host}:{bound}"
        if adv.startswith("0.0.0.0:"):
            raise ValueError("rpc_addr 0.0.0.0 needs rpc_advertise (the address agents use)")
        self.rpc_address = adv
        await server.start()
        for name in ["", *names, "orch.store"]:  # orch.store: NOT_SERVING while etcd is away
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

        gbind = parse_addr(self.cfg.bind, where="bind")
        gadv = parse_addr(self.cfg.advertise, where="advertise") if self.cfg.advertise else None
        self.gossip = GossipNode(
            self.cfg.gossip, name=self.cfg.name, bind=gbind, advertise=gadv,
            keyring=Keyring(keys) if (keys := keyring.initial_keys(self.cfg.data_dir,
                                                                     self.cfg.keys)) else None,
            state={"role": "controller", "rpc": self.rpc_address}, rng=random.Random(),
            snapshot=Path(self.cfg.data_dir) / "members.snapshot")
        self.gossip.on_event(self._on_member)
        self._member_events = Batched(Coalescer(), self._record_members)
        self.gossip.on_event(self._member_events.push)
        self._user_events = Batched(UserEventBatcher(), self._record_user_events)
        self.gossip.on_user_event(self._user_events.push)
        await self.gossip.start()
        # the configured seeds, or else the agents this controller knew before it restarted
        seeds = list(self.cfg.join) or sorted(
            n.gossip_address for n in state.nodes.values()
            if n.gossip_address and n.status == node_pb2.NODE_STATUS_READY)
        if seeds:
            self.gossip.join([parse_addr(s, where="join") for s in seeds])

        if self.cfg.metrics_addr:
            mhost, mport = parse_addr(self.cfg.metrics_addr, default_port=CONTROLLER_METRICS_PORT,
                                      where="metrics_addr")
            self.metrics = MetricsServer(registry_with(ControllerCollector(self),
                                                       GossipCollector(self.gossip)), mhost, mport)
            await self.metrics.start()
        if self.cfg.store == "etcd":
            from controller.store.etcd import EtcdStore

            assert isinstance(self.store, EtcdStore)
            self.leadership = Leadership(self, self.store, ttl=self.cfg.leader_ttl,
                                         follower_refresh=self.cfg.follower_refresh)
            await self.leadership.start()
        else:
            await self.lead()
        log.info("controller serving", extra={"rpc": self.rpc_address, "node": self.cfg.name})

    # --- leading and following ------------------------------------------------------------------

    def _node_monitor(self) -> NodeMonitor:
        return NodeMonitor(self.cluster, self.evaluator, node_grace=self.cfg.node_grace,
                           failover_grace=self.cfg.failover_grace,
                           max_down_fraction=self.cfg.max_down_fraction)

    async def lead(self) -> None:
        """Start leading: the state afresh from the (fenced) store, the loops, every job
        evaluated again (reconciliation and deployments resume where the store says)."""
        state = self.cluster.state
        if self.leadership is not None:
            state.reset(await self.store.load())
            self.nodes_monitor = self._node_monitor()
        if "cluster_id" not in state.meta:
            await self.cluster.write(Changes(meta={"cluster_id": str(uuid.uuid4())}))
        self.term_over = asyncio.Event()
        self._leading = True
        self.evaluator.start()
        self._leader_tasks = [asyncio.create_task(self._liveness(), name="liveness"),
                              asyncio.create_task(self.autoscaler.run(), name="autoscaler")]
        self.evaluator.enqueue_all("leader-elected" if self.leadership else "startup")
        if self.gossip is not None:
            self.gossip.set_state({"leader": "true"})
        log.info("leading", extra={"index": state.index, "jobs": len(state.jobs),
                                   "nodes": len(state.nodes)})

    async def step_down(self, reason: str) -> None:
        """Stop leading: no more writes or scheduling; agents are sent to the next leader."""
        if not self._leading:
            return
        self._leading = False
        self.term_over.set()
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
        snap = await self.store.load()
        events = await self.store.events_since(before) if before else []
        state.reset(snap)
        if events:
            self.cluster.events.publish(events)

    def store_health(self, ok: bool) -> None:
        """Report whether the store answers (gRPC health ``orch.store``, metrics)."""
        if self._health is not None:
            self._health.set("orch.store", health_pb2.HealthCheckResponse.SERVING if ok
                             else health_pb2.HealthCheckResponse.NOT_SERVING)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, finish what is in flight (up to ``grace``), hand the leadership
        over, leave the cluster."""
        if self.leadership is not None:  # hand over first: agents move to the next leader
            await self.leadership.stop()
        if self._server is not None:
            await self._server.stop(grace)
        await self.step_down("shutting down")
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for batched in (self._member_events, self._user_events):
            if batched is not None:
                batched.close(deliver=False)
        if self.gossip is not None:
            await self.gossip.leave()
        if self.metrics is not None:
            await self.metrics.stop()
        for ch in self._channels.values():
            await ch.close()
        await self.store.close()

    def describe(self) -> str:
        """One line for the service manager's status."""
        gossip = f"{self.gossip.addr[0]}:{self.gossip.addr[1]}" if self.gossip is not None else "-"
        return f"controller {self.cfg.name}: rpc {self.rpc_address}, gossip {gossip}"

    def reload(self, cfg: ControllerConfig) -> daemon.Reload:
        """SIGHUP: apply the gossip keys of a freshly read configuration; name the settings
        that wait for a restart."""
        out = daemon.Reload(needs_restart=daemon.changed_settings(self.cfg, cfg))
        keys = cfg.keys if daemon.reload_keys(self.gossip, self.cfg.keys, cfg.keys, out) \
            else self.cfg.keys
        self.cfg = dataclasses.replace(self.cfg, keys=keys, log_level=cfg.log_level,
                                       log_format=cfg.log_format)
        return out

    async def _liveness(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.cfg.node_grace / 4))
            try:
                await self.nodes_monitor.check()
                await self.nodes.drain_pass()
            except Exception:
                log.exception("node liveness check failed")

    def _on_member(self, ev: MemberEvent) -> None:
        """Liveness acts on every event at once, on the leader only (followers hear them too
        and leave them to it); the event log gets them coalesced."""
        if not self.is_leader:
            return
        if ev.kind in (EventKind.DEAD, EventKind.LEFT):
            self.nodes_monitor.member_dead(ev.name)
        elif ev.kind in (EventKind.ALIVE, EventKind.JOIN):
            for node in self.nodes_monitor.member_alive(ev.name):
                self._spawn(self.nodes_monitor.readmit(node))

    def _record_members(self, batch: list[Delivered]) -> None:
        """One event per member and burst (a suspicion refuted within it is no news)."""
        if not self.is_leader:
            return
        for d in batch:
            kind = {EventKind.SUSPECT: "NodeSuspect", EventKind.ALIVE: "NodeAlive",
                    EventKind.DEAD: "NodeMemberDead",
                    EventKind.LEFT: "NodeMemberLeft"}.get(d.event.kind)
            if kind is not None:
                self._spawn(self.nodes_monitor.member_event(d.event.name, kind))

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Future[object]) -> None:
        self._background.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        e = task.exception()
        if isinstance(e, (NotLeaderError, StoreError)):  # the term ended meanwhile, or etcd is away
            log.warning("a gossip event about a node was not recorded", extra={"error": str(e)})
        else:
            log.error("recording a gossip event about a node failed", exc_info=e)

    # --- what the endpoints ask ----------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        if self.leadership is not None:
            return self._leading and self.leadership.is_leader
        return self._leading

    def _may_write(self) -> None:
        """On etcd only a controller that holds a current term writes (``Cluster.may_write``);
        the fenced store refuses the writes of a term that ended, this refuses a follower's."""
        if self.leadership is not None and not self.leadership.is_leader:
            raise NotLeaderError(self.leadership.leader_address or None)

    def require_leader(self) -> None:
        """Raise NotLeaderError (with the leader's address, when known) on a follower."""
        if not self.is_leader:
            raise NotLeaderError(self.leadership.leader_address if self.leadership else None)

    def leader_info(self) -> controller_pb2.LeaderInfo:
        """Who leads, and every controller gossip knows (with whether it answers)."""
        leader = self.leadership.leader if self.leadership is not None else None
        name = self.cfg.name if self.is_leader else (leader.name if leader else "")
        address = self.rpc_address if self.is_leader else (leader.address if leader else "")
        controllers = {self.cfg.name: controller_pb2.ControllerInfo(
            name=self.cfg.name, address=self.rpc_address, leader=self.is_leader,
            status="alive")}
        for m in self.gossip.members() if self.gossip is not None else ():
            rpc = m.state.get("rpc")
            if m.state.get("role") == "controller" and m.name not in controllers:
                controllers[m.name] = controller_pb2.ControllerInfo(
                    name=m.name, address=rpc if isinstance(rpc, str) else "",
                    leader=m.name == name, status=str(m.status))
        return controller_pb2.LeaderInfo(leader=name, address=address, is_self=self.is_leader,
                                         controllers=sorted(controllers.values(),
                                                            key=lambda c: c.name))

    def members(self) -> list[controller_pb2.Member]:
        if self.gossip is None:
            return []
        out = []
        for m in sorted(self.gossip.members(), key=lambda m: m.name):
            tags = {k: v if isinstance(v, str) else str(v) for k, v in m.state.items()}
            member = controller_pb2.Member(name=m.name, address=f"{m.addr[0]}:{m.addr[1]}",
                                           status=str(m.status), incarnation=m.incarnation,
                                           tags=tags)
            coord = self.gossip.core.coordinate(m.name) if self.gossip.core else None
            if coord is not None:
                member.coordinate.CopyFrom(controller_pb2.Coordinate(
                    vec=coord.vec, error=coord.error, height=coord.height,
                    adjustment=coord.adjustment))
            out.append(member)
        return out

    def refused_peers(self) -> list[controller_pb2.RefusedPeer]:
        """Sources whose gossip this controller drops (a wrong key, another cluster...)."""
        if self.gossip is None:
            return []
        return [controller_pb2.RefusedPeer(name=r.name, address=r.addr, reason=r.reason,
                                           packets=r.packets, last_time_ns=int(r.last * 1e9),
                                           error=r.error)
                for r in sorted(self.gossip.refused.values(), key=lambda r: -r.last)]

    def member_status(self, name: str) -> str:
        if self.gossip is None:
            return ""
        m = next((m for m in self.gossip.members() if m.name == name), None)
        return str(m.status) if m is not None else ""

    def services(self, name: str = "") -> list[controller_pb2.ServiceEntry]:
        state = self.cluster.state
        entries: dict[tuple[str, str], controller_pb2.ServiceEntry] = {}
        for a in sorted(state.allocs.values(), key=lambda a: (a.job, a.index)):
            if a.desired_status != RUN or a.client_status != RUNNING:
                continue
            group = state.group_spec(a)
            node = state.nodes.get(a.node_id)
            if group is None or node is None:
                continue
            host = host_of(node.address)
            for svc in group.services:
                if name and svc.name != name:
                    continue
                e = entries.get((a.job, svc.name))
                if e is None:
                    e = entries[(a.job, svc.name)] = controller_pb2.ServiceEntry(
                        name=svc.name, job=a.job, published_port=svc.published_port,
                        protocol=svc.protocol)
                port = a.ports.get(svc.port)
                if port:
                    e.endpoints.add(alloc_id=a.id, node=node.name, address=f"{host}:{port}",
                                    healthy=a.checks_healthy if svc.check else True)
        return list(entries.values())

    def fire_event(self, req: controller_pb2.FireEventRequest) -> controller_pb2.FireEventResponse:
        """Gossip a user event from this controller (any controller may: gossip is not
        the store); ConfigError when the name or payload is unfit."""
        if self.gossip is None or self.gossip.core is None:
            raise ConfigError("gossip is not running on this controller")
        ltime = self.gossip.core.user_events.clock
        try:
            self.gossip.fire_event(req.name, req.payload, coalesce=not req.no_coalesce)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return controller_pb2.FireEventResponse(ltime=ltime, member=self.cfg.name)

    def _record_user_events(self, batch: list[UserEvent]) -> None:
        """The leader records user events (coalesced by name) in the event log, topic user."""
        if not self.is_leader:
            return
        now_ns = int(time.time() * 1e9)
        events = []
        for e in batch:
            shown = e.payload.decode("utf-8", "backslashreplace")
            events.append(event("user", "UserEvent", e.name, f"{e.name} (ltime {e.ltime})"
                                + (f": {shown}" if shown else ""), now_ns))
        self._spawn(self.cluster.write(Changes(events=events)))

    async def keyring(self, req: controller_pb2.KeyringRequest,
                      token: str = "") -> controller_pb2.KeyringResponse:
        """Do a keyring operation here, then on every other controller and every agent that
        is not down (concurrently); one result per member."""
        if req.op != controller_pb2.KEYRING_OP_LIST:
            parse_key(req.key)  # one clear error instead of one per member
        if req.op == controller_pb2.KEYRING_OP_UNSPECIFIED:
            raise ConfigError("say which keyring operation: list, install, use or remove")
        out = controller_pb2.KeyringResponse(
            members=[keyring.apply(self.gossip, req, self.cfg.data_dir, self.cfg.name)])
        if req.local:
            return out
        fwd = controller_pb2.KeyringRequest(op=req.op, key=req.key, local=True)
        meta = (("authorization", f"Bearer {token}"),) if token else ()

        async def peer(name: str, addr: str) -> controller_pb2.MemberKeyring:
            ch = self._channels.get(addr) or self._channels.setdefault(
                addr, open_channel(addr, self.cfg.tls))
            reply = await controller_pb2_grpc.ControllerServiceStub(ch).Keyring(
                fwd, timeout=10, metadata=meta)
            return reply.members[0]

        async def agent(node: node_pb2.Node) -> controller_pb2.MemberKeyring:
            stub = controller_pb2_grpc.AgentServiceStub(await self.agent_channel(node.id))
            reply: controller_pb2.MemberKeyring = await stub.Keyring(fwd, timeout=10)
            return reply

        calls: list[tuple[str, Awaitable[controller_pb2.MemberKeyring]]] = []
        for m in self.gossip.members() if self.gossip is not None else ():
            rpc = m.state.get("rpc")
            if m.state.get("role") == "controller" and m.name != self.cfg.name and \
                    isinstance(rpc, str) and str(m.status) == "alive":
                calls.append((m.name, peer(m.name, rpc)))
        for node in sorted(self.cluster.state.nodes.values(), key=lambda n: n.name):
            if node.status == node_pb2.NODE_STATUS_DOWN:
                out.members.add(member=node.name, error="the node is down: it keeps the keys it "
                                "had (repeat the operation when it is back)")
            else:
                calls.append((node.name, agent(node)))
        results = await asyncio.gather(*(c for _, c in calls), return_exceptions=True)
        for (name, _), r in zip(calls, results, strict=True):
            if isinstance(r, BaseException):
                why = r.details() if isinstance(r, grpc.aio.AioRpcError) else str(r)
                out.members.add(member=name, error=f"unreachable: {why}")
            else:
                out.members.append(r)
        return out

    async def agent_channel(self, node_id: str) -> grpc.aio.Channel:
        """A channel to the agent of a node (its AgentService), reused."""
        node = self.cluster.state.nodes.get(node_id)
        if node is None or not node.address:
            raise NotFoundError(f"node {node_id[:8]} has no agent address")
        ch = self._channels.get(node.address)
        if ch is None:
            ch = self._channels[node.address] = open_channel(
                node.address, self.cfg.tls, [("grpc.max_receive_message_length", MAX_MESSAGE)])
        return ch

