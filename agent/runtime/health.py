"""Health-check verdicts (pure): consecutive results against thresholds.

A check starts ``pending`` (no verdict: not healthy, as a kubelet readiness
probe starts unready). ``healthy_threshold`` passes in a row make it
``passing``; ``unhealthy_threshold`` failures in a row make it ``failing``.
One result against the trend resets the other counter, so a flapping check
does not flip its verdict on every probe. A task is healthy when it runs and
all its checks pass; an allocation is healthy when all its tasks are.
The probes themselves (tcp, http, exec) live in ``probes``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from orch.jobspec.model import Check

Verdict = Literal["pending", "passing", "failing"]


@dataclass(frozen=True, slots=True)
class CheckResult:
    passed: bool
    output: str = ""
    """What the probe saw (``HTTP 503``, ``connection refused``, the exec output)."""
    warning: bool = False
    """Not passed, but only a warning (as Consul grades them: HTTP 429, an exec check's exit
    code 1): it fails the check, and counts for ``check_restart`` unless it ignores warnings."""


class CheckTracker:
    """The verdict of one check, fed with probe results in order."""

    def __init__(self, check: Check) -> None:
        self.check = check
        self.verdict: Verdict = "pending"
        self.output = ""
        self._passes = 0
        self._failures = 0
        self.passed_total = 0
        """Every probe that passed, over the tracker's life (for metrics)."""
        self.failed_total = 0
        self.restart_failures = 0
        """Consecutive results that count for ``check_restart`` (since the grace ended)."""

    @property
    def healthy(self) -> bool:
        return self.verdict == "passing"

    def record(self, result: CheckResult) -> bool:
        """Take one probe result; return True when the verdict changed."""
        self.output = result.output
        if result.passed:
            self.passed_total += 1
        else:
            self.failed_total += 1
        if result.passed:
            self._passes, self._failures = self._passes + 1, 0
            if self.verdict != "passing" and self._passes >= self.check.healthy_threshold:
                self.verdict = "passing"
                return True
        else:
            self._passes, self._failures = 0, self._failures + 1
            if self.verdict != "failing" and self._failures >= self.check.unhealthy_threshold:
                self.verdict = "failing"
                return True
        return False

    def reset(self) -> None:
        """Forget every result (the task restarted): back to ``pending``."""
        self.verdict, self.output, self._passes, self._failures = "pending", "", 0, 0
        self.restart_failures = 0

    def counts_for_restart(self, result: CheckResult, since_start: float) -> bool:
        """Take one result for ``check_restart``; True when the task must restart now (the
        check failed ``limit`` times in a row after the grace)."""
        policy = self.check.check_restart
        if policy is None or policy.limit <= 0 or since_start < policy.grace:
            return False
        if result.passed or (result.warning and policy.ignore_warnings):
            self.restart_failures = 0
            return False
        self.restart_failures += 1
        return self.restart_failures >= policy.limit


def task_healthy(running: bool, checks: Iterable[CheckTracker]) -> bool:
    """A task is healthy when it runs and every one of its checks passes."""
    return running and all(c.healthy for c in checks)
