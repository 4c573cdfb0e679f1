"""Restart policy decisions (pure: time is passed in)."""

from __future__ import annotations

import random

from agent.runtime.restart import RestartTracker, human_duration
from orch.jobspec.model import RestartPolicy


def test_restarts_within_attempts_then_fails() -> None:
    t = RestartTracker(RestartPolicy(attempts=2, interval=60, delay=5, mode="fail"))
    first = t.on_exit(1, now=0)
    second = t.on_exit(1, now=10)
    third = t.on_exit(1, now=20)
    assert (first.action, first.delay) == ("restart", 5)
    assert second.action == "restart"
    assert third.action == "fail"
    assert "exceeded allowed attempts 2 in interval 1m0s" in third.reason
    assert t.restarts == 2


def test_window_resets_after_interval() -> None:
    t = RestartTracker(RestartPolicy(attempts=1, interval=60, delay=1, mode="fail"))
    assert t.on_exit(1, now=0).action == "restart"
    assert t.on_exit(1, now=61).action == "restart"  # a new window opened at 61
    assert t.on_exit(1, now=100).action == "fail"


def test_delay_mode_waits_out_the_interval() -> None:
    t = RestartTracker(RestartPolicy(attempts=1, interval=60, delay=2, mode="delay"))
    assert t.on_exit(1, now=0).delay == 2
    d = t.on_exit(1, now=10)
    assert d.action == "restart"
    assert d.delay == 50  # until the window that opened at 0 ends
    assert "mode is delay" in d.reason
    # the next exit after the wait opens a new window
    assert t.on_exit(1, now=61).delay == 2


def test_zero_attempts_fails_at_once() -> None:
    t = RestartTracker(RestartPolicy(attempts=0, interval=60, delay=1, mode="fail"))
    assert t.on_exit(0, now=0).action == "fail"


def test_batch_success_completes_and_service_success_restarts() -> None:
    policy = RestartPolicy(attempts=3, interval=60, delay=1)
    assert RestartTracker(policy, "batch").on_exit(0, now=0).action == "complete"
    assert RestartTracker(policy, "batch").on_exit(2, now=0).action == "restart"
    assert RestartTracker(policy, "service").on_exit(0, now=0).action == "restart"
    assert RestartTracker(policy, "batch").on_exit(0, now=0, oom_killed=True).action == "restart"


def test_start_errors() -> None:
    t = RestartTracker(RestartPolicy(attempts=1, interval=60, delay=3))
    bad = t.on_start_error("image x is not present", now=0, recoverable=False)
    assert bad.action == "fail"
    assert "unrecoverable: image x is not present" in bad.reason
    assert t.on_start_error("engine busy", now=0, recoverable=True).action == "restart"
    assert t.on_start_error("engine busy", now=1, recoverable=True).action == "fail"


def test_jitter_comes_from_the_handed_random_source() -> None:
    policy = RestartPolicy(attempts=5, interval=600, delay=10)
    a = RestartTracker(policy, rng=random.Random(7))
    b = RestartTracker(policy, rng=random.Random(7))
    da, db = a.on_exit(1, now=0).delay, b.on_exit(1, now=0).delay
    assert da == db
    assert 10 <= da <= 12.5


def test_human_duration() -> None:
    assert human_duration(0.25) == "250ms"
    assert human_duration(90) == "1m30s"
    assert human_duration(1800) == "30m0s"
    assert human_duration(3661) == "1h1m1s"
