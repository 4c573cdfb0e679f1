"""CPU and memory limits for process tasks, through the kernel's cgroups (v2 or v1).

One cgroup per task under an ``orch/<node id>`` parent: ``/sys/fs/cgroup/orch/<node>/<task>``
on the unified hierarchy (v2), ``/sys/fs/cgroup/{memory,cpu}/<the agent's own>/orch/<node>/
<task>`` on v1. Memory is a
hard limit: above it the kernel's OOM killer ends the task, as Docker's ``--memory``
does. CPU is a relative weight (``cpu.shares``, ``cpu.weight``), not a quota: a busy
node divides its cores in proportion to what tasks asked for, and a task may use idle
cores, as Nomad's and Kubernetes' CPU requests do.

The agent creates a task's cgroup and sets its limits (again on resize); the task joins
it between fork and exec (``join``), and its supervisor ends whatever is left in it when
the task exits, reads whether the OOM killer struck, and removes it. Standard library
only: the supervisor imports it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orch.errors import RuntimeDriverError

ROOT = Path("/sys/fs/cgroup")
PARENT = "orch"
CONTROLLERS = ("cpu", "memory")
SHARES_PER_CORE = 1024
"""v1 ``cpu.shares`` for one core's worth of millicores (Docker's mapping of --cpu-shares)."""


class CgroupError(RuntimeDriverError):
    """cgroups cannot hold this node's tasks: the message says why."""


def cpu_shares(millicores: int) -> int:
    """v1 ``cpu.shares`` for a task asking ``millicores`` (at least the kernel's 2)."""
    return max(2, millicores * SHARES_PER_CORE // 1000)


def cpu_weight(millicores: int) -> int:
    """v2 ``cpu.weight`` (1-10000) for the same share, with runc's conversion."""
    shares = min(cpu_shares(millicores), 262144)
    return 1 + (shares - 2) * 9999 // 262142


def safe_name(text: str) -> str:
    """``text`` as one directory name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:200]


def cgroup_name(alloc_id: str, task: str) -> str:
    """A directory name for one task of one allocation."""
    return safe_name(f"{alloc_id}.{task}")


def _rmdirs(paths: tuple[Path, ...]) -> None:
    """Remove each directory that can be (a cgroup with processes or children stays)."""
    for p in paths:
        with contextlib.suppress(OSError):
            p.rmdir()


def _children(parents: tuple[Path, ...]) -> set[str]:
    """The names of the directories under any of ``parents`` (each once)."""
    return {d.name for p in parents if p.is_dir() for d in p.iterdir() if d.is_dir()}


def _enable(d: Path, controllers: str) -> None:
    """Switch the controllers on for ``d``'s children (v2), unless they are on already."""
    control = d / "cgroup.subtree_control"
    on = set(control.read_text().split()) if control.exists() else set()
    if not set(CONTROLLERS) <= on:
        control.write_text(controllers)


@dataclass(frozen=True, slots=True)
class TaskCgroup:
    """One task's cgroup: a directory per hierarchy (one on v2, memory and cpu on v1)."""

    version: int
    paths: tuple[Path, ...]

    def to_doc(self) -> dict[str, Any]:
        return {"version": self.version, "paths": [str(p) for p in self.paths]}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> TaskCgroup:
        return cls(int(doc["version"]), tuple(Path(p) for p in doc["paths"]))

    def create(self, cpu_millicores: int, memory_mb: int) -> None:
        """Make the directories (left over from a previous run of the task: emptied and
        made again, so that its OOM count starts at zero) and set the limits."""
        self.remove()
        try:
            for p in self.paths:
                p.mkdir(exist_ok=True)
            self.set_limits(cpu_millicores, memory_mb)
        except OSError as e:
            raise CgroupError(f"cannot create the task's cgroup {self.paths[0]}: "
                              f"{e.strerror or e}") from None

    def set_limits(self, cpu_millicores: int, memory_mb: int) -> None:
        """Memory limit and CPU weight, in place (a running task keeps running)."""
        memory = str(memory_mb << 20)
        if self.version == 2:
            d = self.paths[0]
            (d / "memory.max").write_text(memory)
            if (d / "memory.swap.max").exists():
                (d / "memory.swap.max").write_text("0")
            (d / "cpu.weight").write_text(str(cpu_weight(cpu_millicores)))
        else:
            mem, cpu = self.paths
            (mem / "memory.limit_in_bytes").write_text(memory)
            (cpu / "cpu.shares").write_text(str(cpu_shares(cpu_millicores)))

    def join(self) -> None:
        """Move the calling process into the cgroup (the task, between fork and exec)."""
        pid = str(os.getpid())
        for p in self.paths:
            (p / "cgroup.procs").write_text(pid)

    def pids(self) -> set[int]:
        found: set[int] = set()
        for p in self.paths:
            with contextlib.suppress(OSError):
                found.update(int(x) for x in (p / "cgroup.procs").read_text().split())
        return found

    def oom_kills(self) -> int:
        """How many processes the OOM killer ended in this cgroup (0 when unknown)."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            text = (self.paths[0] / name).read_text()
        except OSError:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def kill_all(self, wait: float = 2.0) -> None:
        """SIGKILL whatever still runs in the cgroup (processes that left the task's
        process group included), until it is empty or ``wait`` seconds pass."""
        deadline = time.monotonic() + wait
        while pids := self.pids():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() >= deadline:
                return
            time.sleep(0.01)

    def remove(self) -> None:
        """End what runs in it and remove the directories (what cannot be removed stays)."""
        if any(p.exists() for p in self.paths):
            self.kill_all()
        _rmdirs(self.paths)


def own_cgroups(text: str) -> dict[str, str]:
    """Controller → this process's cgroup path, from ``/proc/self/cgroup`` (``""`` is
    the unified hierarchy's entry)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                out[controller] = parts[2]
    return out


@dataclass(frozen=True, slots=True)
class Hierarchy:
    """The node's cgroup hierarchy, with orch's parent made and its controllers on.

    On v1 the parent nests under the agent's own cgroup of each controller, so tasks stay
    inside whatever limits the agent runs under (a systemd unit, a container). On v2 it
    is ``/sys/fs/cgroup/orch``: a cgroup that holds processes cannot delegate
    controllers to children, so tasks cannot nest under the agent's own."""

    root: Path
    version: int
    parents: tuple[Path, ...]

    @classmethod
    def detect(cls, scope: str = "", root: Path = ROOT,
               proc_cgroup: Path = Path("/proc/self/cgroup")) -> Hierarchy:
        """The hierarchy under ``root``, with ``orch/<scope>`` made (one scope per node, so
        agents sharing a host never touch each other's cgroups); CgroupError saying why
        when tasks cannot be limited there (no memory or cpu controller, not writable)."""
        tail = Path(PARENT, safe_name(scope)) if scope else Path(PARENT)
        if (root / "cgroup.controllers").is_file():
            have = set((root / "cgroup.controllers").read_text().split())
            missing = sorted(set(CONTROLLERS) - have)
            if missing:
                raise CgroupError(f"the cgroup v2 hierarchy at {root} lacks the "
                                  f"{' and '.join(missing)} controller")
            h = cls(root, 2, (root / tail,))
        elif all((root / c / "cgroup.procs").is_file() for c in CONTROLLERS):
            try:
                own = own_cgroups(proc_cgroup.read_text())
            except OSError:
                own = {}
            h = cls(root, 1, tuple(root / c / own.get(c, "/").lstrip("/") / tail
                                   for c in ("memory", "cpu")))
        else:
            raise CgroupError(f"no cgroup hierarchy with the cpu and memory controllers "
                              f"under {root}")
        h._prepare(len(tail.parts))
        return h

    def describe(self) -> str:
        return f"cgroup v{self.version} ({', '.join(map(str, self.parents))})"

    def _prepare(self, depth: int) -> None:
        """Make the parents' last ``depth`` levels (on v2 with the controllers on)."""
        enable = " ".join(f"+{c}" for c in CONTROLLERS)
        try:
            for parent in self.parents:
                for d in reversed([parent, *parent.parents][:depth]):
                    if self.version == 2:
                        _enable(d.parent, enable)
                    d.mkdir(exist_ok=True)
                if self.version == 2:
                    _enable(parent, enable)
        except OSError as e:
            raise CgroupError(f"cannot prepare {self.parents[0]}: {e.strerror or e}") from None

    def task(self, name: str) -> TaskCgroup:
        return TaskCgroup(self.version, tuple(p / name for p in self.parents))

    def sweep(self) -> int:
        """Remove the task cgroups in which nothing runs (left by supervisors that were
        killed); the number removed. Only while no task of this scope is starting."""
        removed = 0
        for name in _children(self.parents):
            cg = self.task(name)
            if not cg.pids():
                _rmdirs(cg.paths)
                removed += 1
        return removed

    def release(self) -> None:
        """Remove this scope's own directories if nothing is left in them."""
        _rmdirs(self.parents)


def sweep_scopes() -> None:
    """Remove every node scope under orch's parent in which nothing runs (for a host that
    ran throw-away agents: tests, benchmarks). Quiet when there are no cgroups."""
    try:
        h = Hierarchy.detect()
    except (CgroupError, OSError):
        return
    for scope in _children(h.parents):  # (on v1 a scope is under both parents: once)
        node = Hierarchy(h.root, h.version, tuple(p / scope for p in h.parents))
        node.sweep()
        node.release()
