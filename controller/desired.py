"""What each connected agent is sent: its full desired set once, then what changes in it.

A node's desired set is every allocation placed on it that is desired to run, and the
latest value of every secret those allocations read. When its stream opens the node
is sent the whole set (with the cluster's id and the store's epoch, which an agent
checks before it applies anything; after a restore every stream starts again with a
whole set of the new epoch); from then on a commit only marks the allocations it touched on
that node (``NodeFeed.touch``, O(changes)), and when the stream is ready to send, the
feed turns the marks into one ``DesiredChanges`` message: the allocations added or
changed (a new job version, or now desired to run), the ids that left, the secrets
that are new or at a new version, the ones no longer read. Marks that pile up while
the stream is busy are sent as one message, so a feed holds at most one entry per
allocation of its node. An agent that does not list ``desired-changes`` among its
features gets the whole set again instead, whenever it differs from the last one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from sys import intern

from controller.feeds import Feed
from controller.state import RUN, ClusterState
from controller.store.base import CLUSTER_ID, EPOCH, Changes
from orch.v1 import controller_pb2, node_pb2
from orch.vocab import DESIRED_CHANGES

FEATURE = DESIRED_CHANGES

SecretsOf = Callable[[list[node_pb2.Allocation]], list[controller_pb2.SecretValue]]
"""The latest value of every secret some allocations read."""

_Sent = int
"""What the agent holds of one allocation of its set (all desired to run): its job version;
it is sent again when that changes."""


def _sent(a: node_pb2.Allocation) -> _Sent:
    return a.job_version


class NodeFeed(Feed):
    """One connected agent: what it was sent of its desired set (changes: as DesiredChanges)
    and which allocations may have changed since."""

    __slots__ = ("pending", "secret_allocs", "secrets_due", "sent", "sent_secrets")

    def __init__(self, node_id: str, wake: Callable[[], None], *, changes: bool) -> None:
        super().__init__(node_id, wake, changes=changes)
        self.sent: dict[str, _Sent] = {}
        """Allocation id -> what the agent holds of it (every allocation of its set)."""
        self.sent_secrets: dict[tuple[str, str], int] = {}
        """(namespace, name) -> the version of each secret the agent holds."""
        self.secret_allocs: set[str] = set()
        """Allocations of the set whose tasks read secrets."""
        self.pending: set[str] = set()
        """Allocations touched since the last message (in the set or not)."""
        self.secrets_due = False
        """A secret changed since the last message: look again at those the set reads."""

    def touch(self, alloc_ids: Iterable[str]) -> None:
        self.pending.update(alloc_ids)
        self.wake()

    def secrets_changed(self) -> None:
        if self.secret_allocs or not self.changes:
            self.secrets_due = True
            self.wake()

    def next_message(self, state: ClusterState,
                     secrets_of: SecretsOf | None) -> controller_pb2.ControllerMessage | None:
        """What to send the agent now (None: nothing changed for it)."""
        if self.first or not self.changes:
            return self._whole(state, secrets_of)
        if not self.pending and not self.secrets_due:
            return None
        puts: list[node_pb2.Allocation] = []
        removed: list[str] = []
        readers = len(self.secret_allocs)
        for alloc_id in self.pending:
            a = state.allocs.get(alloc_id)
            if a is not None and a.node_id == self.node_id and a.desired_status == RUN:
                now = _sent(a)
                if self.sent.get(alloc_id) != now:
                    self.sent[alloc_id] = now
                    puts.append(a)
                    if _reads_secrets(state, a):
                        self.secret_allocs.add(alloc_id)
                        readers = -1  # a new version may read other secrets
                    else:
                        self.secret_allocs.discard(alloc_id)
            elif self.sent.pop(alloc_id, None) is not None:
                removed.append(alloc_id)
                self.secret_allocs.discard(alloc_id)
        self.pending.clear()
        secrets: list[controller_pb2.SecretValue] = []
        removed_secrets: list[controller_pb2.SecretValue] = []
        if self.secrets_due or readers != len(self.secret_allocs):
            self.secrets_due = False
            secrets, removed_secrets = self._secret_changes(state, secrets_of)
        if not (puts or removed or secrets or removed_secrets):
            return None
        base, self.version = self.version, max(self.version, state.index)
        return controller_pb2.ControllerMessage(changes=controller_pb2.DesiredChanges(
            version=self.version, base_version=base, allocations=puts, removed=sorted(removed),
            secrets=secrets, removed_secrets=removed_secrets))

    def _whole(self, state: ClusterState,
               secrets_of: SecretsOf | None) -> controller_pb2.ControllerMessage | None:
        allocs = [a for a in state.allocs_on_node(self.node_id) if a.desired_status == RUN]
        reading = [a for a in allocs if _reads_secrets(state, a)]
        secrets = secrets_of(reading) if secrets_of is not None and reading else []
        sent = {intern(a.id): _sent(a) for a in allocs}
        sent_secrets = {(s.namespace, s.name): s.version for s in secrets}
        self.pending.clear()
        self.secrets_due = False
        if not self.first and sent == self.sent and sent_secrets == self.sent_secrets:
            return None  # the agent converges to the set: the same set is not worth sending
        self.first = False
        self.sent, self.sent_secrets = sent, sent_secrets
        self.secret_allocs = {a.id for a in reading}
        self.version = max(self.version, state.index)
        meta = state.meta
        return controller_pb2.ControllerMessage(desired=controller_pb2.DesiredAllocations(
            version=self.version, allocations=allocs, secrets=secrets,
            cluster_id=meta.get(CLUSTER_ID, ""), epoch=int(meta.get(EPOCH, "0") or 0)))

    def _secret_changes(self, state: ClusterState, secrets_of: SecretsOf | None) -> tuple[
            list[controller_pb2.SecretValue], list[controller_pb2.SecretValue]]:
        reading = [state.allocs[i] for i in sorted(self.secret_allocs) if i in state.allocs]
        now = secrets_of(reading) if secrets_of is not None and reading else []
        held = {(s.namespace, s.name): s.version for s in now}
        fresh = [s for s in now if self.sent_secrets.get((s.namespace, s.name)) != s.version]
        gone = [controller_pb2.SecretValue(namespace=ns, name=name)
                for ns, name in sorted(self.sent_secrets) if (ns, name) not in held]
        self.sent_secrets = held
        return fresh, gone


def touched_nodes(state: ClusterState, changes: Changes) -> dict[str, list[str]]:
    """Node id -> the allocations of ``changes`` that are, or were, on it (call it before the
    state applies ``changes``)."""
    out: dict[str, list[str]] = {}
    snap = state.snapshot
    for a in changes.put_allocs:
        alloc_id = intern(a.id)  # feeds keep it: one string per allocation, as the state
        out.setdefault(a.node_id, []).append(alloc_id)
        old = snap.alloc(alloc_id)
        if old is not None and old.node_id != a.node_id:
            out.setdefault(old.node_id, []).append(alloc_id)
    for alloc_id in changes.delete_allocs:
        old = snap.alloc(alloc_id)
        if old is not None:
            out.setdefault(old.node_id, []).append(alloc_id)
    return out


def _reads_secrets(state: ClusterState, a: node_pb2.Allocation) -> bool:
    group = state.group_spec(a)
    return group is not None and any(t.secret_names for t in group.tasks)
