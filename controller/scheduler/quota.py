"""Namespace quotas: what a namespace's allocations may hold at once, and the plan's budget.

A :class:`Quota` caps the CPU, memory and number of allocations that a namespace's
live allocations (desired to run, not finished: the ones that occupy a node) hold
together; 0 leaves a dimension unlimited. The snapshot keeps each namespace's
:class:`Usage`; a :class:`Budget` is one plan's view of it: what the plan stops is
credited, what it places is debited, and a placement that would go past the quota is
refused with a sentence that names the quota (``job plan`` and ``job status`` show it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Quota:
    cpu_millicores: int = 0
    memory_mb: int = 0
    allocations: int = 0

    @property
    def unlimited(self) -> bool:
        return not (self.cpu_millicores or self.memory_mb or self.allocations)

    def describe(self) -> str:
        """``cpu 4000 millicores, memory 8192 MB, 20 allocations`` (the limited ones)."""
        parts = []
        if self.cpu_millicores:
            parts.append(f"cpu {self.cpu_millicores} millicores")
        if self.memory_mb:
            parts.append(f"memory {self.memory_mb} MB")
        if self.allocations:
            parts.append(f"{self.allocations} allocations")
        return ", ".join(parts) or "unlimited"


@dataclass(slots=True)
class Usage:
    """What a namespace's live allocations hold."""

    cpu_millicores: int = 0
    memory_mb: int = 0
    allocations: int = 0

    def add(self, cpu: int, mem: int, sign: int = 1) -> None:
        self.cpu_millicores += sign * cpu
        self.memory_mb += sign * mem
        self.allocations += sign


class Budget:
    """One plan's room under a namespace's quota: the snapshot's usage plus the plan's own
    placements and stops."""

    __slots__ = ("namespace", "quota", "used")

    def __init__(self, namespace: str, quota: Quota, used: Usage) -> None:
        self.namespace = namespace
        self.quota = quota
        self.used = Usage(used.cpu_millicores, used.memory_mb, used.allocations)

    def refusal(self, cpu: int, mem: int, allocations: int = 1) -> str | None:
        """Why one more allocation of ``cpu``/``mem`` would go past the quota (None: it fits).
        ``allocations`` is 0 for growing an allocation in place."""
        q, u = self.quota, self.used
        over = []
        if q.cpu_millicores and u.cpu_millicores + cpu > q.cpu_millicores:
            over.append(f"cpu {u.cpu_millicores} of {q.cpu_millicores} millicores in use, "
                        f"{cpu} more asked")
        if q.memory_mb and u.memory_mb + mem > q.memory_mb:
            over.append(f"memory {u.memory_mb} of {q.memory_mb} MB in use, {mem} more asked")
        if q.allocations and u.allocations + allocations > q.allocations:
            over.append(f"{u.allocations} of {q.allocations} allocations in use")
        if not over:
            return None
        return f"quota of namespace {self.namespace!r} exhausted ({'; '.join(over)})"

    def take(self, cpu: int, mem: int, allocations: int = 1) -> None:
        u = self.used
        u.cpu_millicores += cpu
        u.memory_mb += mem
        u.allocations += allocations

    def give(self, cpu: int, mem: int, sign: int = 1) -> None:
        """Credit a stop (``sign=-1`` takes the credit back)."""
        self.used.add(cpu, mem, -sign)
