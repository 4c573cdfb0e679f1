"""The controller's one write path: store first, then memory, then everyone who listens.

``Cluster.commit(changes)`` makes a change durable, applies it to the in-memory
state, publishes its events (``orchctl events``, ``Watch``) and pushes a fresh
desired set to every connected agent whose allocations changed. Commits are
serialised, so readers always see a state that the store also holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

from controller.state import RUN, ClusterState
from controller.store.base import Changes, Store
from orch.metrics import LATENCY, Hist
from orch.v1 import controller_pb2, node_pb2

log = logging.getLogger("controller")

DesiredSink = Callable[[controller_pb2.DesiredAllocations], None]


class EventBus:
    """Fan-out of committed events to watchers, each with a bounded queue."""

    def __init__(self, queue_size: int = 10_000, keep: int = 1000) -> None:
        self._subs: set[asyncio.Queue[controller_pb2.Event | None]] = set()
        self._size = queue_size
        self.recent: deque[controller_pb2.Event] = deque(maxlen=keep)
        """The latest events since this controller started (``orchctl events`` shows them)."""

    def publish(self, events: list[controller_pb2.Event]) -> None:
        self.recent.extend(events)
        for q in list(self._subs):
            for ev in events:
                if q.full():  # a watcher that cannot keep up is cut off, not waited for
                    self._subs.discard(q)
                    with contextlib.suppress(asyncio.QueueFull):
                        q.put_nowait(None)
                    break
                q.put_nowait(ev)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[controller_pb2.Event | None]]:
        """A queue of events from now on; None in it means the watcher fell too far behind."""
        q: asyncio.Queue[controller_pb2.Event | None] = asyncio.Queue(self._size + 1)
        self._subs.add(q)
        try:
            yield q
        finally:
            self._subs.discard(q)


class Cluster:
    def __init__(self, store: Store, state: ClusterState,
                 may_write: Callable[[], None] | None = None) -> None:
        self.store = store
        self.state = state
        self.may_write = may_write
        """Raises (NotLeaderError) when this controller may not write now: on etcd only the
        leader writes, and a follower's store is not fenced, so this is what stops it."""
        self.events = EventBus()
        self._lock = asyncio.Lock()
        self._sinks: dict[str, DesiredSink] = {}
        self._pushed: dict[str, bytes] = {}
        self.commit_latency = Hist(LATENCY)
        self.listeners: list[Callable[[Changes], None]] = []
        """Called after every commit (the scheduler loop wakes on them)."""

    @property
    def lock(self) -> asyncio.Lock:
        """Held by whoever reads the state to decide a change, until the change is committed."""
        return self._lock

    async def commit(self, changes: Changes) -> int:
        """Make ``changes`` durable, then visible. The caller must hold ``lock``."""
        if not changes:
            return self.state.index
        if self.may_write is not None:
            self.may_write()
        t0 = time.perf_counter()
        index = await self.store.commit(changes)
        self.commit_latency.observe(time.perf_counter() - t0)
        self.state.apply(changes, index)
        if changes.events:
            self.events.publish(changes.events)
        nodes = {a.node_id for a in changes.put_allocs}
        nodes |= {n.id for n in changes.put_nodes}
        for node_id in nodes:
            self.push_desired(node_id)
        for listener in self.listeners:
            listener(changes)
        return index

    async def write(self, changes: Changes) -> int:
        async with self._lock:
            return await self.commit(changes)

    # --- agents' desired sets ------------------------------------------------------------------

    def attach(self, node_id: str, sink: DesiredSink) -> None:
        """Send this node's desired set to ``sink`` now and after every change to it."""
        self._sinks[node_id] = sink
        self._pushed.pop(node_id, None)
        self.push_desired(node_id)

    def detach(self, node_id: str, sink: DesiredSink) -> None:
        if self._sinks.get(node_id) is sink:
            del self._sinks[node_id]
            self._pushed.pop(node_id, None)

    def connected(self, node_id: str) -> bool:
        return node_id in self._sinks

    def desired_for(self, node_id: str) -> controller_pb2.DesiredAllocations:
        """Every allocation the node should run, with the state's index as version, this
        cluster's id and the store's epoch (an agent applies sets of its own cluster only, and
        a newer epoch, after a restore, resets the version it compares with)."""
        allocs = [a for a in self.state.allocs_on_node(node_id) if a.desired_status == RUN]
        meta = self.state.meta
        return controller_pb2.DesiredAllocations(
            version=self.state.index, allocations=allocs, cluster_id=meta.get("cluster_id", ""),
            epoch=int(meta.get("store_epoch", "0") or 0))

    def resend(self) -> None:
        """Send every connected agent its desired set again, changed or not (after a restore)."""
        self._pushed.clear()
        for node_id in list(self._sinks):
            self.push_desired(node_id)

    def push_desired(self, node_id: str) -> None:
        sink = self._sinks.get(node_id)
        if sink is None:
            return
        desired = self.desired_for(node_id)
        # the agent converges to the set, so an unchanged set is not worth sending again
        digest = f"{desired.cluster_id}:{desired.epoch};".encode() + b"".join(
            sorted(_digest(a) for a in desired.allocations))
        if self._pushed.get(node_id) == digest:
            return
        self._pushed[node_id] = digest
        sink(desired)


def _digest(a: node_pb2.Allocation) -> bytes:
    return f"{a.id}:{a.job_version}:{a.desired_status}".encode()
