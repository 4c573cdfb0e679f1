"""Restart policy per task (pure): what to do when a task exits or cannot start.

The rules are Nomad's. A window of ``interval`` seconds opens at the first
exit; within it, up to ``attempts`` restarts are allowed, each after ``delay``
seconds. When the attempts are spent, mode ``fail`` gives up (the task fails
and the controller may reschedule the allocation elsewhere) and mode ``delay``
waits for the window to end, then starts counting again. A batch task that
exits with code 0 is complete and never restarted; a service or system task is
restarted whatever its exit code, since it is meant to run forever.

No clock and no randomness of its own: the time comes in as ``now`` and the
jitter (up to 25 % of the delay, as Nomad adds) from a handed ``random.Random``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from orch.jobspec.model import RestartPolicy

Action = Literal["restart", "fail", "complete"]

JITTER = 0.25
"""The largest random extra wait, as a fraction of the delay."""


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    delay: float = 0.0
    """Seconds to wait before the restart (action ``restart`` only)."""
    reason: str = ""
    """A sentence for the task's events: why this action."""


def human_duration(seconds: float) -> str:
    """``90`` → ``1m30s``, ``0.5`` → ``500ms`` (as Go prints durations, which Nomad users know)."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = round(seconds)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    out = (f"{h}h" if h else "") + (f"{m}m" if h or m else "") + f"{s}s"
    return out


class RestartTracker:
    """Counts the restarts of one task and decides about the next one."""

    def __init__(self, policy: RestartPolicy, job_type: str = "service",
                 rng: random.Random | None = None) -> None:
        self.policy = policy
        self.job_type = job_type
        self._rng = rng
        self._window_start: float | None = None
        self._count = 0
        self.restarts = 0
        """Restarts decided so far, over the task's whole life (TaskState.restarts)."""

    def on_exit(self, exit_code: int, now: float, *, oom_killed: bool = False) -> Decision:
        """The task's main process exited with ``exit_code`` (not because orch stopped it)."""
        if exit_code == 0 and not oom_killed and self.job_type == "batch":
            return Decision("complete", reason="Task completed successfully")
        what = "Task was killed for using more memory than its limit" if oom_killed else (
            f"Exit code {exit_code}")
        return self._next(now, what)

    def on_unhealthy(self, reason: str, now: float) -> Decision:
        """A health check kept failing (``check_restart``): a failure like an exit, counted
        by the same policy (Nomad counts these restarts against it too)."""
        return self._next(now, reason)

    def on_start_error(self, message: str, now: float, *, recoverable: bool) -> Decision:
        """Starting the task failed; only recoverable errors are worth another try."""
        if not recoverable:
            return Decision("fail", reason=f"Error was unrecoverable: {message}")
        return self._next(now, message)

    def _next(self, now: float, what: str) -> Decision:
        p = self.policy
        if self._window_start is None or now > self._window_start + p.interval:
            self._window_start, self._count = now, 0
        self._count += 1
        if self._count <= p.attempts:
            self.restarts += 1
            delay = self._jittered(p.delay)
            return Decision("restart", delay,
                            f"{what}: restarting in {human_duration(delay)}")
        if p.mode == "delay":
            self.restarts += 1
            wait = max(self._window_start + p.interval - now, p.delay)
            return Decision("restart", wait,
                            f"{what}: exceeded {p.attempts} attempts in "
                            f"{human_duration(p.interval)}; mode is delay, restarting in "
                            f"{human_duration(wait)}")
        return Decision("fail", reason=(
            f"{what}: exceeded allowed attempts {p.attempts} in interval "
            f"{human_duration(p.interval)} and mode is \"fail\""))

    def _jittered(self, delay: float) -> float:
        if self._rng is None or delay <= 0:
            return delay
        return delay + delay * JITTER * self._rng.random()
