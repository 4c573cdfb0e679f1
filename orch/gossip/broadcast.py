"""The queue of updates waiting to be gossiped (memberlist's TransmitLimitedQueue).

Each update is sent at most ``limit`` times; payloads take the least-sent
updates first and, among those, the newest. An update about a member replaces
older queued updates it makes obsolete (an alive or dead notice replaces any
queued alive, dead or suspect notice about the same member).

Node-state deltas and user events (the application's broadcasts: service
endpoints, tags, events) have the first claim on ``STATE_SHARE`` of every payload, so a storm of membership
notices under churn cannot starve them (memberlist gives its delegate's
broadcasts only what membership leaves over).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable

MEMBER = 0
"""Alive and dead notices: the newest replaces every older member notice."""
SUSPECT = 1
"""Suspect notices, one per accuser, so independent confirmations all travel."""
STATE = 2
"""Node-state deltas, one per version."""
USER = 3
"""User events, one per (Lamport time, name, payload)."""
APPLICATION = (STATE, USER)
"""The application's broadcasts: they have the first claim on ``STATE_SHARE``."""


class Broadcast:
    __slots__ = ("data", "id", "kind", "name", "refresh", "sub", "transmits")

    def __init__(self, name: str, kind: int, sub: object, data: bytes, id_: int,
                 refresh: Callable[[float], bytes] | None) -> None:
        self.name = name
        self.kind = kind
        self.sub = sub
        self.data = data
        self.id = id_
        self.transmits = 0
        self.refresh = refresh


STATE_SHARE = 0.5
"""Share of each payload that application broadcasts may claim before membership notices."""

_SMALLEST = 8
"""No encoded update is smaller: below this budget the payload is full."""


def _newest_first(b: Broadcast) -> int:
    return -b.id


class BroadcastQueue:
    __slots__ = ("_by_name", "_ids", "_tiers", "size")

    def __init__(self) -> None:
        self._tiers: list[list[Broadcast]] = [[]]
        self._by_name: dict[str, list[Broadcast]] = {}
        self._ids = itertools.count()
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def enqueue(self, name: str, kind: int, data: bytes, *, sub: object = None,
                refresh: Callable[[float], bytes] | None = None, full: bool = False) -> None:
        """Queue an encoded update about member ``name``, dropping what it makes obsolete.

        ``full``: a whole node state at version ``sub`` (an int), which makes every queued
        delta of an older version of ``name``'s state obsolete (without it, a member whose
        state was forged and reasserted again and again had one queued delta per version,
        hundreds, crowding every payload)."""
        same = self._by_name.get(name)
        if same:
            for old in list(same):
                if (kind == MEMBER and old.kind != STATE) or (old.kind == kind and old.sub == sub) \
                        or (full and old.kind == STATE and old.sub < sub):  # type: ignore[operator]
                    self._drop(old)
        b = Broadcast(name, kind, sub, data, next(self._ids), refresh)
        self._by_name.setdefault(name, []).append(b)
        bisect.insort(self._tiers[0], b, key=_newest_first)
        self.size += 1

    def drop_member(self, name: str, kinds: tuple[int, ...] = (MEMBER, SUSPECT)) -> None:
        for old in list(self._by_name.get(name, ())):
            if old.kind in kinds:
                self._drop(old)

    def _drop(self, b: Broadcast) -> None:
        self._tiers[b.transmits].remove(b)
        same = self._by_name[b.name]
        same.remove(b)
        if not same:
            del self._by_name[b.name]
        self.size -= 1

    def take(self, budget: int, overhead: int, limit: int, now: float) -> list[bytes]:
        """Encoded updates that fit in ``budget`` bytes (each costs its size + ``overhead``).

        Every update taken counts one transmission; those sent ``limit`` times leave.
        """
        if not self.size:
            return []
        out: list[bytes] = []
        picked: list[Broadcast] = []
        chosen: set[int] = set()

        def fill(room: int, only: tuple[int, ...] | None) -> int:
            for tier in self._tiers:
                for b in tier:
                    if (only is not None and b.kind not in only) or b.id in chosen:
                        continue
                    data = b.refresh(now) if b.refresh is not None else b.data
                    cost = len(data) + overhead
                    if cost <= room:
                        room -= cost
                        out.append(data)
                        picked.append(b)
                        chosen.add(b.id)
                        if room < _SMALLEST:
                            return room
            return room

        reserved = int(budget * STATE_SHARE)
        budget -= reserved - fill(reserved, APPLICATION)  # first, up to their share
        if budget >= _SMALLEST:
            fill(budget, None)
        for b in picked:
            self._tiers[b.transmits].remove(b)
            b.transmits += 1
            if b.transmits >= limit:
                same = self._by_name[b.name]
                same.remove(b)
                if not same:
                    del self._by_name[b.name]
                self.size -= 1
                continue
            if b.transmits == len(self._tiers):
                self._tiers.append([])
            bisect.insort(self._tiers[b.transmits], b, key=_newest_first)
        return out

    def prune(self, max_size: int) -> None:
        """Drop the most-sent, then oldest, updates until at most ``max_size`` remain."""
        for tier in reversed(self._tiers):
            while tier and self.size > max_size:
                self._drop(tier[-1])
            if self.size <= max_size:
                return

    def pending(self, name: str) -> int:
        """Queued updates about ``name`` (for tests and the leave wait)."""
        return len(self._by_name.get(name, ()))
