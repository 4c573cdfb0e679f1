"""Passive outlier detection on a fake clock: ejection, growth, probing back, the floor."""

from __future__ import annotations

from agent.lb.outlier import EJECTED, HEALTHY, PROBING, OutlierDetector


def detector(n: int = 4, **kw: float) -> OutlierDetector:
    d = OutlierDetector(consecutive_failures=3, base_ejection=5.0, max_ejection=40.0,
                        max_ejection_percent=int(kw.pop("pct", 50)))
    d.reset([f"e{i}" for i in range(n)])
    return d


def fail(d: OutlierDetector, name: str, now: float, times: int) -> list[bool]:
    return [d.failure(name, now) for _ in range(times)]


def test_consecutive_failures_eject_and_a_success_resets_the_streak() -> None:
    d = detector()
    assert fail(d, "e0", 0.0, 2) == [False, False]
    d.success("e0", 0.0)
    assert fail(d, "e0", 0.0, 2) == [False, False]
    assert d.failure("e0", 0.0) is True
    assert d.state("e0", 1.0) == EJECTED
    assert not d.usable("e0", 4.9)
    assert d.usable("e0", 5.0)


def test_ejection_time_doubles_up_to_the_maximum_while_probes_fail() -> None:
    d = detector()
    now = 0.0
    fail(d, "e0", now, 3)
    lengths = []
    for _ in range(5):
        until = d.records["e0"].ejected_until
        lengths.append(until - now)
        now = until
        assert d.state("e0", now) == PROBING
        assert d.failure("e0", now) is True  # one failed probe is enough
    assert lengths == [5.0, 10.0, 20.0, 40.0, 40.0]


def test_a_successful_probe_brings_it_back_and_time_forgives() -> None:
    d = detector()
    fail(d, "e0", 0.0, 3)
    d.success("e0", 5.0)
    assert d.state("e0", 5.0) == HEALTHY
    assert fail(d, "e0", 6.0, 3)[-1] is True  # streak needed again, ejected for 10 s
    assert d.records["e0"].ejected_until == 16.0
    d.success("e0", 16.0)
    fail(d, "e0", 16.0 + 40.0, 3)  # in for max_ejection: starts from the base again
    assert d.records["e0"].ejected_until == 56.0 + 5.0


def test_never_more_than_the_floor_allows_and_never_the_last() -> None:
    d = detector(4)
    assert fail(d, "e0", 0.0, 3)[-1] is True
    assert fail(d, "e1", 0.0, 3)[-1] is True  # 2 of 4 = 50 %
    assert fail(d, "e2", 0.0, 10) == [False] * 10
    assert d.ejected_count(1.0) == 2
    one = detector(1)
    assert fail(one, "e0", 0.0, 10) == [False] * 10
    two = detector(2, pct=10)  # at least one of two may go, whatever the percentage
    assert fail(two, "e0", 0.0, 3)[-1] is True
    assert fail(two, "e1", 0.0, 5) == [False] * 5


def test_reset_keeps_known_endpoints_and_forgets_gone_ones() -> None:
    d = detector(3)
    fail(d, "e0", 0.0, 3)
    d.reset(["e0", "e2", "e9"])
    assert d.state("e0", 1.0) == EJECTED
    assert set(d.records) == {"e0", "e2", "e9"}
    assert d.state("e9", 1.0) == HEALTHY
