"""A timer heap for the sans-IO core: the caller says what time it is."""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import Any

Timer = list[Any]
"""[when, seq, callback or None when cancelled, argument]."""


class Timers:
    __slots__ = ("_counter", "_heap")

    def __init__(self) -> None:
        self._heap: list[Timer] = []
        self._counter = itertools.count()

    def at(self, when: float, fn: Callable[[Any, float], None], arg: Any = None) -> Timer:
        """Call ``fn(arg, now)`` once ``run`` is given a time >= ``when``."""
        t: Timer = [when, next(self._counter), fn, arg]
        heapq.heappush(self._heap, t)
        return t

    @staticmethod
    def cancel(t: Timer | None) -> None:
        if t is not None:
            t[2] = None

    def next_deadline(self) -> float:
        heap = self._heap
        while heap and heap[0][2] is None:
            heapq.heappop(heap)
        return heap[0][0] if heap else math.inf

    def run(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            t = heapq.heappop(heap)
            fn = t[2]
            if fn is not None:
                t[2] = None
                fn(t[3], now)

    def __len__(self) -> int:
        return sum(1 for t in self._heap if t[2] is not None)
