"""The autoscaler on synthetic load curves: it follows the load, within bounds, and never flaps."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

from controller.autoscaler import GroupScaler
from orch.jobspec.model import Scaling

POLICY = Scaling(min=2, max=20, metric="cpu", target=60.0, cooldown=60.0, enabled=True)


def drive(demand: Callable[[float], float], *, start: int = 2, hours: float = 2.0,
          step: float = 15.0, policy: Scaling = POLICY) -> list[tuple[float, int]]:
    """Counts over time when the group's total load is ``demand(t)`` (in % of one allocation)
    and every evaluation's decision is applied at once."""
    scaler = GroupScaler(policy)
    count, history, t = start, [(0.0, start)], 0.0
    while t < hours * 3600:
        t += step
        d = scaler.decide(count, demand(t) / max(count, 1), t)
        if d is not None:
            count = d.count
            history.append((t, count))
    return history


def reversals(history: list[tuple[float, int]]) -> int:
    steps = [b[1] - a[1] for a, b in itertools.pairwise(history)]
    return sum(1 for x, y in itertools.pairwise(steps) if x * y < 0)


def test_steady_load_at_the_target_changes_nothing() -> None:
    assert drive(lambda t: 4 * 60.0, start=4) == [(0.0, 4)]


def test_noise_within_the_tolerance_changes_nothing() -> None:
    noisy = drive(lambda t: 4 * 60.0 * (1 + 0.08 * math.sin(t / 37)), start=4)
    assert noisy == [(0.0, 4)]


def test_a_ramp_is_followed_within_the_bounds() -> None:
    ramp = drive(lambda t: min(60.0 * t / 300, 60.0 * 30))  # up to 30 allocations' worth
    counts = [c for _, c in ramp]
    assert counts == sorted(counts)  # only up
    assert counts[-1] == 20  # capped at max
    times = [t for t, _ in ramp]
    assert all(b - a >= 60 for a, b in itertools.pairwise(times[1:]))  # cooldown


def test_a_spike_is_not_shed_before_the_stabilization_window() -> None:
    spike = drive(lambda t: 60.0 * (10 if 600 <= t < 900 else 2), hours=1.0)
    up = next(t for t, c in spike if c > 2)
    down = next(b[0] for a, b in itertools.pairwise(spike) if b[1] < a[1])
    assert 600 <= up < 700
    assert max(c for _, c in spike) == 10
    assert down >= 900 + 300 - 15  # the quiet must last the stabilization window first
    assert spike[-1][1] == 2


def test_oscillating_load_does_not_flap() -> None:
    # a load swinging between 3 and 9 allocations' worth every 4 minutes
    wave = drive(lambda t: 60.0 * (6 + 3 * math.sin(2 * math.pi * t / 240)), hours=2.0)
    assert reversals(wave) <= 2
    assert len(wave) <= 6
    assert max(c for _, c in wave) >= 9  # it does serve the peaks


def test_counts_set_by_hand_outside_the_bounds_come_back_inside() -> None:
    scaler = GroupScaler(POLICY)
    d = scaler.decide(30, 10.0, 0.0)
    assert d is not None
    assert d.count == 20
    assert "outside" in d.reason


def test_no_data_no_change() -> None:
    scaler = GroupScaler(POLICY)
    assert scaler.decide(4, None, 0.0) is None
    assert "no cpu data" in scaler.last_reason
