"""Health-check thresholds (pure)."""

from __future__ import annotations

from agent.runtime.health import CheckResult, CheckTracker, task_healthy
from orch.jobspec.model import Check

OK, BAD = CheckResult(True, "HTTP 200"), CheckResult(False, "HTTP 503")


def test_starts_pending_and_turns_passing_after_threshold() -> None:
    c = CheckTracker(Check(type="http", healthy_threshold=2, unhealthy_threshold=2))
    assert c.verdict == "pending"
    assert not c.healthy
    assert not c.record(OK)
    assert c.record(OK)
    assert c.healthy
    assert c.output == "HTTP 200"


def test_turns_failing_only_after_consecutive_failures() -> None:
    c = CheckTracker(Check(type="tcp", healthy_threshold=1, unhealthy_threshold=3))
    c.record(OK)
    assert not c.record(BAD)
    assert not c.record(BAD)
    assert not c.record(OK)  # the streak of failures is broken
    assert not c.record(BAD)
    assert not c.record(BAD)
    assert c.record(BAD)
    assert c.verdict == "failing"
    assert c.output == "HTTP 503"


def test_pending_check_can_fail_before_ever_passing() -> None:
    c = CheckTracker(Check(type="tcp", unhealthy_threshold=1))
    assert c.record(BAD)
    assert c.verdict == "failing"
    assert c.record(OK)
    assert c.healthy


def test_reset_forgets() -> None:
    c = CheckTracker(Check(type="tcp"))
    c.record(OK)
    c.reset()
    assert c.verdict == "pending"


def test_task_health_needs_running_and_every_check() -> None:
    a, b = CheckTracker(Check(type="tcp")), CheckTracker(Check(type="tcp"))
    a.record(OK)
    assert not task_healthy(True, [a, b])
    b.record(OK)
    assert task_healthy(True, [a, b])
    assert not task_healthy(False, [a, b])
    assert task_healthy(True, [])
