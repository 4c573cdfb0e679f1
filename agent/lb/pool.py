"""One service's endpoints: which may take a connection now, and their connection counts.

Pure apart from the connection sets it keeps for the proxy: time comes in as an
argument. It combines the policy (which one), outlier detection (which may) and the
local preference (prefer this node's endpoints while one of them may be used).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agent.lb.config import LbConfig
from agent.lb.model import Endpoint
from agent.lb.outlier import EJECTED, OutlierDetector
from agent.lb.policy import Policy, make_policy
from agent.lb.stats import EndpointStats


def endpoint_name(ep: Endpoint) -> str:
    host = f"[{ep.host}]" if ":" in ep.host else ep.host
    return f"{host}:{ep.port}"


@dataclass(eq=False, slots=True)
class Backend:
    """An endpoint as the proxy sees it: its counts and the connections it holds."""

    endpoint: Endpoint
    name: str
    active: int = 0
    total: int = 0
    connect_failures: int = 0
    failing: bool = False
    """Its last connect failed (outlier detection wants to hear of the next success)."""
    ejections: int = 0
    draining: bool = False
    conns: set[Any] = field(default_factory=set)
    """The proxy's connections to it (closed when a drain ends)."""

    @property
    def weight(self) -> int:
        return self.endpoint.weight


class Pool:
    def __init__(self, policy: str, cfg: LbConfig, rng: random.Random) -> None:
        self.cfg = cfg
        self.policy_name = policy
        self.policy: Policy[Backend] = make_policy(policy, rng,
                                                   maglev_table_size=cfg.maglev_table_size)
        self.outliers = OutlierDetector(
            consecutive_failures=cfg.outlier_consecutive_failures,
            base_ejection=cfg.outlier_base_ejection, max_ejection=cfg.outlier_max_ejection,
            max_ejection_percent=cfg.outlier_max_ejection_percent)
        self.members: list[Backend] = []
        self.by_name: dict[str, Backend] = {}
        self.draining: set[Backend] = set()
        self._rng = rng
        # The usable list (after ejections and the local preference) until ``_fresh_until``.
        self._usable: list[Backend] = []
        self._fresh_until = -1.0

    def set_policy(self, policy: str) -> None:
        if policy != self.policy_name:
            self.policy_name = policy
            self.policy = make_policy(policy, self._rng, maglev_table_size=self.cfg.maglev_table_size)
            self.policy.reset(self.members)
            self._fresh_until = -1.0

    def set_endpoints(self, endpoints: Iterable[Endpoint]) -> list[Backend]:
        """Make ``endpoints`` the set; returns the backends removed (now draining)."""
        new: dict[str, Backend] = {}
        for ep in endpoints:
            name = endpoint_name(ep)
            b = self.by_name.get(name) or new.get(name) or self._revive(name)
            if b is None:
                b = Backend(ep, name)
            else:
                b.endpoint = ep  # weight, locality or PROXY protocol may have changed
            new[name] = b
        removed = [b for name, b in self.by_name.items() if name not in new]
        for b in removed:
            b.draining = True
            self.draining.add(b)
        self.by_name = new
        self.members = list(new.values())
        self.outliers.reset(list(new))
        self.policy.reset(self.members)
        self._fresh_until = -1.0
        return removed

    def _revive(self, name: str) -> Backend | None:
        """A draining backend that is back in the set: its connections stay."""
        for b in self.draining:
            if b.name == name:
                self.draining.discard(b)
                b.draining = False
                return b
        return None

    def _compute_usable(self, now: float) -> list[Backend]:
        out = self.outliers
        usable = [b for b in self.members if out.usable(b.name, now)] or list(self.members)
        if self.cfg.prefer_local:
            local = [b for b in usable if b.endpoint.local]
            if local:
                usable = local
        if self.cfg.prefer_nearest:
            known = [b.endpoint.rtt for b in usable if b.endpoint.rtt is not None]
            if known:
                limit = min(known) + self.cfg.nearest_tolerance
                usable = [b for b in usable if b.endpoint.rtt is not None and b.endpoint.rtt <= limit]
        ends = [r.ejected_until for r in out.records.values() if r.ejected_until > now]
        self._fresh_until = min(ends) if ends else float("inf")
        self._usable = usable
        return usable

    def choose(self, client: str, now: float, tried: set[Backend] | None = None) -> Backend | None:
        """The backend for a new connection from ``client`` (its address), or None when
        there is no endpoint left to try. ``tried`` holds those that failed it already."""
        usable = self._usable if now < self._fresh_until else self._compute_usable(now)
        if tried:
            rest = [b for b in usable if b not in tried]
            if not rest:  # past the preferred ones: any endpoint not tried yet
                rest = [b for b in self.members if b not in tried and self.outliers.usable(b.name, now)]
                rest = rest or [b for b in self.members if b not in tried]
            if not rest:
                return None
            return self.policy.pick(rest, client)
        if not usable:
            return None
        return self.policy.pick(usable, client)

    def connected(self, b: Backend, now: float) -> None:
        """A connect to ``b`` succeeded (callers may skip this while ``b.failing`` is false)."""
        b.failing = False
        self.outliers.success(b.name, now)

    def failed(self, b: Backend, now: float) -> bool:
        """A connect to ``b`` failed; whether that ejected it."""
        b.connect_failures += 1
        b.failing = True
        if b.draining:
            return False
        ejected = self.outliers.failure(b.name, now)
        if ejected:
            b.ejections += 1
            self._fresh_until = -1.0
        return ejected

    def forget(self, b: Backend) -> None:
        """A draining backend has no connection left."""
        self.draining.discard(b)

    def endpoint_stats(self, now: float) -> list[EndpointStats]:
        out = []
        for b in [*self.members, *self.draining]:
            state = "draining" if b.draining else self.outliers.state(b.name, now)
            out.append(EndpointStats(
                name=b.name, alloc_id=b.endpoint.alloc_id, node=b.endpoint.node, state=state,
                active=b.active, total=b.total, connect_failures=b.connect_failures,
                ejections=b.ejections))
        return out

    def ejected(self, now: float) -> int:
        return sum(1 for b in self.members if self.outliers.state(b.name, now) == EJECTED)
