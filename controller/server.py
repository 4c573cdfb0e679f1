"""The controller, assembled: store, state, scheduling loop, node liveness, gRPC, gossip.

One controller is always the leader (SQLite). ``require_leader`` is where a
multi-controller setup (etcd) will say otherwise.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from agent.config import parse_addr
from agent.gossip.core import EventKind, MemberEvent
from agent.gossip.crypto import Keyring
from agent.gossip.metrics import GossipCollector
from agent.gossip.transport import GossipNode
from controller.api.controller_endpoint import ControllerEndpoint
from controller.api.node_endpoint import NodeEndpoint
from controller.cluster import Cluster
from controller.config import ControllerConfig
from controller.evaluator import Evaluator
from controller.jobs import Jobs
from controller.metrics import ControllerCollector
from controller.nodes import NodeAdmin, NodeMonitor
from controller.state import RUN, RUNNING, ClusterState
from controller.store.base import Changes, Store
from orch import daemon
from orch.errors import NotFoundError
from orch.metrics import MetricsServer, registry_with
from orch.v1 import controller_pb2, controller_pb2_grpc, node_pb2

log = logging.getLogger("controller")

MAX_MESSAGE = 64 * 1024 * 1024
"""Largest gRPC message accepted (a job with many groups, a big desired set)."""


def open_store(cfg: ControllerConfig) -> Store:
    from controller.store.sqlite import SQLiteStore

    Path(cfg.data_dir).mkdir(parents=True, exist_ok=True)
    return SQLiteStore(os.path.join(cfg.data_dir, "controller.db"), synchronous=cfg.store_sync)


class Controller:
    def __init__(self, cfg: ControllerConfig, store: Store | None = None) -> None:
        self.cfg = cfg
        self.store = store or open_store(cfg)
        self.rpc_address = ""
        self.gossip: GossipNode | None = None
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.metrics: MetricsServer | None = None
        self._background: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        await self.store.open()
        state = ClusterState.from_store(await self.store.load())
        self.cluster = Cluster(self.store, state)
        self.evaluator = Evaluator(self.cluster, reconcile_interval=self.cfg.reconcile_interval)
        self.jobs = Jobs(self.cluster, self.evaluator)
        self.nodes_monitor = NodeMonitor(self.cluster, self.evaluator,
                                         node_grace=self.cfg.node_grace,
                                         failover_grace=self.cfg.failover_grace,
                                         max_down_fraction=self.cfg.max_down_fraction)
        self.nodes = NodeAdmin(self.cluster, self.evaluator)
        if "cluster_id" not in state.meta:
            await self.cluster.write(Changes(meta={"cluster_id": str(uuid.uuid4())}))
        log.info("state loaded", extra={"index": state.index, "jobs": len(state.jobs),
                                        "allocations": len(state.allocs), "nodes": len(state.nodes)})

        server = self._server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE)])
        controller_pb2_grpc.add_ControllerServiceServicer_to_server(ControllerEndpoint(self), server)
        controller_pb2_grpc.add_NodeServiceServicer_to_server(NodeEndpoint(self), server)
        health_servicer = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        names = [controller_pb2.DESCRIPTOR.services_by_name[s].full_name
                 for s in ("ControllerService", "NodeService")]
        reflection.enable_server_reflection([*names, reflection.SERVICE_NAME,
                                             health.SERVICE_NAME], server)
        host, port = parse_addr(self.cfg.rpc_addr, default_port=4647, where="rpc_addr")
        bound = server.add_insecure_port(f"{host}:{port}")
        if not bound:
            raise OSError(f"cannot listen on {host}:{port}")
        adv = self.cfg.rpc_advertise or f"{host}:{bound}"
        if adv.startswith("0.0.0.0:"):
            raise ValueError("rpc_addr 0.0.0.0 needs rpc_advertise (the address agents use)")
        self.rpc_address = adv
        await server.start()
        for name in ["", *names]:
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

        gbind = parse_addr(self.cfg.bind, where="bind")
        gadv = parse_addr(self.cfg.advertise, where="advertise") if self.cfg.advertise else None
        self.gossip = GossipNode(
            self.cfg.gossip, name=self.cfg.name, bind=gbind, advertise=gadv,
            keyring=Keyring(list(self.cfg.keys)) if self.cfg.keys else None,
            state={"role": "controller", "rpc": self.rpc_address}, rng=random.Random())
        self.gossip.on_event(self._on_member)
        await self.gossip.start()
        # the configured seeds, or else the agents this controller knew before it restarted
        seeds = list(self.cfg.join) or sorted(
            n.gossip_address for n in state.nodes.values()
            if n.gossip_address and n.status == node_pb2.NODE_STATUS_READY)
        if seeds:
            self.gossip.join([parse_addr(s, where="join") for s in seeds])

        if self.cfg.metrics_addr:
            mhost, mport = parse_addr(self.cfg.metrics_addr, default_port=9647, where="metrics_addr")
            self.metrics = MetricsServer(registry_with(ControllerCollector(self),
                                                       GossipCollector(self.gossip)), mhost, mport)
            await self.metrics.start()
        self.evaluator.start()
        self._tasks.append(asyncio.create_task(self._liveness(), name="liveness"))
        self.evaluator.enqueue_all("startup")
        log.info("controller serving", extra={"rpc": self.rpc_address, "node": self.cfg.name})

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, finish what is in flight (up to ``grace``), leave the cluster."""
        if self._server is not None:
            await self._server.stop(grace)
        await self.evaluator.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
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
        if ev.kind in (EventKind.DEAD, EventKind.LEFT):
            self.nodes_monitor.member_dead(ev.name)
        elif ev.kind in (EventKind.ALIVE, EventKind.JOIN):
            for node in self.nodes_monitor.member_alive(ev.name):
                self._spawn(self.nodes_monitor.readmit(node))
        kind = {EventKind.SUSPECT: "NodeSuspect", EventKind.ALIVE: "NodeAlive",
                EventKind.DEAD: "NodeMemberDead", EventKind.LEFT: "NodeMemberLeft"}.get(ev.kind)
        if kind is not None:
            self._spawn(self.nodes_monitor.member_event(ev.name, kind))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- what the endpoints ask ----------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return True

    def require_leader(self) -> None:
        """One controller on SQLite always leads; etcd-backed controllers elect one."""

    def leader_info(self) -> controller_pb2.LeaderInfo:
        me = controller_pb2.ControllerInfo(name=self.cfg.name, address=self.rpc_address,
                                           leader=True, status="alive")
        return controller_pb2.LeaderInfo(leader=self.cfg.name, address=self.rpc_address,
                                         is_self=True, controllers=[me])

    def members(self) -> list[controller_pb2.Member]:
        if self.gossip is None:
            return []
        out = []
        for m in sorted(self.gossip.members(), key=lambda m: m.name):
            tags = {k: v if isinstance(v, str) else str(v) for k, v in m.state.items()}
            out.append(controller_pb2.Member(name=m.name, address=f"{m.addr[0]}:{m.addr[1]}",
                                             status=str(m.status), incarnation=m.incarnation,
                                             tags=tags))
        return out

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
            host = node.address.rpartition(":")[0] or node.address
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

    async def agent_channel(self, node_id: str) -> grpc.aio.Channel:
        """A channel to the agent of a node (its AgentService), reused."""
        node = self.cluster.state.nodes.get(node_id)
        if node is None or not node.address:
            raise NotFoundError(f"node {node_id[:8]} has no agent address")
        ch = self._channels.get(node.address)
        if ch is None:
            ch = self._channels[node.address] = grpc.aio.insecure_channel(
                node.address, options=[("grpc.max_receive_message_length", MAX_MESSAGE)])
        return ch

