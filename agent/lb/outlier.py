"""Passive outlier detection: endpoints whose connects keep failing are ejected for a while.

Pure: it is told of each connect's outcome with the current time and answers which
endpoints may be used. The rules (Envoy's consecutive-5xx detector, at L4):

- ``consecutive_failures`` failed connects in a row eject an endpoint for
  ``base × 2^(n-1)`` seconds, capped at ``max_ejection``, where n counts its ejections;
- when that time is over the endpoint is *probing*: it takes connections again, one
  failure ejects it again at once (for twice as long), one success makes it healthy;
- an endpoint that stayed in for ``max_ejection`` seconds after its last ejection has its
  count forgotten (the next ejection is short again);
- never more than ``max_ejection_percent`` of the endpoints are out at once (at least one
  of two or more, never the last): a failure that would pass that floor is counted, not
  acted on.
"""

from __future__ import annotations

from dataclasses import dataclass

HEALTHY, PROBING, EJECTED = "healthy", "probing", "ejected"


@dataclass(slots=True)
class OutlierState:
    """One endpoint's record."""

    failures: int = 0
    """Consecutive failed connects."""
    ejections: int = 0
    """Ejections since it last stayed in for ``max_ejection``."""
    ejected_until: float = 0.0
    """When its current or last ejection ends (0: never ejected)."""
    probing: bool = False
    """Back from an ejection and not yet connected successfully."""


class OutlierDetector:
    """The outlier records of one service's endpoints, keyed by endpoint name."""

    def __init__(self, *, consecutive_failures: int = 3, base_ejection: float = 5.0,
                 max_ejection: float = 300.0, max_ejection_percent: int = 50) -> None:
        self.consecutive_failures = consecutive_failures
        self.base_ejection = base_ejection
        self.max_ejection = max_ejection
        self.max_ejection_percent = max_ejection_percent
        self.records: dict[str, OutlierState] = {}
        self.total_ejections = 0

    def reset(self, names: list[str]) -> None:
        """The endpoint set is now ``names``: new ones start healthy, gone ones are forgotten."""
        self.records = {n: self.records.get(n) or OutlierState() for n in names}

    def state(self, name: str, now: float) -> str:
        rec = self.records.get(name)
        if rec is None or rec.ejected_until == 0.0:
            return HEALTHY
        if now < rec.ejected_until:
            return EJECTED
        return PROBING if rec.probing else HEALTHY

    def usable(self, name: str, now: float) -> bool:
        rec = self.records.get(name)
        return rec is None or now >= rec.ejected_until

    def ejected_count(self, now: float) -> int:
        return sum(1 for r in self.records.values() if now < r.ejected_until)

    def max_ejected(self) -> int:
        """How many endpoints may be out at once."""
        n = len(self.records)
        if n <= 1:
            return 0
        return min(n - 1, max(1, n * self.max_ejection_percent // 100))

    def success(self, name: str, now: float) -> None:
        rec = self.records.get(name)
        if rec is None:
            return
        rec.failures = 0
        rec.probing = False
        if rec.ejections and now - rec.ejected_until >= self.max_ejection:
            rec.ejections = 0

    def failure(self, name: str, now: float) -> bool:
        """Record a failed connect; whether the endpoint was ejected by it."""
        rec = self.records.get(name)
        if rec is None or now < rec.ejected_until:
            return False
        if rec.ejections and not rec.probing and now - rec.ejected_until >= self.max_ejection:
            rec.ejections = 0
        rec.failures += 1
        if rec.failures < self.consecutive_failures and not rec.probing:
            return False
        if self.ejected_count(now) >= self.max_ejected():
            return False
        rec.ejected_until = now + min(self.base_ejection * 2 ** rec.ejections, self.max_ejection)
        rec.ejections += 1
        rec.failures = 0
        rec.probing = True
        self.total_ejections += 1
        return True
