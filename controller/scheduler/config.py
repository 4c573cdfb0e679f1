"""The scheduler's knobs: one frozen dataclass, every default written once beside its meaning."""

from __future__ import annotations

import math
from dataclasses import dataclass

ALGORITHMS = ("binpack", "spread")


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerConfig:
    algorithm: str = "binpack"
    """binpack: fill the fullest node that fits (fewer nodes used); spread: the emptiest."""
    sample_limit: int = 0
    """Feasible nodes scored per placement. 0 = Nomad's rule: 2 for batch jobs (power of two
    choices), max(2, ceil(log2(candidate nodes))) otherwise."""
    exact_below: int = 64
    """Groups whose candidate nodes number at most this are scored exhaustively (exact mode)."""
    exact: bool = False
    """Score every feasible node whatever the cluster size (slow on big clusters; for tests)."""
    max_skip: int = 3
    """Nodes already running a replica of the group set aside per placement while looking for
    nodes that run none (job anti-affinity), as Nomad's limit iterator does."""
    dynamic_port_min: int = 20000
    """Lowest host port handed out for dynamic ports."""
    dynamic_port_max: int = 32000
    """Highest host port handed out for dynamic ports (inclusive)."""

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, "
                             f"got {self.algorithm!r}")
        if not 0 < self.dynamic_port_min <= self.dynamic_port_max <= 65535:
            raise ValueError("dynamic ports need 0 < dynamic_port_min <= dynamic_port_max <= "
                             "65535")
        if self.sample_limit < 0 or self.max_skip < 0 or self.exact_below < 0:
            raise ValueError("sample_limit, max_skip and exact_below must be >= 0")

    def limit(self, candidates: int, batch: bool) -> int:
        """How many feasible nodes to score for one placement among ``candidates`` nodes."""
        if self.exact or candidates <= self.exact_below:
            return max(candidates, 1)
        if self.sample_limit:
            return self.sample_limit
        if batch:
            return 2
        return max(2, math.ceil(math.log2(candidates)))
