"""The expected endpoints, kept per service, and what each connected agent is sent of them.

The expected endpoints are, for every service with a port (published or not), the
allocations placed to run it and the node each runs on: what an agent's load balancer,
DNS server and templates may take from gossip. ``ExpectedEndpoints`` keeps them per service
key (namespace, job, group, service): a commit marks the keys whose allocations it touched
(``track``, O(changes)); a marked service is built again once, when a stream first asks for
it, whatever number of agents then get it. Each connected agent has an ``EndpointFeed``: its
stream first gets the whole set (``ExpectedEndpoints``), then, when the agent registered
``endpoint-changes``, only the services that changed since its last message
(``ExpectedEndpointChanges``: those changed, whole, and the keys that left), naming the
version they apply to. Marks that pile up while a stream is busy go out as one message, so a
feed holds at most one mark per service. An agent without the feature gets the whole set
again (built once for all of them) whenever it changed. After the state is replaced (a new
term, a restore) every feed starts again with a whole set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from controller.feeds import Feed, Feeds
from controller.state import RUN, ClusterState
from controller.store.base import Changes
from orch.v1 import controller_pb2, node_pb2
from orch.vocab import ENDPOINT_CHANGES, namespace_of

FEATURE = ENDPOINT_CHANGES

ServiceKey = tuple[str, str, str, str]
"""(namespace, job, group, service)."""
Published = tuple[ServiceKey, int, controller_pb2.ExpectedService,
                  controller_pb2.ExpectedEndpoint]
"""One service with a port an allocation serves: its key, the allocation's job version, the
service's spec (without endpoints) and the allocation's endpoint."""


class EndpointFeed(Feed):
    """One connected agent: what it was sent of the expected endpoints (changes: as
    ExpectedEndpointChanges) and which services changed since."""

    __slots__ = ("pending",)

    def __init__(self, node_id: str, wake: Callable[[], None], *, changes: bool) -> None:
        super().__init__(node_id, wake, changes=changes)
        self.pending: set[ServiceKey] = set()
        """Services changed since the last message (at most one mark per service)."""

    def touch(self, keys: Iterable[ServiceKey]) -> None:
        self.pending.update(keys)
        self.wake()


class ExpectedEndpoints:
    """The expected endpoints of a cluster's state, per service, and the agents' feeds."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self.feeds: Feeds[EndpointFeed] = Feeds(EndpointFeed, FEATURE)
        self._published: dict[str, list[Published]] = {}
        """Per allocation placed to run: the services with a port it serves."""
        self._by_key: dict[ServiceKey, set[str]] = {}
        """Service key -> the allocations that serve it."""
        self._services: dict[ServiceKey, controller_pb2.ExpectedService] = {}
        """The services built (with their endpoints), by key."""
        self._stale: set[ServiceKey] = set()
        """Services changed since they were last built."""
        self._whole: controller_pb2.ExpectedEndpoints | None = None
        """The whole set last built (None: to be built again)."""
        self._delta: tuple[tuple[int, int, frozenset[ServiceKey]],
                           controller_pb2.ControllerMessage] | None = None
        """The last changes built ((base, version, keys), message): streams that were sent the
        same version and missed the same services share it."""
        self._scanned = False
        """The state was read whole (done when a whole set is first asked for)."""
        self.built = 0
        """Services built, since the controller started (each once per change)."""
        self.sent = {"whole": 0, "changes": 0}
        """Messages of the expected endpoints sent to agents, whole sets and changes."""

    # --- feeds -----------------------------------------------------------------------------

    def attach(self, node: node_pb2.Node | str, wake: Callable[[], None]) -> EndpointFeed:
        """Feed this node's stream (``next_message`` says what to send: the whole set first)."""
        return self.feeds.attach(node, wake)

    def detach(self, feed: EndpointFeed) -> None:
        self.feeds.detach(feed)

    def next_message(self, feed: EndpointFeed) -> controller_pb2.ControllerMessage | None:
        """What to send the feed's agent now (None: it holds the current set)."""
        if feed.first or not feed.changes:
            if not feed.first and not feed.pending:
                return None
            whole = self.whole()
            feed.first = False
            feed.pending.clear()
            feed.version = whole.version
            self.sent["whole"] += 1
            return controller_pb2.ControllerMessage(endpoints=whole)
        if not feed.pending:
            return None
        keys = frozenset(feed.pending)
        feed.pending.clear()
        version = max(feed.version, self.state.index)
        ident = (feed.version, version, keys)
        if self._delta is None or self._delta[0] != ident:
            changes = controller_pb2.ExpectedEndpointChanges(version=version,
                                                             base_version=feed.version)
            for key in sorted(keys):
                svc = self.service(key)
                if svc is not None:
                    changes.services.append(svc)
                else:
                    changes.removed.add(namespace=key[0], job=key[1], group=key[2],
                                        name=key[3])
            self._delta = (ident, controller_pb2.ControllerMessage(endpoint_changes=changes))
        feed.version = version
        self.sent["changes"] += 1
        return self._delta[1]

    # --- the set ---------------------------------------------------------------------------

    def whole(self) -> controller_pb2.ExpectedEndpoints:
        """Every service with a port (published or not) with the allocations placed to run
        it and their nodes (built once per change, shared by every stream)."""
        if self._whole is None:
            self._scan()
            for key in list(self._stale):
                self.service(key)
            out = controller_pb2.ExpectedEndpoints(version=self.state.index)
            out.services.extend(self._services[k] for k in sorted(self._services))
            self._whole = out
        return self._whole

    def service(self, key: ServiceKey) -> controller_pb2.ExpectedService | None:
        """One service, with its endpoints (None: no allocation serves it now)."""
        if key in self._stale:
            self._stale.discard(key)
            self._services.pop(key, None)
            alloc_ids = self._by_key.get(key)
            if alloc_ids:
                newest: tuple[int, controller_pb2.ExpectedService] | None = None
                eps: list[controller_pb2.ExpectedEndpoint] = []
                for alloc_id in sorted(alloc_ids):
                    for k, version, spec, ep in self._published[alloc_id]:
                        if k == key:
                            if newest is None or newest[0] < version:
                                newest = (version, spec)  # the newest version's spec decides
                            eps.append(ep)
                if newest is not None:
                    svc = controller_pb2.ExpectedService()
                    svc.CopyFrom(newest[1])
                    svc.endpoints.extend(eps)
                    self._services[key] = svc
                    self.built += 1
        return self._services.get(key)

    def track(self, changes: Changes) -> None:
        """Take a commit (after the state applied it): mark the services it changed and wake
        the feeds that hold them."""
        if not self._scanned:
            return  # nobody was sent anything yet: the first whole set reads the state
        keys: set[ServiceKey] = set()
        for alloc_id in changes.delete_allocs:
            keys |= self._record(alloc_id)
        for a in changes.put_allocs:
            keys |= self._record(a.id)
        for n in changes.put_nodes:  # its name may have changed
            for a in self.state.allocs_on_node(n.id):
                keys |= self._record(a.id)
        if not keys:
            return
        self._stale |= keys
        self._whole = None
        for feed in list(self.feeds.values()):
            feed.touch(keys)

    def reset(self) -> None:
        """The state was replaced (a new term, a restore): read it again, and send every
        feed a whole set."""
        self._published.clear()
        self._by_key.clear()
        self._services.clear()
        self._stale.clear()
        self._whole = self._delta = None
        self._scanned = False
        for feed in list(self.feeds.values()):
            feed.first = True
            feed.pending.clear()
            feed.wake()

    def _scan(self) -> None:
        if not self._scanned:
            self._scanned = True
            for alloc_id in list(self.state.allocs):
                self._stale |= self._record(alloc_id)

    def _record(self, alloc_id: str) -> set[ServiceKey]:
        """Record what the allocation (as the state holds it now) serves; the keys of the
        services that changed by it."""
        cur = self.state.allocs.get(alloc_id)
        entries: list[Published] = []
        group = self.state.group_spec(cur) if cur is not None and cur.desired_status == RUN \
            else None
        node = self.state.nodes.get(cur.node_id) if cur is not None else None
        if cur is not None and group is not None and node is not None:
            for svc in group.services:
                if not svc.port:  # no port, no endpoint
                    continue
                key = (namespace_of(cur.namespace), cur.job, cur.group, svc.name)
                spec = controller_pb2.ExpectedService(
                    namespace=key[0], job=key[1], group=key[2], name=key[3],
                    published_port=svc.published_port, protocol=svc.protocol,
                    lb_policy=svc.lb_policy, proxy_protocol=svc.proxy_protocol)
                ep = controller_pb2.ExpectedEndpoint(alloc_id=cur.id, node=node.name,
                                                     port=cur.ports.get(svc.port, 0))
                entries.append((key, cur.job_version, spec, ep))
        old = self._published.get(alloc_id, [])
        if old == entries:
            return set()
        for key, *_ in old:
            held = self._by_key.get(key)
            if held is not None:
                held.discard(alloc_id)
                if not held:
                    del self._by_key[key]
        if entries:
            self._published[alloc_id] = entries
            for key, *_ in entries:
                self._by_key.setdefault(key, set()).add(alloc_id)
        else:
            self._published.pop(alloc_id, None)
        return {e[0] for e in old} | {e[0] for e in entries}
