"""Whether an allocation is healthy for its deployment, judged on its node (pure).

As Nomad's clients do (their alloc health watcher), the agent times the group's update
block itself and reports a verdict with the allocation's status:

- ``healthy`` once every task has run, passing its checks, for ``min_healthy_time``
  without a break; a break (a task stops or restarts, a check fails) starts the time
  again, and a healthy allocation that breaks is no longer healthy at once;
- ``unhealthy`` while it is not healthy past ``healthy_deadline``, counted from when the
  agent received the allocation;
- ``pending`` before either.

An agent that restarts and adopts the tasks of an allocation the controller held healthy
(``trusted``) does not make it wait ``min_healthy_time`` again: it is healthy as soon as
its tasks run and pass their checks, unless a task stopped meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Health = Literal["pending", "healthy", "unhealthy"]


@dataclass(slots=True)
class HealthWatch:
    """One allocation's verdict, fed with what its tasks do (times in seconds, any clock)."""

    received_at: float
    """When the agent received the allocation (``healthy_deadline`` counts from here)."""
    trusted: bool = False
    """The controller held it healthy and this agent adopted its running tasks."""
    ok_since: float | None = None
    """Since when every task runs and passes its checks (None: not now)."""

    def observe(self, *, running: bool, ok: bool, now: float, min_healthy_time: float) -> None:
        """What the tasks do now: the allocation ``running`` (its client status), and ``ok``
        (running, every task passing its checks)."""
        if not running:
            self.trusted = False
        if not ok:
            self.ok_since = None
        elif self.ok_since is None:
            self.ok_since = now - min_healthy_time if self.trusted else now
            self.trusted = False

    def verdict(self, now: float, *, min_healthy_time: float,
                healthy_deadline: float) -> tuple[Health, float | None]:
        """The verdict now, and when it changes unless the tasks do (None: it does not)."""
        ready = None if self.ok_since is None else self.ok_since + min_healthy_time
        if ready is not None and now >= ready:
            return "healthy", None
        deadline = self.received_at + healthy_deadline
        if now >= deadline:
            return "unhealthy", ready
        return "pending", deadline if ready is None else min(ready, deadline)
