"""What the runtime is asked to run and what it reports, as orch's own types.

``AllocSpec`` is one desired allocation (made from the Allocation message at
the edge, ``convert``). ``AllocStatus`` with its ``TaskStatus`` and
``TaskEvent`` is what the runtime reports back (the Allocation's client
status, task states and events); ``DriverStatus`` says whether a driver (the
Docker engine) can be used. All are immutable snapshots, safe to hand to
another task or thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from orch.jobspec.model import Group, Task
from orch.vocab import DEFAULT_NAMESPACE

TaskStateName = Literal["pending", "running", "dead"]
ClientStatus = Literal["pending", "running", "complete", "failed", "lost"]
"""What an agent reports of an allocation (``lost``: the agent stopped it on its own, cut
off from the controllers past the group's ``disconnect.stop_after``; otherwise it is the
controller's verdict)."""
Desired = Literal["run", "stop"]

MAX_EVENTS = 10
"""Events kept per task (the newest), as Nomad keeps them."""



@dataclass(frozen=True, slots=True, kw_only=True)
class AllocSpec:
    """One allocation the node should run (``desired == "run"``) or stop (``"stop"``)."""

    id: str
    name: str = ""
    """job.group[index]"""
    namespace: str = DEFAULT_NAMESPACE
    job: str = ""
    job_version: int = 0
    job_type: str = "service"
    """service, batch or system: a batch task that exits 0 is complete, not restarted."""
    group: Group
    index: int = 0
    ports: Mapping[str, int] = field(default_factory=dict)
    """Port label → host port, as the scheduler chose them (dynamic ones may be missing)."""
    desired: Desired = "run"
    job_meta: Mapping[str, str] = field(default_factory=dict)
    """The job's meta (ORCH_META_<KEY> in every task's environment; the group's wins)."""
    payload: bytes = b""
    """A dispatched job's payload: every task finds it in ``local/payload``."""
    healthy: bool = field(default=False, compare=False)
    """The controller held it healthy when it sent it (not part of what to run)."""

    def task(self, name: str) -> Task | None:
        return next((t for t in self.group.tasks if t.name == name), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskEvent:
    time_ns: int
    type: str
    """Nomad's names: Received, Driver, Started, Terminated, Restarting, Not Restarting,
    Killing, Killed, Driver Failure, Sibling Task Failed, Reattached, Health."""
    message: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckStatus:
    name: str
    type: str
    verdict: str
    """pending, passing or failing."""
    output: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskStatus:
    state: TaskStateName = "pending"
    failed: bool = False
    restarts: int = 0
    exit_code: int = 0
    started_at_ns: int = 0
    finished_at_ns: int = 0
    events: tuple[TaskEvent, ...] = ()
    healthy: bool = False
    checks: tuple[CheckStatus, ...] = ()
    driver_id: str = ""
    """The container id (docker) or the process id (process) of the current run."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AllocStatus:
    alloc_id: str
    client_status: ClientStatus
    healthy: bool
    tasks: Mapping[str, TaskStatus]
    ports: Mapping[str, int] = field(default_factory=dict)
    """Port label → host port as used (the agent's choice for dynamic ports the scheduler
    left open)."""
    description: str = ""
    modify_time_ns: int = 0
    job_version: int = 0
    deployment_health: str = ""
    """The agent's verdict for deployments (``alloc_health``): pending, healthy, unhealthy."""
    health_next_in: float | None = None
    """Seconds until that verdict changes unless the tasks do (None: it does not)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DriverStatus:
    name: str
    healthy: bool
    detail: str = ""
    """Why it is unhealthy (``cannot reach the Docker engine at ...``), or its version."""


def client_status(tasks: Iterable[TaskStatus]) -> ClientStatus:
    """The allocation's status from its tasks' states (Nomad's rule).

    failed if any task failed; else pending if any is pending; else running if any
    runs; else complete (every task dead, none failed).
    """
    states = list(tasks)
    if any(t.failed for t in states):
        return "failed"
    if not states or any(t.state == "pending" for t in states):
        return "pending"
    if any(t.state == "running" for t in states):
        return "running"
    return "complete"
