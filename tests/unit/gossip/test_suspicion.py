"""Lifeguard's formulas, checked against the values memberlist documents."""

from __future__ import annotations

import pytest

from orch.gossip.suspicion import (
    Awareness,
    Suspicion,
    min_suspicion_timeout,
    retransmit_limit,
    suspicion_timeout,
)


@pytest.mark.parametrize(("n", "expected"), [(1, 4.0), (5, 4.0), (10, 4.0), (100, 8.0), (1000, 12.0)])
def test_min_timeout_grows_with_log10_n(n: int, expected: float) -> None:
    assert min_suspicion_timeout(4, n, 1.0) == pytest.approx(expected)


@pytest.mark.parametrize(("n", "expected"), [(1, 4), (9, 4), (10, 8), (99, 8), (100, 12), (1000, 16)])
def test_retransmit_limit(n: int, expected: int) -> None:
    assert retransmit_limit(4, n) == expected


@pytest.mark.parametrize(("confirmations", "expected"), [(0, 30.0), (1, 16.0), (2, 7.81), (3, 2.0), (4, 2.0)])
def test_timeout_shrinks_with_confirmations(confirmations: int, expected: float) -> None:
    # k = 3 expected confirmations, min 2 s, max 30 s (memberlist's suspicion_test table)
    assert suspicion_timeout(confirmations, 3, 2.0, 30.0) == pytest.approx(expected, abs=0.01)


def test_no_expected_confirmations_means_the_minimum() -> None:
    assert suspicion_timeout(0, 0, 2.0, 30.0) == 2.0


def test_suspicion_counts_each_accuser_once_and_not_the_first() -> None:
    s = Suspicion(start=10.0, sender="a", incarnation=1, k=2, lo=4.0, hi=24.0)
    assert s.deadline() == 34.0
    assert not s.confirm("a")  # the first accuser is not a confirmation
    assert s.confirm("b")
    assert not s.confirm("b")
    assert s.confirm("c")
    assert not s.confirm("d")  # k reached: no more needed
    assert s.confirmations == 2
    assert s.deadline() == 14.0


def test_awareness_is_bounded_and_scales_timeouts() -> None:
    a = Awareness(8)
    a.apply(-1)
    assert a.score == 0
    a.apply(3)
    assert a.scale(0.5) == 2.0
    a.apply(100)
    assert a.score == 7
    assert a.scale(1.0) == 8.0
