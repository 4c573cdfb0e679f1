"""Agents' streams of a set sent as changes (desired sets, expected endpoints): each
connected agent has a feed that says what it was last sent; a stream starts with the
whole set, and an agent that registered the set's feature is sent changes after it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from orch.v1 import node_pb2


class Feed:
    """One connected agent's position in a set."""

    __slots__ = ("changes", "first", "node_id", "version", "wake")

    def __init__(self, node_id: str, wake: Callable[[], None], *, changes: bool) -> None:
        self.node_id = node_id
        self.wake = wake
        """Called when there is something to send (the stream then asks for it)."""
        self.changes = changes
        """The agent takes changes; otherwise it is sent whole sets."""
        self.first = True
        """Nothing sent yet (or the state was replaced): the next message is the whole set."""
        self.version = 0
        """The version of the last message sent."""


F = TypeVar("F", bound=Feed)


class Feeds(dict[str, F], Generic[F]):
    """The feeds of the connected agents (node id -> feed), one kind of set."""

    def __init__(self, make: Callable[..., F], feature: str) -> None:
        super().__init__()
        self._make = make
        self._feature = feature

    def attach(self, node: node_pb2.Node | str, wake: Callable[[], None]) -> F:
        """Feed this node's stream: ``wake`` is called when there is something to send (the
        whole set first). A node given by id only takes whole sets."""
        node_id = node if isinstance(node, str) else node.id
        changes = not isinstance(node, str) and self._feature in node.features
        feed = self[node_id] = self._make(node_id, wake, changes=changes)
        wake()
        return feed

    def detach(self, feed: F) -> None:
        if self.get(feed.node_id) is feed:
            del self[feed.node_id]
