"""The connect-latency histogram: per-bucket counts, Prometheus' cumulative form, quantiles."""

from __future__ import annotations

from agent.lb.stats import Histogram


def test_buckets_cumulative_and_quantiles() -> None:
    h = Histogram(bounds=(0.001, 0.01, 0.1), counts=[0, 0, 0, 0])
    for v in (0.0005, 0.001, 0.005, 0.05, 0.05, 3.0):
        h.observe(v)
    assert h.counts == [2, 1, 2, 1]  # a value equal to a bound falls in that bound's bucket
    assert h.cumulative() == [(0.001, 2), (0.01, 3), (0.1, 5), (float("inf"), 6)]
    assert h.count == 6
    assert abs(h.sum - 3.1065) < 1e-9
    assert h.quantile(0.5) == 0.01
    assert h.quantile(0.99) == float("inf")
    c = h.copy()
    h.observe(0.0001)
    assert c.count == 6  # a snapshot does not move
