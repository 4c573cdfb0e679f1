"""Nodes: registration over the agent stream, what agents report, and when a node is down.

A node is *ready* while its agent holds a stream open to the leader. When the
stream is gone for ``node_grace`` seconds, or gossip says its member is dead,
the node is marked *down* and its allocations are rescheduled. Gossip's verdict
counts even while the stream still looks open: the TCP connection of an agent
that froze or was cut off by the network looks open for minutes. When gossip
sees such a member alive again (it refuted, or rejoined) and its stream is still
there, the node is ready again without reconnecting. Two brakes keep a
flapping node or a partition from causing a storm:

- a node known from before the controller (re)started gets ``failover_grace`` to
  reconnect, since its agent's reconnection backoff may be longer than ``node_grace``
  (as Nomad's failover heartbeat TTL), or longer in a big cluster (``RECONNECTS_PER_S``),
  unless gossip says it is dead;
- a node that went down recently waits longer before it is marked down again
  (the grace doubles with every flap within ``flap_window``, up to 16 times);
- the controller never marks more than ``max_down_fraction`` of the nodes down at
  once: beyond that it is more likely cut off itself (as Kubernetes' node
  lifecycle controller reasons), so it waits and says so. The share counts only the
  nodes that were ready within ``brake_window`` (ready now, or marked down since then),
  and those marked down while the brake held others back, for as long as some node stays
  overdue: a node gone for good leaves the count once the window has passed, so a fleet
  that replaces its machines is never braked by the ones it retired, while a controller
  cut off from everyone stays braked for as long as it is.

A node down for ``node_gc_threshold`` is forgotten by the garbage collector
(``controller.gc``); ``NodeAdmin.purge`` forgets a down node at once. Neither lifts a
removal (``NodeAdmin.remove``): the removed node's id stays refused for ever.

When a down node comes back, its agent receives a desired set without the
allocations that were rescheduled elsewhere, and stops them: nothing runs twice.

What agents report (registrations, their allocations' states) is committed in
batches: every report that arrives while a commit is under way goes into the next one
(the newest per node or allocation wins), so thousands of agents cost a few commits a
second, not one each, and nodes that go down together are marked down in one commit.
Each stream waits for the next commit before it reads on, so what waits is bounded
by the streams (one report per allocation at most), and one commit takes at most
``REPORT_BATCH`` of them, so that none holds the event loop for long. A node that
registers again as it was (a reconnection) does not cause its jobs to be evaluated again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from controller.cluster import Cluster
from controller.evaluator import Evaluator
from controller.planner import event
from controller.reports import Merged, merge_report
from controller.scheduler import node_info_from_proto
from controller.state import RUN, TERMINAL, ClusterState, job_key
from controller.store.base import Changes
from orch.errors import NotFoundError, RequestError
from orch.v1 import job_pb2, node_pb2

log = logging.getLogger("controller")
NS = 1_000_000_000
READY, DOWN = node_pb2.NODE_STATUS_READY, node_pb2.NODE_STATUS_DOWN
REPORT_BATCH = 5000
"""Allocation reports one commit takes at most (the rest go into the next): a commit holds
the event loop while it applies, and a thousand agents reconnecting at once report
everything they run."""
RECONNECTS_PER_S = 50
"""Agents' streams a starting controller is counted on to take back per second (TLS
handshake, registration, the whole desired set out, everything the node runs reported in):
nodes known from before get at least ``nodes / RECONNECTS_PER_S`` seconds to come back (as
Nomad's heartbeat TTL grows with the nodes, at its max_heartbeats_per_second of 50). A fixed
15 s marked 3,300 of 5,000 nodes down after a restart while their agents queued to reconnect."""
REVOKED = "revoked/"
"""``revoked/<node id>`` in the store's meta: the node was removed (``controller.trust``)."""
NODE_KEY = "node-key/"
"""``node-key/<node id>`` in the store's meta: the key that node's certificates name."""


@dataclass(slots=True)
class _Liveness:
    connected: bool = False
    lost_at: float | None = None
    """When the stream went away (or gossip declared the member dead)."""
    gossip_dead: bool = False
    """Gossip declared the member dead (or gone) and has not seen it alive since."""
    seen: bool = False
    """Its agent has connected to this controller (since it started)."""
    downs: list[float] = field(default_factory=list)
    """When the node was marked down, within the flap window."""


def failover_grace_for(nodes: int, failover_grace: float) -> float:
    """Seconds nodes known from before a controller started have to reconnect to it: the
    configured grace, or longer when there are too many of them to take back within it."""
    return max(failover_grace, nodes / RECONNECTS_PER_S)


class NodeMonitor:
    def __init__(self, cluster: Cluster, evaluator: Evaluator, *, node_grace: float = 10.0,
                 failover_grace: float = 15.0, flap_window: float = 600.0,
                 max_down_fraction: float = 0.5, brake_window: float = 600.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.cluster = cluster
        self.state = cluster.state
        self.evaluator = evaluator
        self.node_grace = node_grace
        self.failover_grace = failover_grace
        self.flap_window = flap_window
        self.max_down_fraction = max_down_fraction
        self.brake_window = brake_window
        self.clock = clock
        self._live: dict[str, _Liveness] = {}
        self._warned_partition = False
        self._wave: set[str] = set()
        """Nodes marked down while the brake held others back, as long as some node is still
        overdue: one wave of unreachable nodes (a partition), however long it lasts."""
        self.braked = 0
        """Checks that left an overdue node up because of the half-down brake (metrics)."""
        self._reports: dict[str, tuple[str, node_pb2.Allocation]] = {}
        """Allocation id -> (reporting node, its newest report), for the next commit."""
        self._registrations: dict[str, node_pb2.Node] = {}
        """Node id -> its newest registration, for the next commit."""
        self._batch: asyncio.Future[None] | None = None
        """Resolved once the reports gathered so far are committed."""
        self._flusher: asyncio.Task[None] | None = None
        self.report_batches = 0
        self.reports = 0

    def reset(self) -> None:
        """Forget what was seen of the agents' streams: a new term starts, and the nodes it
        finds get their graces from now."""
        self._live.clear()
        self._warned_partition = False
        self._wave.clear()

    def forget(self, node_id: str) -> None:
        """The node's record is gone (garbage-collected or purged): drop what was seen of it."""
        self._live.pop(node_id, None)
        self._wave.discard(node_id)

    # --- agent streams -------------------------------------------------------------------------

    async def register(self, reg: node_pb2.Node) -> node_pb2.Node:
        """An agent connected: record what it offers; keep what operators set (eligibility,
        drain). Committed with the other registrations and reports of the moment."""
        old = self.state.nodes.get(reg.id)
        self._registrations[reg.id] = reg
        await self._in_next_batch()
        node = self.state.nodes[reg.id]
        live = self._live.setdefault(node.id, _Liveness())
        live.connected, live.lost_at, live.gossip_dead, live.seen = True, None, False, True
        log.info("node ready", extra={"node": node.name, "node_id": node.id,
                                      "address": node.address})
        if old is None or old.status == DOWN or \
                node_info_from_proto(old) != node_info_from_proto(node):
            # what may be placed there, or must move, changed (not a reconnection as it was)
            self.evaluator.enqueue_all("node-update", system_only=True)
            snap = self.state.snapshot
            infos = (snap.alloc(i) for i in self.state.by_node.get(node.id, ()))
            for key in {(a.namespace, a.job) for a in infos if a is not None}:
                self.evaluator.enqueue(key, "node-update")
        return node

    def _registered(self, reg: node_pb2.Node, now_ns: int, changes: Changes) -> None:
        old = self.state.nodes.get(reg.id)
        node = node_pb2.Node()
        node.CopyFrom(reg)
        node.status = READY
        node.status_time_ns = now_ns
        if old is not None:
            node.eligible = old.eligible
            if old.HasField("drain"):
                node.drain.CopyFrom(old.drain)
        else:
            node.eligible = True
        came_back = old is not None and old.status == DOWN
        kind = "NodeRegistered" if old is None else ("NodeUp" if came_back else "NodeUpdated")
        changes.put_nodes.append(node)
        changes.events.append(event("node", kind, node.id, f"node {node.name} is ready",
                                    now_ns, node=node))

    def disconnected(self, node_id: str) -> None:
        live = self._live.setdefault(node_id, _Liveness())
        live.connected = False
        if live.lost_at is None:
            live.lost_at = self.clock()
        log.info("node stream closed", extra={"node_id": node_id})

    async def member_event(self, name: str, kind: str) -> None:
        """Record what gossip says of a node's member (suspect, alive again) as an event."""
        node = next((n for n in self.state.nodes.values() if n.name == name), None)
        if node is None:
            return
        now_ns = int(self.clock() * NS)
        what = {"NodeSuspect": "suspected by gossip", "NodeAlive": "refuted the suspicion",
                "NodeMemberDead": "declared dead by gossip",
                "NodeMemberLeft": "left the gossip cluster"}[kind]
        await self.cluster.write(Changes(events=[event("node", kind, node.id,
                                                       f"node {name} {what}", now_ns, node=node)]))

    def member_dead(self, name: str) -> None:
        """Gossip says the member of this name is dead or gone: start the grace now (even if
        its stream still looks open)."""
        for node in self.state.nodes.values():
            if node.name == name:
                live = self._live.setdefault(node.id, _Liveness())
                live.gossip_dead = True
                if node.status == READY and live.lost_at is None:
                    live.lost_at = self.clock()

    def member_alive(self, name: str) -> list[node_pb2.Node]:
        """Gossip sees the member of this name alive (it refuted, or rejoined). Returns the
        nodes that were marked down while their stream stayed open: ``readmit`` them."""
        back = []
        for node in self.state.nodes.values():
            if node.name == name:
                self._live.setdefault(node.id, _Liveness()).gossip_dead = False
                if node.status == DOWN and self.cluster.connected(node.id):
                    back.append(node)
        return back

    async def readmit(self, node: node_pb2.Node) -> None:
        """A node marked down is ready again without reconnecting: its agent receives the
        desired set without what was moved elsewhere, and stops it."""
        cur = self.state.nodes.get(node.id)
        if cur is not None and cur.status == DOWN and self.cluster.connected(node.id):
            again = node_pb2.Node()
            again.CopyFrom(cur)
            await self.register(again)

    async def report(self, node_id: str, updates: list[node_pb2.Allocation]) -> None:
        """Merge what an agent reports about its allocations into the controller's records;
        returns once that is committed (with every other report that came meanwhile)."""
        for u in updates:
            self._reports[u.id] = (node_id, u)
        await self._in_next_batch()

    async def _in_next_batch(self) -> None:
        """Until what was queued is committed (by the batch being gathered now)."""
        if self._batch is None:
            self._batch = asyncio.get_running_loop().create_future()
        batch = self._batch
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="status-reports")
        await asyncio.shield(batch)

    async def _flush(self) -> None:
        """Commit the gathered reports, batch after batch, until none are left."""
        while self._reports or self._registrations:
            regs, self._registrations = self._registrations, {}
            reports = _take(self._reports, max(0, REPORT_BATCH - len(regs)))
            batch, self._batch = self._batch, None
            if batch is None:  # (report() makes one before it starts this task)
                batch = asyncio.get_running_loop().create_future()
            try:
                await self._commit_batch(regs, reports)
            except asyncio.CancelledError:
                batch.cancel()
                raise
            except Exception as e:
                batch.set_exception(e)
                with contextlib.suppress(Exception):  # the waiters are told; not a leak
                    batch.exception()
            else:
                batch.set_result(None)

    async def _commit_batch(self, regs: dict[str, node_pb2.Node],
                            reports: dict[str, tuple[str, node_pb2.Allocation]]) -> None:
        now_ns = int(self.clock() * NS)
        self.report_batches += 1
        self.reports += len(reports)
        async with self.cluster.lock:
            changes = Changes()
            for reg in regs.values():
                self._registered(reg, now_ns, changes)
            health = set()
            for node_id, u in reports.values():
                m = self._merged(node_id, u, now_ns)
                if m is None:
                    continue
                changes.put_allocs.append(m.alloc)
                changes.events += m.events
                if m.health_changed:
                    health.add(job_key(m.alloc))
            await self.cluster.commit(changes)
        self.evaluator.health_changed(health)

    def _merged(self, node_id: str, u: node_pb2.Allocation, now_ns: int) -> Merged | None:
        """The allocation with what its node reported merged in, and the events that says;
        None when the report changes nothing (or is not the node's to make)."""
        info = self.state.snapshot.alloc(u.id)
        if info is None or info.node_id != node_id:
            return None  # not this node's: ignore
        return merge_report(self.state.allocs[u.id], u, now_ns)  # (a copy of its own)

    # --- liveness ------------------------------------------------------------------------------

    async def check(self) -> None:
        """Mark down the nodes whose agents have been gone for longer than their grace."""
        now = self.clock()
        ready = [n for n in self.state.nodes.values() if n.status == READY]
        due = []
        failover_grace = failover_grace_for(len(self.state.nodes), self.failover_grace)
        for node in ready:
            live = self._live.get(node.id)
            if live is None:  # (not setdefault: a fleet's nodes each second)
                live = self._live[node.id] = _Liveness(lost_at=now)
            if self.cluster.connected(node.id) and not live.gossip_dead:
                live.connected, live.lost_at = True, None
                continue
            if live.lost_at is None:
                live.lost_at = now
            live.downs = [t for t in live.downs if now - t < self.flap_window]
            grace = self.node_grace * min(16, 2 ** len(live.downs))
            if not live.seen and not live.gossip_dead:
                grace = max(grace, failover_grace)  # known from before we started
            if now - live.lost_at >= grace:
                due.append(node)
        if not due:
            self._warned_partition = False
            self._wave.clear()
            return
        counted = self.brake_count(now)
        total = len(counted)
        down = sum(1 for n in counted if n.status == DOWN)
        allowed = int(total * self.max_down_fraction) - down if total >= 3 else len(due)
        braked = allowed < len(due)
        if braked:
            self.braked += 1
            if not self._warned_partition:
                log.warning("not marking nodes down: more than half of them unreachable at once "
                            "looks like this controller is cut off", extra={
                                "unreachable": len(due), "down": down, "nodes": total})
                self._warned_partition = True
            due = due[:max(0, allowed)]
        await self._mark_down(due, now)
        if braked:  # part of a wave the brake held back: it counts while the wave lasts
            self._wave.update(n.id for n in due)

    def brake_count(self, now: float) -> list[node_pb2.Node]:
        """The nodes the half-down brake counts: ready ones, those marked down within
        ``brake_window``, and those marked down while the brake held back the current wave
        of overdue nodes."""
        since_ns = int((now - self.brake_window) * NS)
        return [n for n in self.state.nodes.values() if n.status == READY or (
            n.status == DOWN and (n.status_time_ns >= since_ns or n.id in self._wave))]

    async def _mark_down(self, due: list[node_pb2.Node], now: float) -> None:
        """Mark these nodes down (in one commit) and evaluate the jobs that ran there."""
        now_ns = int(now * NS)
        down = []
        async with self.cluster.lock:
            changes = Changes()
            for node in due:
                cur = self.state.nodes.get(node.id)
                live = self._live.get(node.id)
                if cur is None or cur.status != READY or (
                        self.cluster.connected(node.id) and not (live and live.gossip_dead)):
                    continue
                n = node_pb2.Node()
                n.CopyFrom(cur)
                n.status = DOWN
                n.status_time_ns = now_ns
                changes.put_nodes.append(n)
                changes.events.append(event("node", "NodeDown", n.id, f"node {n.name} is down",
                                            now_ns, node=n))
                down.append(n)
            await self.cluster.commit(changes)
        snap = self.state.snapshot
        for n in down:
            self._live.setdefault(n.id, _Liveness()).downs.append(now)
            log.warning("node down", extra={"node": n.name, "node_id": n.id})
            infos = (snap.alloc(i) for i in self.state.by_node.get(n.id, ()))
            for key in {(a.namespace, a.job) for a in infos if a is not None and a.desired == "run"}:
                self.evaluator.enqueue(key, "node-down")
        if down:
            self.evaluator.enqueue_all("node-down", system_only=True)


def forget_node(state: ClusterState, node: node_pb2.Node, now_ns: int, why: str, *,
                kind: str = "NodeGarbageCollected") -> Changes:
    """Forget a down node: its record, what finished on it, the key its certificates named.
    A removal (``revoked/<id>``) stays: that id is never admitted again."""
    gone = [i for i in state.by_node.get(node.id, ())
            if state.allocs[i].desired_status != RUN or state.allocs[i].client_status in TERMINAL]
    return Changes(delete_nodes=[node.id], delete_allocs=sorted(gone),
                   delete_meta=[NODE_KEY + node.id]
                   if NODE_KEY + node.id in state.meta else [],
                   events=[event("node", kind, node.id,
                                 f"node {node.name} forgotten: {why}", now_ns, node=node)])


class NodeAdmin:
    """What operators change on nodes: eligibility, drains (with their deadlines), removal
    for good (``remove``), and forgetting a down node now (``purge``)."""

    def __init__(self, cluster: Cluster, evaluator: Evaluator,
                 clock: Callable[[], float] = time.time,
                 on_forgotten: Callable[[str], None] | None = None) -> None:
        self.cluster = cluster
        self.state = cluster.state
        self.evaluator = evaluator
        self.clock = clock
        self.on_forgotten = on_forgotten

    def find(self, ref: str) -> node_pb2.Node:
        found = self.state.find_node(ref)
        if not found:
            raise NotFoundError(f"no node {ref!r}")
        if len(found) > 1:
            raise RequestError(f"{ref!r} matches {len(found)} nodes: "
                             + ", ".join(n.id[:8] for n in found[:5]))
        return found[0]

    async def set_eligibility(self, ref: str, eligible: bool) -> node_pb2.Node:
        now_ns = int(self.clock() * NS)
        async with self.cluster.lock:
            n = node_pb2.Node()
            n.CopyFrom(self.find(ref))
            n.eligible = eligible
            word = "eligible" if eligible else "ineligible"
            await self.cluster.commit(Changes(put_nodes=[n], events=[event(
                "node", "NodeEligibility", n.id, f"node {n.name} is {word}", now_ns, node=n)]))
        if eligible:
            self.evaluator.enqueue_all("node-update")
        return n

    async def drain(self, ref: str, *, enable: bool, deadline: float = 0.0,
                    ignore_system_jobs: bool = False) -> node_pb2.Node:
        """Move allocations off a node (max_parallel at a time); stop what remains at the
        deadline. The node stays ineligible afterwards."""
        now_ns = int(self.clock() * NS)
        async with self.cluster.lock:
            n = node_pb2.Node()
            n.CopyFrom(self.find(ref))
            if enable:
                n.eligible = False
                n.drain.CopyFrom(node_pb2.DrainStrategy(
                    deadline_ns=now_ns + int(deadline * NS) if deadline > 0 else 0,
                    ignore_system_jobs=ignore_system_jobs))
                what = f"node {n.name} is draining" + (f" (deadline {deadline:g}s)" if deadline else "")
            else:
                n.ClearField("drain")
                what = f"drain of node {n.name} cancelled"
            await self.cluster.commit(Changes(put_nodes=[n], events=[event(
                "node", "NodeDrain", n.id, what, now_ns, node=n)]))
        for key in {job_key(a) for a in self.state.allocs_on_node(n.id)}:
            self.evaluator.enqueue(key, "node-drain")
        return n

    async def remove(self, ref: str) -> node_pb2.Node:
        """Remove a node for good: its certificate is refused from now on (whatever it
        presents, for its node id), it is down, and what ran there is placed elsewhere."""
        now_ns = int(self.clock() * NS)
        async with self.cluster.lock:
            n = node_pb2.Node()
            n.CopyFrom(self.find(ref))
            n.status = DOWN
            n.status_time_ns = now_ns
            n.eligible = False
            await self.cluster.commit(Changes(
                put_nodes=[n], meta={REVOKED + n.id: str(now_ns)},
                events=[event("node", "NodeRemoved", n.id,
                              f"node {n.name} removed from the cluster: its certificate is "
                              "refused from now on", now_ns, node=n)]))
        log.warning("node removed", extra={"node": n.name, "node_id": n.id})
        for key in {job_key(a) for a in self.state.allocs_on_node(n.id) if a.desired_status == RUN}:
            self.evaluator.enqueue(key, "node-down")
        self.evaluator.enqueue_all("node-down", system_only=True)
        return n

    async def purge(self, ref: str) -> node_pb2.Node:
        """Forget a down node now, as the garbage collector would after node_gc_threshold: its
        record, what finished there, the key its certificates named. What was still to run
        there is placed elsewhere. A node that is ready is refused (its agent would register
        again at once): stop its agent, or remove it for good first. A removed node stays
        refused after a purge."""
        now_ns = int(self.clock() * NS)
        async with self.cluster.lock:
            n = self.find(ref)
            if n.status != DOWN or self.cluster.connected(n.id):
                raise RequestError(f"node {n.name} is {'connected' if n.status != DOWN else 'down'}"
                                   " and its agent still holds a stream: only a node that is "
                                   "down can be purged (stop its agent and wait for the node to "
                                   "be marked down, or `orchctl node rm` it first)")
            changes = forget_node(self.state, n, now_ns, "purged by an operator",
                                  kind="NodePurged")
            await self.cluster.commit(changes)
        log.warning("node purged", extra={"node": n.name, "node_id": n.id})
        if self.on_forgotten is not None:
            self.on_forgotten(n.id)
        for key in {job_key(a) for a in self.state.allocs.values() if a.node_id == n.id}:
            self.evaluator.enqueue(key, "node-down")
        return n

    async def drain_pass(self) -> None:
        """Enforce drain deadlines and finish drains with nothing left to move."""
        now_ns = int(self.clock() * NS)
        async with self.cluster.lock:
            changes = Changes()
            for node in self.state.nodes.values():
                if not node.HasField("drain"):
                    continue
                remaining = [a for a in self.state.allocs_on_node(node.id)
                             if a.desired_status == RUN and a.client_status not in TERMINAL
                             and not (node.drain.ignore_system_jobs
                                      and a.job_type == job_pb2.JOB_TYPE_SYSTEM)]
                if remaining and node.drain.deadline_ns and now_ns >= node.drain.deadline_ns:
                    for a in remaining:
                        b = node_pb2.Allocation()
                        b.CopyFrom(a)
                        b.desired_status = node_pb2.DESIRED_STATUS_STOP
                        b.description = "drain deadline reached"
                        b.modify_time_ns = now_ns
                        changes.put_allocs.append(b)
                        self.evaluator.enqueue(job_key(a), "node-drain")
                    remaining = []
                if not remaining:
                    n = node_pb2.Node()
                    n.CopyFrom(node)
                    n.ClearField("drain")
                    n.eligible = False
                    changes.put_nodes.append(n)
                    changes.events.append(event("node", "NodeDrainComplete", n.id,
                                                f"node {n.name} drained", now_ns, node=n))
            await self.cluster.commit(changes)


def _take(queued: dict[str, tuple[str, node_pb2.Allocation]], n: int) -> dict[
        str, tuple[str, node_pb2.Allocation]]:
    """The first ``n`` queued reports, taken out of ``queued`` (all of them when fewer)."""
    if len(queued) <= n:
        out = dict(queued)
        queued.clear()
        return out
    out = {}
    for k in list(itertools.islice(queued, n)):
        out[k] = queued.pop(k)
    return out
