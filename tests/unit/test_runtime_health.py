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


def test_check_restart_counts_failures_in_a_row_after_the_grace() -> None:
    from orch.jobspec.model import CheckRestart

    c = CheckTracker(Check(type="tcp", check_restart=CheckRestart(limit=3, grace=10.0)))
    assert not any(c.counts_for_restart(BAD, 5.0) for _ in range(10))  # within the grace
    assert not c.counts_for_restart(BAD, 11.0)
    assert not c.counts_for_restart(BAD, 12.0)
    assert not c.counts_for_restart(OK, 13.0)  # one pass starts the count again
    assert not c.counts_for_restart(BAD, 14.0)
    assert not c.counts_for_restart(BAD, 15.0)
    assert c.counts_for_restart(BAD, 16.0)
    c.reset()
    assert c.restart_failures == 0


def test_check_restart_warnings_count_unless_ignored() -> None:
    from agent.runtime.health import CheckResult
    from orch.jobspec.model import CheckRestart

    warn = CheckResult(False, "HTTP 429", warning=True)
    strict = CheckTracker(Check(type="http", check_restart=CheckRestart(limit=2, grace=0)))
    lenient = CheckTracker(Check(type="http", check_restart=CheckRestart(
        limit=2, grace=0, ignore_warnings=True)))
    assert [strict.counts_for_restart(warn, 1.0) for _ in range(2)] == [False, True]
    assert not any(lenient.counts_for_restart(warn, 1.0) for _ in range(5))
    assert not lenient.healthy  # ignored for restarts only: still not passing
    never = CheckTracker(Check(type="tcp"))
    assert not any(never.counts_for_restart(BAD, 100.0) for _ in range(50))
