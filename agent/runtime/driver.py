"""The one small interface every task driver (docker, process) implements.

Modelled on Nomad's task-driver plugins, cut to what orch uses::

    open / close            connect to the engine; detach (tasks keep running)
    start(cfg)      →       TaskHandle; idempotent per task: a task already running
                            with the same spec is adopted, never started twice
    wait(handle)    →       ExitResult, when the task's main process has exited
    stop(handle, signal, grace)   the signal, ``grace`` seconds, then SIGKILL
    destroy(handle)         remove what is left (the stopped container)
    recover()       →       the tasks of this node found running or exited (by labels)
    exec / usage / logs     for exec checks, resource sampling and log reading
    exec_session    →       ExecSession: a command run for a person (``orchctl alloc
                            exec``), with input, output, a terminal and its exit code

A driver reports its own health (``status``) and calls the ``on_status``
callback when it changes, so the agent can say "docker is down" and wait for it.
"""

from __future__ import annotations

import abc
import asyncio
import signal as _signal
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from orch.errors import RuntimeDriverError, StartError
from orch.jobspec.model import Network, Resources, Task

from .labels import TaskIdentity
from .state import DriverStatus
from .volumes import Mount

Stream = Literal["stdout", "stderr"]
PAYLOAD_FILE = "local/payload"
"""Where a task finds a dispatched job's payload: in its folder (process), or at
``/local/payload`` in its container (docker)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskConfig:
    """Everything a driver needs to start one task of one allocation."""

    alloc_id: str
    task: Task
    network: Network
    ports: Mapping[str, int]
    """Port label → host port."""
    env: Mapping[str, str]
    """The task's environment, orch's variables (ORCH_ALLOC_ID, ORCH_PORT_<label>, ...) included."""
    labels: Mapping[str, str]
    """Every label (``labels.task_labels``); the driver stores them with the task."""
    spec_hash: str
    task_dir: Path
    """The task's own folder in the agent's data dir (process: logs and state files)."""
    node_name: str = ""
    """For messages (``image X is not present on node Y``)."""
    files: bool = False
    """The task has secrets or templates: its secrets/ and local/ folders are its own
    (a container sees them at /secrets and /local)."""
    payload: bytes = b""
    """A dispatched job's payload, for the task as the file ``local/payload`` (read-only)."""
    mounts: tuple[Mount, ...] = ()
    """The volumes the task mounts, resolved on this node."""
    dns_servers: tuple[str, ...] = ()
    """The agent's DNS on port 53, as the task's resolvers (bridged containers; a process
    task's ``local/resolv.conf``)."""
    dns_search: tuple[str, ...] = ()
    """The task's search domains."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskHandle:
    """A started (or adopted) task, as its driver knows it."""

    driver: str
    id: str
    """The container id (docker) or ``<shim pid>:<task pid>`` (process)."""
    alloc_id: str
    task: str
    started_at_ns: int = 0
    pid: int = 0
    """The main process's pid on the host, when known."""
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ExitResult:
    exit_code: int
    signal: int = 0
    oom_killed: bool = False
    finished_at_ns: int = 0
    error: str = ""
    lost: bool = False
    """The task did not exit by itself: its engine went away (dockerd stopped) or its
    supervisor died. Restarted without counting against the restart policy."""

    def describe(self) -> str:
        if self.lost:
            return self.error or "the task was lost with its engine"
        text = f"Exit Code: {self.exit_code}"
        if self.signal:
            text += f", Signal: {self.signal}"
        if self.oom_killed:
            text += ", OOM Killed: true"
        if self.error:
            text += f", {self.error}"
        return text


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecResult:
    exit_code: int
    output: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecSpec:
    """A command to run in a task for a person (``orchctl alloc exec``)."""

    argv: tuple[str, ...]
    tty: bool = False
    """On a terminal: output comes as one stream (stdout), and the terminal can be resized."""
    stdin: bool = False
    """Input follows; else the command reads an empty input."""
    rows: int = 0
    cols: int = 0
    """The terminal's size at the start (0: the engine's default)."""
    term: str = "xterm"
    """TERM, for a terminal."""


class ExecSession(abc.ABC):
    """A command running in a task, with its input and output (``TaskDriver.exec_session``).

    ``output`` yields until the command's output ends (it exited, or ``kill`` ended it);
    then ``wait`` gives its exit code (128 + N when signal N ended it)."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None:
        """Send input."""

    @abc.abstractmethod
    async def close_stdin(self) -> None:
        """No more input (on a terminal: ^D)."""

    @abc.abstractmethod
    async def resize(self, rows: int, cols: int) -> None:
        """The terminal's new size (nothing without a terminal)."""

    @abc.abstractmethod
    def output(self) -> AsyncIterator[tuple[Stream, bytes]]:
        """(stdout or stderr, bytes) as the command writes, until its output ends."""

    @abc.abstractmethod
    async def wait(self) -> int:
        """The exit code, once the command has exited."""

    @abc.abstractmethod
    async def kill(self) -> None:
        """End the command now (and what it started, as far as the driver can)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    cpu_seconds: float
    """CPU time used since the task started (user + system)."""
    memory_bytes: int
    """Resident memory now (without the page cache)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LogChunk:
    offset: int
    """The offset of ``data``'s first byte in the stream."""
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Recovered:
    """A task of this node that the driver found after an agent restart."""

    handle: TaskHandle
    identity: TaskIdentity
    running: bool
    exit: ExitResult | None = None


StatusCallback = Callable[[DriverStatus], None]


def parse_signal(name: str) -> _signal.Signals:
    """``SIGTERM``, ``TERM``, ``sigterm`` or ``15`` as a signal; StartError when unknown."""
    text = name.strip().upper()
    try:
        if text.isdigit():
            return _signal.Signals(int(text))
        return _signal.Signals[text if text.startswith("SIG") else "SIG" + text]
    except (KeyError, ValueError):
        raise StartError(f"unknown kill_signal {name!r}: use a name such as SIGTERM or SIGINT",
                         recoverable=False) from None


class TaskDriver(abc.ABC):
    """Base of the drivers: the interface plus the health bookkeeping."""

    name: str = ""

    def __init__(self) -> None:
        self._status = DriverStatus(name=self.name, healthy=False, detail="not opened")
        self._available = asyncio.Event()
        self._callbacks: list[StatusCallback] = []

    @property
    def status(self) -> DriverStatus:
        return self._status

    def on_status(self, callback: StatusCallback) -> None:
        """Call ``callback`` with the new status whenever the driver's health changes."""
        self._callbacks.append(callback)

    def _set_status(self, healthy: bool, detail: str) -> None:
        new = DriverStatus(name=self.name, healthy=healthy, detail=detail)
        if healthy:
            self._available.set()
        else:
            self._available.clear()
        if new != self._status:
            self._status = new
            for cb in self._callbacks:
                cb(new)

    async def wait_available(self) -> None:
        """Return once the driver is healthy (at once if it is)."""
        await self._available.wait()

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect to the engine and start watching it."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop watching; the tasks keep running (the next agent adopts them)."""

    @abc.abstractmethod
    async def start(self, cfg: TaskConfig) -> TaskHandle:
        """Start the task, or adopt it when it already runs with the same spec.

        Raises StartError (recoverable or not) or DriverUnavailableError.
        """

    @abc.abstractmethod
    async def wait(self, handle: TaskHandle) -> ExitResult:
        """Return when the task's main process has exited."""

    @abc.abstractmethod
    async def stop(self, handle: TaskHandle, signal: str, grace: float) -> None:
        """Send ``signal``, wait up to ``grace`` seconds for the exit, then SIGKILL."""

    containerized = False
    """Whether tasks see their folders at /secrets and /local (the driver mounts them)."""

    def file_owner(self, task: Task) -> tuple[int, int]:
        """(uid, gid) that owns a task's secret and template files (-1: the agent's)."""
        return -1, -1

    async def signal(self, handle: TaskHandle, signal: str) -> None:
        """Send ``signal`` to the running task (a template's ``change_signal``)."""
        raise RuntimeDriverError(f"the {self.name} driver cannot signal its tasks")

    @abc.abstractmethod
    async def destroy(self, handle: TaskHandle) -> None:
        """Remove what is left of a stopped task (the container); logs go with it."""

    @abc.abstractmethod
    async def recover(self) -> list[Recovered]:
        """This node's tasks that exist already: running, or exited while no agent watched."""

    @abc.abstractmethod
    async def exec(self, handle: TaskHandle, argv: list[str]) -> ExecResult:
        """Run ``argv`` inside the task's environment (exec health checks).

        The caller bounds it with ``asyncio.timeout``; cancelled, the driver kills what it can.
        """

    async def exec_session(self, handle: TaskHandle, spec: ExecSpec) -> ExecSession:
        """Start ``spec.argv`` in the running task, as its user, for a person to talk to.

        RuntimeDriverError when it cannot start (the driver says why)."""
        raise RuntimeDriverError(f"the {self.name} driver cannot run commands in its tasks")

    def attributes(self) -> dict[str, str]:
        """Node attributes this driver adds while healthy (for constraints)."""
        return {}

    async def resize(self, handle: TaskHandle, resources: Resources) -> bool:
        """Give a running task new CPU and memory limits in place; False when this driver
        cannot (the task is then replaced)."""
        return False

    @abc.abstractmethod
    async def usage(self, handle: TaskHandle) -> Usage | None:
        """CPU and memory used by the task now; None when it is not running."""

    async def log_offset(self, handle: TaskHandle, stream: Stream, since_ns: int) -> int:
        """The offset of the first byte of ``stream`` written at or after ``since_ns`` (to
        about a second; 0 when the driver cannot tell)."""
        return 0

    @abc.abstractmethod
    def logs(self, handle: TaskHandle, stream: Stream, *, offset: int = 0,
             follow: bool = False) -> AsyncIterator[LogChunk]:
        """The task's ``stream`` from byte ``offset`` (negative: from the end).

        With ``follow``, keep yielding as the task writes, until it has exited.
        """
