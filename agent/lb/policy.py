"""Balancing policies: which endpoint takes the next connection. Pure: no sockets, no clock,
randomness only from the ``random.Random`` they are handed.

A policy is told the service's whole endpoint set with ``reset`` (when it changes) and
asked to ``pick`` among the endpoints usable now (not ejected, not yet tried by this
connection, local ones first when preferred), a non-empty subset of that set.

round_robin  smooth weighted round robin (nginx's): over any window each endpoint gets its
             weight's share, interleaved rather than in bursts.
random       an endpoint drawn at random, weighted (the kernel data plane's ``numgen random``).
least_conn   fewest active connections per unit of weight; ties rotate.
p2c          the less loaded of two endpoints drawn at random (Mitzenmacher's power of two
             choices): near least_conn's balance without its herd behaviour across agents.
maglev       consistent hashing of the client address on a Maglev table: one client keeps
             its endpoint, and an endpoint change moves few clients. When the client's
             endpoint is not usable now, the next table slots are walked, so only its
             clients move, and they come back when it does.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol, TypeVar

from agent.lb.maglev import build_table, stable_hash
from agent.lb.model import POLICIES


class Member(Protocol):
    """What a policy reads of an endpoint."""

    @property
    def name(self) -> str: ...
    @property
    def weight(self) -> int: ...
    @property
    def active(self) -> int: ...


M = TypeVar("M", bound=Member)


class Policy(Protocol[M]):
    def reset(self, members: Sequence[M]) -> None:
        """The service's endpoint set is now ``members``."""

    def pick(self, usable: Sequence[M], client: str) -> M:
        """One of ``usable`` (non-empty, a subset of the members) for a client at ``client``."""


class RoundRobin(Policy[M]):
    def __init__(self) -> None:
        self._current: dict[str, int] = {}

    def reset(self, members: Sequence[M]) -> None:
        keep = {m.name for m in members}
        self._current = {k: v for k, v in self._current.items() if k in keep}

    def pick(self, usable: Sequence[M], client: str) -> M:
        if len(usable) == 1:
            return usable[0]
        current = self._current
        total = 0
        best = usable[0]
        best_weight = None
        for m in usable:
            w = m.weight
            cw = current.get(m.name, 0) + w
            current[m.name] = cw
            total += w
            if best_weight is None or cw > best_weight:
                best, best_weight = m, cw
        current[best.name] -= total
        return best


def _lighter(a: Member, b: Member) -> bool:
    """Whether ``a`` has fewer active connections per unit of weight than ``b``."""
    return a.active * max(b.weight, 1) < b.active * max(a.weight, 1)


class LeastConn(Policy[M]):
    def __init__(self) -> None:
        self._turn = 0

    def reset(self, members: Sequence[M]) -> None:
        pass

    def pick(self, usable: Sequence[M], client: str) -> M:
        n = len(usable)
        start = self._turn % n
        self._turn += 1
        best = usable[start]
        for i in range(1, n):
            m = usable[(start + i) % n]
            if _lighter(m, best):
                best = m
        return best


class PowerOfTwo(Policy[M]):
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def reset(self, members: Sequence[M]) -> None:
        pass

    def pick(self, usable: Sequence[M], client: str) -> M:
        n = len(usable)
        if n == 1:
            return usable[0]
        i = self._rng.randrange(n)
        j = self._rng.randrange(n - 1)
        if j >= i:
            j += 1
        a, b = usable[i], usable[j]
        return b if _lighter(b, a) else a


class Maglev(Policy[M]):
    def __init__(self, table_size: int = 65537) -> None:
        self.size = table_size
        self._members: list[M] = []
        self._table: list[int] = []

    def reset(self, members: Sequence[M]) -> None:
        ordered = sorted(members, key=lambda m: m.name)
        if [(m.name, m.weight) for m in ordered] != [(m.name, m.weight) for m in self._members]:
            self._table = build_table([m.name for m in ordered], [m.weight for m in ordered],
                                      self.size)
        self._members = ordered

    def slot(self, client: str) -> int:
        return stable_hash(client.encode(), b"maglev-client") % self.size

    def pick(self, usable: Sequence[M], client: str) -> M:
        members, table = self._members, self._table
        slot = self.slot(client)
        if len(usable) == len(members):
            return members[table[slot]]
        allowed = {m.name for m in usable}
        for step in range(self.size):
            m = members[table[(slot + step) % self.size]]
            if m.name in allowed:
                return m
        return usable[0]  # usable was not a subset of the members


class Random(Policy[M]):
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def reset(self, members: Sequence[M]) -> None:
        pass

    def pick(self, usable: Sequence[M], client: str) -> M:
        if len(usable) == 1:
            return usable[0]
        return self._rng.choices(usable, weights=[max(m.weight, 1) for m in usable])[0]


def make_policy(name: str, rng: random.Random, *, maglev_table_size: int = 65537) -> Policy[M]:
    """The policy called ``name`` (one of ``model.POLICIES``)."""
    if name == "round_robin":
        return RoundRobin()
    if name == "random":
        return Random(rng)
    if name == "least_conn":
        return LeastConn()
    if name == "p2c":
        return PowerOfTwo(rng)
    if name == "maglev":
        return Maglev(maglev_table_size)
    raise ValueError(f"unknown balancing policy {name!r}; one of {', '.join(POLICIES)}")
