"""The autoscaler's decisions, pure: from a group's recent load to its next count.

Target tracking, as Kubernetes' horizontal autoscaler does it: the count that
would bring the per-allocation metric to its target is
``ceil(count × current / target)``, within ``[min, max]``. Three brakes keep it
from flapping:

- a tolerance band: no change while the metric is within ±``tolerance`` of the
  target (hysteresis);
- a cooldown after every change (the new allocations need time to take load);
- scaling down follows the *highest* recommendation over the last
  ``stabilization`` seconds, so one quiet moment does not shed capacity that a
  busy moment just asked for; scaling up follows the latest one at once.

Metrics (per allocation): ``cpu`` (percent of the CPU the allocation asked
for), ``connections`` (active connections through the load balancer),
``requests`` (new connections per second through the load balancer).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from orch.jobspec.model import Scaling

METRICS = ("cpu", "connections", "requests")


@dataclass(frozen=True, slots=True, kw_only=True)
class AutoscalerConfig:
    tolerance: float = 0.1
    """No change while the metric is within this fraction of the target."""
    stabilization: float = 300.0
    """Seconds of recommendations a scale-down looks back over (it takes their maximum)."""
    max_step_up: float = 2.0
    """At most this factor more allocations in one step."""
    interval: float = 15.0
    """Seconds between evaluations."""


@dataclass(frozen=True, slots=True)
class Decision:
    count: int
    reason: str


@dataclass(slots=True)
class GroupScaler:
    """The memory one group's autoscaler needs between evaluations."""

    policy: Scaling
    cfg: AutoscalerConfig = field(default_factory=AutoscalerConfig)
    last_change: float = -math.inf
    recommendations: deque[tuple[float, int]] = field(default_factory=deque)
    last_reason: str = ""

    def decide(self, count: int, value: float | None, now: float) -> Decision | None:
        """The next count for a group of ``count`` allocations whose metric is ``value``
        (per allocation), or None to leave it. ``value`` None: no data (no change)."""
        p, cfg = self.policy, self.cfg
        lo, hi = max(0, p.min), max(p.min, p.max)
        if count < lo or count > hi:  # outside the bounds (someone scaled by hand): clamp
            return self._change(min(max(count, lo), hi), count, now,
                                f"count {count} outside [{lo}, {hi}]")
        if value is None or p.target <= 0:
            self.last_reason = f"no {p.metric} data yet"
            return None
        ratio = value / p.target
        within = abs(ratio - 1) <= cfg.tolerance or count == 0
        want = count if within else math.ceil(count * ratio - 1e-9)
        want = min(max(want, lo), hi, max(count + 1, math.floor(count * cfg.max_step_up)))
        self.recommendations.append((now, want))
        while self.recommendations and now - self.recommendations[0][0] > cfg.stabilization:
            self.recommendations.popleft()
        if want < count:  # scale down only as far as every recent recommendation agrees
            want = max(w for _, w in self.recommendations)
        what = f"{p.metric} {value:.3g} per allocation, target {p.target:g}"
        if want == count:
            self.last_reason = f"{what}: {count} is right"
            return None
        if now - self.last_change < p.cooldown:
            self.last_reason = (f"{what}: would scale to {want}, cooling down for "
                                f"{p.cooldown - (now - self.last_change):.0f}s")
            return None
        return self._change(want, count, now, what)

    def _change(self, want: int, count: int, now: float, why: str) -> Decision:
        self.last_change = now
        self.last_reason = f"{why}: {count} -> {want}"
        return Decision(want, f"autoscaler: {self.last_reason}")
