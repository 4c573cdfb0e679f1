"""Datagrams waiting to be handled, queued per source and taken in turn (pure).

A member handles what arrives in bounded turns of its event loop (``transport``), so a
flood can neither hold the loop nor crowd out the other members: each source has its own
queue (``per_source`` datagrams at most: an honest member sends a few per probe interval),
sources are served one datagram each in turn, and when ``total`` datagrams wait the oldest
one of the source with the most waiting gives way (the flooder's, not the others').
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

S = TypeVar("S")


class Inbox(Generic[S]):
    __slots__ = ("_queues", "dropped", "per_source", "size", "total")

    def __init__(self, *, per_source: int, total: int) -> None:
        if not 1 <= per_source <= total:
            raise ValueError("an inbox needs 1 <= per_source <= total")
        self.per_source = per_source
        self.total = total
        self._queues: dict[S, deque[bytes]] = {}
        """Sources with datagrams waiting, in the order they are served next."""
        self.size = 0
        self.dropped = 0

    def __len__(self) -> int:
        return self.size

    def put(self, src: S, data: bytes) -> None:
        """Queue ``data`` from ``src``; a full queue drops (and counts) its oldest datagram."""
        q = self._queues.get(src)
        if q is None:
            q = self._queues[src] = deque()
        elif len(q) >= self.per_source:
            q.popleft()
            self.size -= 1
            self.dropped += 1
        q.append(data)
        self.size += 1
        if self.size > self.total:
            fattest = max(self._queues.values(), key=len)
            fattest.popleft()
            self.size -= 1
            self.dropped += 1

    def get(self) -> tuple[S, bytes] | None:
        """The next datagram, one source after another (None when nothing waits)."""
        for src, q in self._queues.items():
            data = q.popleft()
            del self._queues[src]
            if q:
                self._queues[src] = q  # to the back of the line
            self.size -= 1
            return src, data
        return None
