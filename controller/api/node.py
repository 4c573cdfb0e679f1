"""NodeService: the agents' streams, and the calls that make a node a member.

Connect: each agent holds one stream to the leader. Up: the node's registration first,
then what happens to its allocations. Down: the node's full desired set, then what
changes in it (``controller.desired``; the whole set again to agents that take no
changes), the cluster's expected endpoints (what its load balancer and templates may take
from gossip: whole first, then the services that changed, ``controller.endpoints``), and a
heartbeat when it has been silent for a while (a second; longer as more agents stream:
``heartbeat_interval``). A controller
that is not the leader answers with where the leader is, and ends the stream. A node's
certificate binds it: it registers and reports only as the node its certificate names
(its node id, or for a certificate made by hand without one, its name), and a node
removed from the cluster loses its stream at once.

Join: a holder of a join token gets its certificate (and the CA, the gossip keys; a
controller also the CA's key). Renew: a member gets a new certificate for the same
identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from controller.api.authz import Authorizer
from controller.api.rpc import Endpoint, bidi, unary
from controller.cluster import Cluster
from controller.leadership import LeaderStatus
from controller.nodes import NodeMonitor
from controller.trust import META_CONTROLLER, Peer, Trust
from controller.usage import UsageTable
from orch import daemon, keyring
from orch.errors import NotLeaderError, RequestError
from orch.gossip.transport import GossipNode
from orch.v1 import controller_pb2, node_pb2
from orch.vocab import HEARTBEAT_INTERVAL

log = logging.getLogger("api")
Ctx = grpc.aio.ServicerContext[Any, Any]
HEARTBEAT = 1.0
"""Seconds between the heartbeats sent down an agent's stream while nothing else is, at
least: the agent counts how long it has been cut off from the last one (the disconnect
block), and gives a silent stream up (a frozen leader)."""
MAX_HEARTBEATS_PER_SECOND = 250.0
"""Heartbeats the leader sends each second over all agents' streams, at most (as Nomad
bounds its servers' heartbeat work with ``max_heartbeats_per_second``): past 250 agents,
each stream's heartbeat comes less often, every 20 s with 5,000. A heartbeat a second to
each of 5,000 agents kept the leader 15 % busy with nothing to do. Agents that do not take
the interval (no ``heartbeat-interval`` feature) get one a second."""
HEARTBEAT_MAX = 30.0
"""Seconds between heartbeats, at most, however many agents stream."""


def heartbeat_interval(streams: int) -> float:
    """Seconds between the heartbeats down each stream when ``streams`` agents stream."""
    return min(HEARTBEAT_MAX, max(HEARTBEAT, streams / MAX_HEARTBEATS_PER_SECOND))


class NodeEndpoint(Endpoint):
    SERVICE = "NodeService"

    def __init__(self, authz: Authorizer, *, leader: LeaderStatus, monitor: NodeMonitor,
                 cluster: Cluster, usage: UsageTable, trust: Trust | None,
                 gossip: GossipNode) -> None:
        super().__init__(authz)
        self.leader = leader
        self.monitor = monitor
        self.cluster = cluster
        self.usage = usage
        self.trust = trust
        self.gossip = gossip
        self._removed: dict[str, asyncio.Event] = {}

    def end(self, node_id: str) -> None:
        """End the node's stream now (it was removed from the cluster)."""
        ev = self._removed.get(node_id)
        if ev is not None:
            ev.set()

    def _peer(self, ctx: Ctx) -> Peer:
        return self.trust.identify(ctx) if self.trust is not None and \
            self.authz.identify is not None else Peer()

    @staticmethod
    def _binds(peer: Peer, reg: node_pb2.Node) -> str:
        """Why ``peer`` may not register as ``reg`` ("" when it may)."""
        if peer.node_id:
            return "" if reg.id == peer.node_id else \
                f"this certificate is node {peer.node_id}'s, not {reg.id}'s"
        if peer.name:
            return "" if reg.name == peer.name else \
                f"this certificate is {peer.name}'s, not {reg.name}'s"
        return ""

    # --- the stream -----------------------------------------------------------------------------

    @bidi
    async def Connect(self, requests: AsyncIterator[controller_pb2.NodeMessage],
                      ctx: Ctx) -> AsyncIterator[controller_pb2.ControllerMessage]:
        peer = self._peer(ctx)
        try:
            first = await anext(aiter(requests))
        except StopAsyncIteration:
            return
        if first.WhichOneof("msg") != "register" or not first.register.id:
            await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            "the first message must register the node (with its id)")
            return
        refused = self._binds(peer, first.register)
        if refused:
            self.authz.denied["certificate", "Connect"] += 1
            await ctx.abort(grpc.StatusCode.PERMISSION_DENIED, refused)
            return
        try:
            self.leader.require()
        except NotLeaderError as e:
            yield controller_pb2.ControllerMessage(not_leader=controller_pb2.NotLeader(
                leader=e.leader or "", address=self.leader.leader()[1]))
            return
        monitor, term_over = self.monitor, self.leader.term_over
        try:
            node = await monitor.register(first.register)
        except NotLeaderError as e:  # the term ended before the registrations' commit
            yield controller_pb2.ControllerMessage(not_leader=controller_pb2.NotLeader(
                leader=e.leader or "", address=self.leader.leader()[1]))
            return
        due = asyncio.Event()
        """Something may have changed in the node's desired set or in the expected endpoints
        (set by the cluster's commits; what piles up meanwhile goes out as one message)."""
        reader = asyncio.create_task(self._read(monitor, node.id, peer, requests))
        removed = self._removed.setdefault(node.id, asyncio.Event())
        over = asyncio.ensure_future(daemon.first_set(term_over, removed))
        getter: asyncio.Future[Any] | None = None
        # first the table, then the work
        endpoints = self.cluster.attach_endpoints(first.register, due.set)
        feed = self.cluster.attach(first.register, due.set)
        scaled = HEARTBEAT_INTERVAL in first.register.features
        clock = asyncio.get_running_loop().time
        # when the last message went down: a heartbeat is due ``every`` seconds after it (a
        # wake-up that had nothing to send does not put it off), and never later than the
        # interval the last heartbeat named: the agent holds the stream to that one, so as
        # more agents stream the next heartbeat still comes then and names the longer one
        sent = clock()
        told = math.inf  # before the first heartbeat the agent waits for one
        try:
            while not reader.done() and not over.done():
                every = heartbeat_interval(self.cluster.streams()) if scaled else HEARTBEAT
                wait = min(every, told)
                getter = waiting = asyncio.ensure_future(due.wait())
                await asyncio.wait({waiting, reader, over}, timeout=max(0.0, sent + wait - clock()),
                                   return_when=asyncio.FIRST_COMPLETED)
                if waiting.done():
                    due.clear()
                    msg = self.cluster.next_endpoints(endpoints)
                    if msg is not None:
                        yield msg
                        sent = clock()
                    msg = self.cluster.next_desired(feed)
                    if msg is not None:
                        yield msg
                        sent = clock()
                    if clock() < sent + wait:
                        continue
                waiting.cancel()
                if not reader.done() and not over.done():
                    yield controller_pb2.ControllerMessage(heartbeat=controller_pb2.Heartbeat(
                        time_ns=time.time_ns(), next_ms=round(every * 1000) if scaled else 0))
                    sent, told = clock(), every
            if removed.is_set():
                await ctx.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"node {node.id} was removed from this cluster")
            if over.done():  # this controller stopped leading: send the agent on
                name, address = self.leader.leader()
                yield controller_pb2.ControllerMessage(not_leader=controller_pb2.NotLeader(
                    leader=name, address=address))
        finally:
            over.cancel()
            if getter is not None:  # the stream was cancelled while it waited
                getter.cancel()
            self.cluster.detach(feed)
            self.cluster.detach_endpoints(endpoints)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            if self._removed.get(node.id) is removed and not removed.is_set():
                del self._removed[node.id]
            monitor.disconnected(node.id)

    async def _read(self, monitor: NodeMonitor, node_id: str, peer: Peer,
                    requests: AsyncIterator[controller_pb2.NodeMessage]) -> None:
        try:
            async for msg in requests:
                kind = msg.WhichOneof("msg")
                if kind == "allocations":
                    await monitor.report(node_id, list(msg.allocations.allocations))
                elif kind == "register":
                    if msg.register.id != node_id or self._binds(peer, msg.register):
                        log.warning("a node tried to register as another; ignored", extra={
                            "node_id": node_id, "as": msg.register.id})
                        continue
                    await monitor.register(msg.register)
                elif kind == "usage":
                    self.usage.report(node_id, msg.usage, self.cluster.state.snapshot.allocs)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        except NotLeaderError:  # the term ended under a report: the agent is sent on, and
            pass                # reports in full to the next leader
        except Exception:
            log.exception("agent stream failed", extra={"node_id": node_id})


    # --- membership -----------------------------------------------------------------------------

    def _trust(self) -> Trust:
        if self.trust is None:
            raise RequestError("this controller serves without TLS: there is nothing to join "
                               "(start the cluster with --bootstrap)")
        return self.trust

    def _gossip_keys(self) -> list[str]:
        return keyring.encoded(self.gossip)

    @unary
    async def Join(self, req: controller_pb2.JoinRequest, ctx: Ctx) -> controller_pb2.Credentials:
        trust = self._trust()
        self.leader.require()  # joins are recorded: the leader does it
        role, changes = trust.admit(req, self._peer(ctx))
        name = req.name or (req.node_id if role == "agent" else "controller")
        cert = trust.issue(req.csr, role=role, name=name,
                           node_id=req.node_id if role == "agent" else "", ips=list(req.ips))
        if role == "controller" and req.address:
            changes.meta[META_CONTROLLER + name] = req.address
        await self.cluster.write(changes)
        log.info("a node joined", extra={"role": role, "node": name, "node_id": req.node_id,
                                         "peer": ctx.peer()})
        return trust.credentials(cert, gossip_keys=self._gossip_keys(),
                                 cluster_id=self.cluster.state.meta.get("cluster_id", ""),
                                 with_ca_key=role == "controller")

    @unary
    async def Renew(self, req: controller_pb2.RenewRequest, ctx: Ctx) -> controller_pb2.Credentials:
        trust = self._trust()
        peer = self._peer(ctx)
        role, changes = trust.renewal(req.csr, peer)
        if changes:
            self.leader.require()  # a new key is recorded: the leader does it
            await self.cluster.write(changes)
        cert = trust.issue(req.csr, role=role, name=peer.name, node_id=peer.node_id,
                           ips=list(req.ips))
        return trust.credentials(cert, gossip_keys=self._gossip_keys(),
                                 cluster_id=self.cluster.state.meta.get("cluster_id", ""),
                                 with_ca_key=False)

