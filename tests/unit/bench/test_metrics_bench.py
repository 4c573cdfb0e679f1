"""The metrics benchmark's scenario arithmetic (pure; the harness's end-to-end run is in
tests/integration/test_metrics_bench.py)."""

from __future__ import annotations

from bench import metrics as bench


def test_allocations_spread_over_the_groups() -> None:
    assert bench.group_counts(200, 50) == [4] * 50
    assert bench.group_counts(7, 3) == [3, 2, 2]
