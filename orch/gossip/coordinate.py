"""Network coordinates (Vivaldi, with Serf's refinements), pure: RTT between any two members.

Each member keeps a coordinate in an 8-dimensional space plus a *height* (the
time from the member to the network core) and an *adjustment* (a correction the
Euclidean model cannot express). Every direct probe's round-trip time, and the
coordinate its target returned in the ack, move this member's coordinate a
little; the estimated RTT between two members is then the distance between
their coordinates — for any pair, without measuring it. As in Serf: a latency
filter (the median of the last few samples per peer), error estimates that
weigh each update, an adjustment window, and gravity towards the origin so the
whole system does not drift. Times are in seconds.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

ZERO = 1.0e-6


@dataclass(frozen=True, slots=True, kw_only=True)
class VivaldiConfig:
    dimensions: int = 8
    error_max: float = 1.5
    """Upper bound of the error estimate, and its start."""
    ce: float = 0.25
    """How much one observation may move the error estimate."""
    cc: float = 0.25
    """How much one observation may move the coordinate."""
    adjustment_window: int = 20
    """Samples averaged into the adjustment term."""
    height_min: float = 10.0e-6
    latency_filter: int = 3
    """RTT samples per peer whose median is used."""
    gravity_rho: float = 150.0
    """Gravity's strength towards the origin (larger: weaker)."""


@dataclass(frozen=True, slots=True)
class Coordinate:
    vec: tuple[float, ...]
    error: float = 1.5
    height: float = 10.0e-6
    adjustment: float = 0.0

    def to_wire(self) -> list[Any]:
        """Compact: microseconds (and the error in thousandths) as integers."""
        return [[round(v * 1e6) for v in self.vec], round(self.error * 1000),
                round(self.height * 1e6), round(self.adjustment * 1e6)]

    @classmethod
    def from_wire(cls, raw: Any, dimensions: int = 8) -> Coordinate | None:
        """A coordinate from its wire form; None when malformed (never raises)."""
        try:
            vec, error, height, adjustment = raw
            if not all(type(v) is int for v in (*vec, error, height, adjustment)):
                return None
            if len(vec) != dimensions or max(map(abs, (*vec, height, adjustment))) > 10**8:
                return None
        except (TypeError, ValueError):
            return None
        return cls(tuple(v / 1e6 for v in vec), error / 1000, height / 1e6, adjustment / 1e6)


def raw_distance(a: Coordinate, b: Coordinate) -> float:
    return math.dist(a.vec, b.vec) + a.height + b.height


def estimate_rtt(a: Coordinate, b: Coordinate) -> float:
    """Estimated round-trip time between the members at ``a`` and ``b`` (seconds)."""
    dist = raw_distance(a, b)
    adjusted = dist + a.adjustment + b.adjustment
    return adjusted if adjusted > 0 else dist


@dataclass(slots=True)
class VivaldiClient:
    """This member's coordinate, updated from probe round-trip times."""

    cfg: VivaldiConfig
    rng: random.Random
    coord: Coordinate = field(init=False)
    updates: int = 0
    resets: int = 0
    _samples: dict[str, deque[float]] = field(default_factory=dict)
    _adjustments: list[float] = field(init=False)
    _adj_index: int = 0

    def __post_init__(self) -> None:
        self.coord = self._origin()
        self._adjustments = [0.0] * self.cfg.adjustment_window

    def _origin(self) -> Coordinate:
        return Coordinate((0.0,) * self.cfg.dimensions, self.cfg.error_max, self.cfg.height_min)

    def forget(self, peer: str) -> None:
        """Drop a peer's latency samples (it left)."""
        self._samples.pop(peer, None)

    def update(self, peer: str, other: Coordinate, rtt: float) -> Coordinate:
        """Take one observation: ``rtt`` seconds to ``peer``, which says it is at ``other``."""
        if not 0 < rtt < 10.0 or len(other.vec) != self.cfg.dimensions:
            return self.coord
        window = self._samples.setdefault(peer, deque(maxlen=self.cfg.latency_filter))
        window.append(rtt)
        rtt = sorted(window)[len(window) // 2]
        self._vivaldi(other, rtt)
        self._adjust(other, rtt)
        self._gravity()
        if not all(map(math.isfinite, (*self.coord.vec, self.coord.height, self.coord.error))):
            self.coord = self._origin()
            self.resets += 1
        self.updates += 1
        return self.coord

    def _vivaldi(self, other: Coordinate, rtt: float) -> None:
        cfg, c = self.cfg, self.coord
        dist = estimate_rtt(c, other)
        rtt = max(rtt, ZERO)
        wrongness = abs(dist - rtt) / rtt
        total = max(c.error + other.error, ZERO)
        weight = c.error / total
        error = min(cfg.ce * weight * wrongness + c.error * (1 - cfg.ce * weight), cfg.error_max)
        force = cfg.cc * weight * (rtt - dist)
        moved = self._apply_force(c, force, other)
        self.coord = Coordinate(moved.vec, error, moved.height, c.adjustment)

    def _adjust(self, other: Coordinate, rtt: float) -> None:
        self._adjustments[self._adj_index] = rtt - raw_distance(self.coord, other)
        self._adj_index = (self._adj_index + 1) % len(self._adjustments)
        c = self.coord
        self.coord = Coordinate(c.vec, c.error, c.height,
                                sum(self._adjustments) / (2.0 * len(self._adjustments)))

    def _gravity(self) -> None:
        origin = Coordinate((0.0,) * self.cfg.dimensions, height=self.cfg.height_min)
        dist = raw_distance(self.coord, origin)
        force = -((dist / self.cfg.gravity_rho) ** 2)
        c = self.coord
        moved = self._apply_force(c, force, origin)
        self.coord = Coordinate(moved.vec, c.error, moved.height, c.adjustment)

    def _apply_force(self, c: Coordinate, force: float, other: Coordinate) -> Coordinate:
        diff = [a - b for a, b in zip(c.vec, other.vec, strict=True)]
        mag = math.sqrt(sum(d * d for d in diff))
        if mag > ZERO:
            unit = [d / mag for d in diff]
        else:  # on top of each other: push in a random direction
            unit = [self.rng.uniform(-1, 1) for _ in diff]
            norm = math.sqrt(sum(u * u for u in unit)) or 1.0
            unit = [u / norm for u in unit]
        vec = tuple(a + u * force for a, u in zip(c.vec, unit, strict=True))
        height = c.height
        if mag > ZERO:
            height = (c.height + other.height) * force / mag + c.height
        return Coordinate(vec, c.error, max(height, self.cfg.height_min), c.adjustment)
