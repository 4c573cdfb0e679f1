"""The controller's one write path: store first, then memory, then everyone who listens.

``Cluster.commit(changes)`` makes a change durable, applies it to the in-memory
state, publishes its events (``orchctl events``, ``Watch``), tells every connected agent
whose allocations it touched (``controller.desired``: the agent's stream then sends what
changed), and marks the services whose expected endpoints it changed (``controller.endpoints``:
every service's placed allocations; each agent's stream then sends those services, or the
whole set to agents that take no changes). Commits are serialised, so readers
always see a state that the store also holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

from controller.desired import FEATURE, NodeFeed, SecretsOf, touched_nodes
from controller.endpoints import EndpointFeed, ExpectedEndpoints
from controller.feeds import Feeds
from controller.state import ClusterState
from controller.store.base import Changes, Store
from orch.metrics import LATENCY, Hist
from orch.v1 import controller_pb2, node_pb2

log = logging.getLogger("controller")

SECRET_META = "secret/"
"""Meta keys of secrets: a change to one may change what some nodes are sent."""


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


class IndexWatch:
    """Wakes whoever waits for the state's index to pass a value (HTTP blocking queries):
    told after every commit, and after a follower reloads the state."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self._waiters: set[asyncio.Future[None]] = set()

    def moved(self) -> None:
        for f in self._waiters:
            if not f.done():
                f.set_result(None)
        self._waiters.clear()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def wait_past(self, index: int, within: float) -> bool:
        """Wait until the state's index is past ``index`` (at most ``within`` seconds);
        whether it is."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self.state.index <= index:
            left = deadline - loop.time()
            if left <= 0:
                return False
            f: asyncio.Future[None] = loop.create_future()
            self._waiters.add(f)
            try:
                await asyncio.wait_for(asyncio.shield(f), left)
            except TimeoutError:
                return self.state.index > index
            finally:
                self._waiters.discard(f)
        return True


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
        self._feeds: Feeds[NodeFeed] = Feeds(NodeFeed, FEATURE)
        self.endpoints = ExpectedEndpoints(state)
        """The expected endpoints per service, and what each attached agent was sent."""
        self.commit_latency = Hist(LATENCY)
        """How long the store takes to make a change durable."""
        self.commit_total_latency = Hist(LATENCY)
        """How long a whole commit takes: durable, applied, published, queued for agents."""
        self.alloc_writes = 0
        """Allocation records written to the store (each placement, report or health change
        that changed one is a record)."""
        self.listeners: list[Callable[[Changes], None]] = []
        """Called after every commit (the scheduler loop wakes on them)."""
        self.secrets_of: SecretsOf | None = None
        """The secrets a node's allocations read, sent with its desired set."""
        self.index = IndexWatch(state)
        """Wakes the HTTP API's blocking queries when the index moves."""

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
        self.alloc_writes += len(changes.put_allocs)
        touched = touched_nodes(self.state, changes) if self._feeds else {}
        self.state.apply(changes, index)
        if changes.events:
            self.events.publish(changes.events)
        for node_id, ids in touched.items():
            feed = self._feeds.get(node_id)
            if feed is not None:
                feed.touch(ids)
        if any(k.startswith(SECRET_META) for k in (*changes.meta, *changes.delete_meta)):
            for feed in self._feeds.values():  # those whose secrets did not change send nothing
                feed.secrets_changed()
        self.endpoints.track(changes)
        for listener in self.listeners:
            listener(changes)
        self.index.moved()
        self.commit_total_latency.observe(time.perf_counter() - t0)
        return index

    async def write(self, changes: Changes) -> int:
        async with self._lock:
            return await self.commit(changes)

    # --- agents' desired sets ------------------------------------------------------------------

    def attach(self, node: node_pb2.Node | str, wake: Callable[[], None]) -> NodeFeed:
        """Feed this node's stream (``next_desired`` says what to send: the whole set first)."""
        return self._feeds.attach(node, wake)

    def detach(self, feed: NodeFeed) -> None:
        self._feeds.detach(feed)

    # --- the expected endpoints ----------------------------------------------------------------

    def attach_endpoints(self, node: node_pb2.Node | str,
                         wake: Callable[[], None]) -> EndpointFeed:
        """Feed this node's stream the expected endpoints: ``wake`` is called when there is
        something to send, and ``next_endpoints`` says what (the whole set first)."""
        return self.endpoints.attach(node, wake)

    def detach_endpoints(self, feed: EndpointFeed) -> None:
        self.endpoints.detach(feed)

    def next_endpoints(self, feed: EndpointFeed) -> controller_pb2.ControllerMessage | None:
        """The message that brings the feed's agent's expected endpoints up to date (None:
        they are)."""
        return self.endpoints.next_message(feed)

    def expected_endpoints(self) -> controller_pb2.ExpectedEndpoints:
        """Every service with a port (published or not) with the allocations placed to run
        it and their nodes."""
        return self.endpoints.whole()

    def reset_endpoints(self) -> None:
        """The state was replaced (a new term): rebuild the expected endpoints from it, and
        send every attached agent the whole set again."""
        self.endpoints.reset()

    def connected(self, node_id: str) -> bool:
        return node_id in self._feeds

    def streams(self) -> int:
        """Agents holding a stream to this controller."""
        return len(self._feeds)

    def next_desired(self, feed: NodeFeed) -> controller_pb2.ControllerMessage | None:
        """The message that brings the feed's agent up to date (None: it is)."""
        return feed.next_message(self.state, self.secrets_of)

    def resend(self) -> None:
        """Send every connected agent its whole desired set and the expected endpoints again,
        changed or not (after a restore: a new store epoch)."""
        self.reset_endpoints()
        for feed in list(self._feeds.values()):
            feed.first = True
            feed.wake()
