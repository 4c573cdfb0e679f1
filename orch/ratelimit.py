"""Token buckets (pure: the time is passed in), for every rate that others can push on:
asks and repairs in gossip, new UDP sessions, DNS queries and RPCs per source, user events.

A bucket holds at most ``burst`` tokens and gains ``rate`` a second; each unit of work
takes one, and work that finds none waits or is refused. ``Limiter`` keeps a bucket per
key (a client, a source address) in a table of bounded size, forgetting the key seen
longest ago first: a flood of new keys costs the table its oldest entries, never memory.
"""

from __future__ import annotations

from collections import OrderedDict


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` held; full at the start unless
    ``tokens`` says otherwise."""

    __slots__ = ("at", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float, tokens: float | None = None) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst if tokens is None else tokens
        self.at = now

    def fill(self, now: float) -> float:
        """Add what the rate gave since the last fill; the tokens held now."""
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        return self.tokens

    def take(self, now: float) -> bool:
        """Fill, then take a token if there is one: whether there was."""
        if self.fill(now) < 1:
            return False
        self.tokens -= 1
        return True

    def wait(self) -> float:
        """Seconds from the last fill until a token is there (0: one is)."""
        return max(0.0, (1 - self.tokens) / self.rate)


class Limiter:
    """A token bucket per key, in a table of at most ``keys``; the key seen longest ago
    gives way first. A ``rate`` of 0 or less allows everything."""

    def __init__(self, rate: float, burst: float, keys: int) -> None:
        if keys < 1:
            raise ValueError(f"a limiter keeps at least one key, got {keys}")
        self.rate, self.burst, self.keys = rate, float(burst), keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, key: str, now: float) -> float:
        """0 when ``key`` took a token at ``now``; else the seconds until it could (nothing
        taken)."""
        if self.rate <= 0:
            return 0.0
        bucket = self._buckets.pop(key, None) or TokenBucket(self.rate, self.burst, now)
        self._buckets[key] = bucket
        if len(self._buckets) > self.keys:
            self._buckets.popitem(last=False)
        return 0.0 if bucket.take(now) else bucket.wait()

    def __len__(self) -> int:
        return len(self._buckets)
