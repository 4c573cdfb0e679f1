"""The node's desired set, as the controller's messages make it (pure).

A stream to the leader starts with the node's full desired set
(``DesiredAllocations``); after that the controller sends only what changed
(``DesiredChanges``: allocations added or changed, ids removed, secrets), each
naming the version it applies to. ``DesiredSet`` holds the result, so the agent
still converges to the whole set every time, as it would to a full one; it also
says what the last message changed, for a consumer that only needs that (the node
simulator of thousands of nodes). ::

    desired = DesiredSet()
    desired.replace(msg.desired)        # a full set
    desired.change(msg.changes)         # ProtocolError: not a change of the set held
    for alloc in desired.allocations: ...
"""

from __future__ import annotations

from collections.abc import Collection

from orch.errors import ProtocolError
from orch.v1 import controller_pb2, node_pb2
from orch.vocab import DESIRED_CHANGES

FEATURE = DESIRED_CHANGES


class DesiredSet:
    """Every allocation the node should run and the secrets they read, at ``version``."""

    __slots__ = ("_allocs", "_secrets", "changed", "cluster_id", "epoch", "full", "removed",
                 "version")

    def __init__(self) -> None:
        self.version = 0
        self.cluster_id = ""
        """The sending controller's cluster (from the stream's full set)."""
        self.epoch = 0
        """The store's lineage the set belongs to (from the stream's full set)."""
        self._allocs: dict[str, node_pb2.Allocation] = {}
        self._secrets: dict[tuple[str, str], controller_pb2.SecretValue] = {}
        self.full = True
        """The last message was a full set (``changed`` then names every allocation)."""
        self.changed: frozenset[str] = frozenset()
        """Ids of the allocations the last message added or changed."""
        self.removed: frozenset[str] = frozenset()
        """Ids of the allocations the last message took out of the set."""

    @property
    def allocations(self) -> Collection[node_pb2.Allocation]:
        return self._allocs.values()

    @property
    def secrets(self) -> list[controller_pb2.SecretValue]:
        """The latest value of every secret the allocations read, by namespace and name."""
        return [self._secrets[k] for k in sorted(self._secrets)]

    def get(self, alloc_id: str) -> node_pb2.Allocation | None:
        return self._allocs.get(alloc_id)

    def __len__(self) -> int:
        return len(self._allocs)

    def replace(self, msg: controller_pb2.DesiredAllocations) -> None:
        """Become the full set ``msg`` carries."""
        before = set(self._allocs)
        self._allocs = {a.id: a for a in msg.allocations}
        self._secrets = {(s.namespace, s.name): s for s in msg.secrets}
        self.version = msg.version
        self.cluster_id, self.epoch = msg.cluster_id, msg.epoch
        self.full = True
        self.changed = frozenset(self._allocs)
        self.removed = frozenset(before - self._allocs.keys())

    def change(self, msg: controller_pb2.DesiredChanges) -> None:
        """Apply changes to the set held; ProtocolError (and nothing changed) when they are
        changes of another version."""
        if msg.base_version != self.version:
            raise ProtocolError(f"desired-set changes for version {msg.base_version}, but this "
                                f"node holds version {self.version}")
        removed = set()
        for alloc_id in msg.removed:
            if self._allocs.pop(alloc_id, None) is not None:
                removed.add(alloc_id)
        changed = set()
        for a in msg.allocations:
            self._allocs[a.id] = a
            changed.add(a.id)
            removed.discard(a.id)
        for s in msg.removed_secrets:
            self._secrets.pop((s.namespace, s.name), None)
        for s in msg.secrets:
            self._secrets[(s.namespace, s.name)] = s
        self.version = msg.version
        self.full = False
        self.changed = frozenset(changed)
        self.removed = frozenset(removed)

    def message(self) -> controller_pb2.DesiredAllocations:
        """The set as one full message (for tests and status pages)."""
        return controller_pb2.DesiredAllocations(
            version=self.version, allocations=list(self._allocs.values()), secrets=self.secrets,
            cluster_id=self.cluster_id, epoch=self.epoch)
