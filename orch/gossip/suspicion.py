"""Lifeguard's dynamic suspicion timeout and local health awareness (pure)."""

from __future__ import annotations

import math

from orch.gossip.timers import Timer


def min_suspicion_timeout(suspicion_mult: int, n: int, probe_interval: float) -> float:
    """suspicion_mult * max(1, log10(N)) * probe_interval (memberlist's formula)."""
    return suspicion_mult * max(1.0, math.log10(max(1, n))) * probe_interval


def retransmit_limit(retransmit_mult: int, n: int) -> int:
    """How many times each update is sent: retransmit_mult * ceil(log10(N + 1))."""
    return retransmit_mult * max(1, math.ceil(math.log10(n + 1)))


def suspicion_timeout(confirmations: int, k: int, lo: float, hi: float) -> float:
    """Timeout after ``confirmations`` independent suspicions, of ``k`` expected.

    Starts at ``hi`` and falls logarithmically to ``lo`` when ``k`` confirmations
    have arrived: hi - (log(c+1) / log(k+1)) * (hi - lo), never below lo.
    """
    if k < 1:
        return lo
    frac = math.log(confirmations + 1) / math.log(k + 1)
    return max(lo, hi - frac * (hi - lo))


class Suspicion:
    """One member's suspicion of another: when it started and who confirmed it."""

    __slots__ = ("confirmed", "floor", "heard", "hi", "incarnation", "k", "lo", "start",
                 "timer")

    def __init__(self, *, start: float, sender: str, incarnation: int, k: int,
                 lo: float, hi: float, heard: float | None = None, floor: float = 0.0) -> None:
        self.start = start
        self.incarnation = incarnation
        self.k = k
        self.lo = lo
        self.hi = hi
        self.heard = start if heard is None else heard
        """When this member first heard of it (``start`` may be earlier: the age notices
        claim, with the shared suspicion clock)."""
        self.floor = floor
        """The suspicion lasts at least this long after ``heard``, whatever the claims."""
        self.confirmed: set[str] = {sender}
        """The first accuser and every member that confirmed (the first does not count)."""
        self.timer: Timer | None = None

    @property
    def confirmations(self) -> int:
        return len(self.confirmed) - 1

    def confirm(self, sender: str) -> bool:
        """Count an independent suspicion; False when it is not new or not needed."""
        if self.confirmations >= self.k or sender in self.confirmed:
            return False
        self.confirmed.add(sender)
        return True

    def deadline(self) -> float:
        return max(self.start + suspicion_timeout(self.confirmations, self.k, self.lo, self.hi),
                   self.heard + self.floor)

    def settled(self, now: float) -> bool:
        """Whether it has lasted its floor here: others' verdicts may end it now."""
        return now >= self.heard + self.floor


class Awareness:
    """Local health (Lifeguard): a score in 0..max-1 that scales this member's timeouts.

    Missed nacks and refutations raise it; successful probes lower it. A member
    that is itself slow then probes less eagerly and stops accusing healthy peers.
    """

    __slots__ = ("max", "score")

    def __init__(self, max_multiplier: int) -> None:
        self.max = max_multiplier
        self.score = 0

    def apply(self, delta: int) -> None:
        self.score = min(self.max - 1, max(0, self.score + delta))

    def scale(self, timeout: float) -> float:
        return timeout * (self.score + 1)
