"""Token buckets: one bucket, and a bounded table of them per key (pure: the time is given)."""

from __future__ import annotations

import pytest

from orch.ratelimit import Limiter, TokenBucket


def test_a_bucket_gives_its_burst_then_its_rate() -> None:
    b = TokenBucket(rate=10, burst=3, now=0.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.wait() == pytest.approx(0.1)
    assert not b.take(0.05)
    assert b.wait() == pytest.approx(0.05)
    assert b.take(0.1)
    assert b.fill(100.0) == 3  # never more than the burst


def test_a_bucket_may_start_short_of_its_burst() -> None:
    b = TokenBucket(rate=2, burst=4, now=0.0, tokens=0)
    assert not b.take(0.0)
    assert b.wait() == 0.5
    assert b.take(0.5)


def test_a_limiter_keeps_a_bucket_per_key_in_a_bounded_table() -> None:
    lim = Limiter(rate=10, burst=5, keys=2)
    assert [lim.take("a", 0.0) for _ in range(6)] == [0] * 5 + [pytest.approx(0.1)]
    assert lim.take("a", 0.1) == 0  # one token back after 0.1 s at 10/s
    assert lim.take("a", 0.1) > 0   # refused: nothing taken, the wait said
    assert lim.take("b", 0.1) == 0
    assert lim.take("c", 0.1) == 0
    assert len(lim) == 2  # "a" forgotten first: bounded whatever the keys
    assert lim.take("a", 0.1) == 0  # a forgotten key starts with a full bucket


def test_a_limiter_without_a_rate_allows_everything_and_keeps_nothing() -> None:
    lim = Limiter(rate=0, burst=0, keys=1)
    assert all(lim.take(f"k{i}", 0.0) == 0 for i in range(100))
    assert len(lim) == 0
    with pytest.raises(ValueError, match="at least one key"):
        Limiter(rate=1, burst=1, keys=0)
