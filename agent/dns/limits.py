"""Per-source rate limits (pure: the time is given): a token bucket per source address,
in a table of bounded size whose least recently seen source is forgotten first."""

from __future__ import annotations

from collections import OrderedDict


class SourceLimiter:
    def __init__(self, rate: float, burst: int, sources: int) -> None:
        self.rate, self.burst, self.sources = rate, float(burst), sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        """source -> (tokens, when last filled)."""

    def allow(self, source: str, now: float) -> bool:
        """Whether ``source`` may send one more query at ``now`` (and take its token)."""
        tokens, then = self._buckets.pop(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        ok = tokens >= 1.0
        self._buckets[source] = (tokens - 1.0 if ok else tokens, now)
        if len(self._buckets) > self.sources:
            self._buckets.popitem(last=False)
        return ok

    def __len__(self) -> int:
        return len(self._buckets)
