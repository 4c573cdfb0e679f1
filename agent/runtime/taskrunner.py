"""The life of one task on this node: start, watch, check, restart, stop.

A TaskRunner is an asyncio task looping through::

    (adopt what an earlier agent left running, or start) → running, checks probing
        → the task exits: Terminated; the restart policy says restart (after a delay),
          complete or fail;
        → a stop is requested: Killing (signal, grace, SIGKILL), Killed;
        → the engine lost the task (dockerd stopped): wait for the driver, start again
          without counting it against the restart policy;
        → a secret or a template's input changed (``refresh_files``): the files are
          written again and the task restarted, signalled or left alone, as the job says.

A task with secrets or templates starts only once its files are written (``TaskFiles``).

Every change is recorded as state and as events with Nomad's names, and
announced through ``notify`` so the allocation's status can be sent on.
Cancelling the runner (``detach``) leaves the task running for the next agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from orch.errors import DriverUnavailableError, RuntimeDriverError, StartError
from orch.jobspec.model import Check, Resources, Task

from .driver import ExitResult, Recovered, TaskConfig, TaskDriver, TaskHandle
from .health import CheckResult, CheckTracker
from .probes import make_probe, run_check
from .restart import Decision, RestartTracker, human_duration
from .state import MAX_EVENTS, CheckStatus, TaskEvent, TaskStateName, TaskStatus
from .taskfiles import TaskFiles

log = logging.getLogger("runtime")

DRIVER_RETRY = 1.0
"""Seconds between start attempts while a driver claims health but refuses work."""
FILES_RETRY = 5.0
"""Seconds between attempts to write a waiting task's files (sooner when its inputs change)."""
LOST_RESTART_DELAY = 3.0
"""Seconds before restarting a task its engine lost (stopped from outside, or the engine
went away): an engine shutting down stops its containers before it stops answering, and a
start in that window would only fail, or hold the shutdown up."""


class TaskRunner:
    """Runs one task of one allocation until it is complete, failed or stopped."""

    def __init__(self, *, task: Task, cfg: TaskConfig, driver: TaskDriver,
                 tracker: RestartTracker, checks: Sequence[Check], check_host: str,
                 notify: Callable[[], None], adopted: Recovered | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_finished: Callable[[TaskRunner], None] | None = None,
                 files: TaskFiles | None = None) -> None:
        self.task, self.cfg, self.driver, self.tracker = task, cfg, driver, tracker
        self.files = files
        self._files_wake = asyncio.Event()
        self.check_host = check_host
        self._notify_alloc = notify
        self._adopted = adopted
        self._clock = clock
        self._on_finished = on_finished
        self.state: TaskStateName = "pending"
        self.failed = False
        self.restarts = 0
        self.exit_code = 0
        self.started_at_ns = 0
        self.finished_at_ns = 0
        self.handle: TaskHandle | None = None
        self.events: deque[TaskEvent] = deque(maxlen=MAX_EVENTS)
        self.checks = [CheckTracker(c) for c in checks]
        self._check_tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._stop_event = ("Killing", "")
        self._restart_requested = False
        self._health_failure = ""
        """Why a check_restart stopped the task (it restarts by the restart policy)."""
        self._run_started = 0.0
        """When the current run started (``clock``): check_restart's grace counts from it."""
        self._runner: asyncio.Task[None] | None = None

    # --- control -----------------------------------------------------------------------

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name=f"task {self.task.name}")

    async def resize(self, resources: Resources) -> bool:
        """Apply new CPU and memory limits to the running task (and to its later runs)."""
        running = self.handle is not None and self.state == "running"
        if running and self.handle is not None and not await self.driver.resize(self.handle,
                                                                                resources):
            return False
        self.task = dataclasses.replace(self.task, resources=resources)
        self.cfg = dataclasses.replace(self.cfg, task=dataclasses.replace(
            self.cfg.task, resources=resources))
        self._event("Resized", f"{resources.cpu_millicores} millicores, "
                               f"{resources.memory_mb} MB, in place")
        return True

    def request_stop(self, event_type: str = "Killing", reason: str = "") -> None:
        """Stop the task (signal, grace, SIGKILL); it ends dead and not failed."""
        self._restart_requested = False  # a stop wins over a restart asked for before it
        self._health_failure = ""
        if not self._stop.is_set():
            self._stop_event = (event_type, reason)
            self._stop.set()

    def request_restart(self, reason: str = "User requested restart") -> None:
        """Stop the task and start it again (asked for, so not counted by the policy)."""
        if self.state == "running" and not self._stop.is_set():
            self._restart_requested = True
            self._stop_event = ("Restart Signaled", reason)
            self._stop.set()

    async def refresh_files(self) -> None:
        """Render the task's files again (their inputs changed) and react as the job says."""
        if self.files is None:
            return
        if self.state != "running" or self.handle is None:
            self._files_wake.set()  # a start waiting for its files tries again now
            return
        react = await self.files.refresh()
        if react is None:
            return
        what = ", ".join(react.changed)
        if react.restart:
            self.request_restart(f"{what} changed: restarting the task")
            return
        for sig in sorted(react.signals):
            self._event("Signaling", f"{what} changed: sending {sig}")
            try:
                await self.driver.signal(self.handle, sig)
            except RuntimeDriverError as e:
                self._event("Driver Failure", f"cannot send {sig}: {e}")
        if not react.signals:
            self._event("Files Updated", f"{what} changed (change_mode noop)")

    async def wait_finished(self) -> None:
        if self._runner is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._runner)

    @property
    def finished(self) -> bool:
        return self._runner is not None and self._runner.done()

    async def detach(self) -> None:
        """Forget the task without touching it (agent shutdown): it keeps running."""
        if self._runner is not None and not self._runner.done():
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner

    def driver_changed(self) -> None:
        """The driver's health changed: say so in the events of a task that runs on it."""
        status = self.driver.status
        if self.state == "running" and not status.healthy:
            self._event("Driver Failure", status.detail)
        self._notify()

    # --- what it reports ---------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return (self.state == "running" and self.driver.status.healthy
                and all(c.healthy for c in self.checks))

    def status(self) -> TaskStatus:
        return TaskStatus(
            state=self.state, failed=self.failed, restarts=self.restarts,
            exit_code=self.exit_code, started_at_ns=self.started_at_ns,
            finished_at_ns=self.finished_at_ns, events=tuple(self.events),
            healthy=self.healthy, driver_id=self.handle.id if self.handle else "",
            checks=tuple(CheckStatus(name=c.check.name, type=c.check.type, verdict=c.verdict,
                                     output=c.output) for c in self.checks))

    def _event(self, kind: str, message: str = "") -> None:
        self.events.append(TaskEvent(time_ns=time.time_ns(), type=kind, message=message))
        log.info("%s: %s", kind, message, extra={"alloc": self.cfg.alloc_id,
                                                 "task": self.task.name})
        self._notify()

    def _notify(self) -> None:
        self._notify_alloc()

    # --- the loop ----------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug here must not go unnoticed, nor kill the agent
            log.exception("task runner failed", extra={"alloc": self.cfg.alloc_id,
                                                       "task": self.task.name})
            self._event("Driver Failure", f"internal error in the agent: {e!r}")
            self._dead(failed=True)
        finally:
            self._stop_checks()
            if self._on_finished is not None and self.state == "dead":
                self._on_finished(self)

    async def _loop(self) -> None:
        handle, exit_ = await self._recover()
        if handle is not None and self.files is not None:
            problem = await self.files.prepare()  # reattached: its files as of now
            if problem:
                self._event("Template", problem)
        while True:
            if handle is None:
                handle = await self._start()
                if handle is None:
                    return
            if exit_ is None:
                exit_ = await self._watch(handle)
                if exit_ is None and self._health_failure:  # check_restart: a failure
                    reason, self._health_failure = self._health_failure, ""
                    self._stop.clear()
                    if not await self._decide(self.tracker.on_unhealthy(reason, self._clock())):
                        return
                    handle = None
                    continue
                if exit_ is None:  # stopped on request
                    if not self._restart_requested:
                        self._dead(failed=False)
                        return
                    self._restart_requested = False
                    self._stop.clear()
                    self.restarts += 1
                    self.state = "pending"
                    handle = None
                    continue
            self._terminated(exit_)
            if exit_.lost or not self.driver.status.healthy:
                self.restarts += 1
                self.state = "pending"
                self._event("Restarting", f"{exit_.describe()}: restarting in "
                                          f"{human_duration(LOST_RESTART_DELAY)}, once the "
                                          f"{self.driver.name} driver is available")
                await self._until_stop_or(asyncio.sleep(LOST_RESTART_DELAY))
            elif not await self._decide(self.tracker.on_exit(
                    exit_.exit_code, self._clock(), oom_killed=exit_.oom_killed)):
                return
            handle, exit_ = None, None

    async def _recover(self) -> tuple[TaskHandle | None, ExitResult | None]:
        """What an earlier agent left: a task to reattach to, or an exit to act on."""
        r, self._adopted = self._adopted, None
        if r is None:
            self._event("Received", "Task received by node")
            return None, None
        if r.identity.spec_hash != self.cfg.spec_hash:
            if r.running:
                self._event("Killing", "the task's spec changed while no agent watched it: "
                                       "replacing it")
                with contextlib.suppress(RuntimeDriverError):
                    await self.driver.stop(r.handle, self.task.kill_signal,
                                           self.task.kill_timeout)
            return None, None
        self.handle = r.handle
        self.started_at_ns = r.handle.started_at_ns
        self._run_started = self._clock()
        if r.running:
            self.state = "running"
            self._event("Reattached", f"Reattached to {self.driver.name} task {r.handle.id[:12]} "
                                      "after an agent restart")
            return r.handle, None
        return r.handle, r.exit

    async def _start(self) -> TaskHandle | None:
        """Start the task; None when it will not run (failed for good, or a stop came)."""
        waiting_said = False
        while not self._stop.is_set():
            if not self.driver.status.healthy:
                if not waiting_said:
                    self._event("Driver Failure", f"waiting for the {self.driver.name} driver: "
                                                  f"{self.driver.status.detail}")
                    waiting_said = True
                await self._until_stop_or(self.driver.wait_available())
                continue
            if self.files is not None and not await self._files_ready():
                continue
            try:
                handle = await self.driver.start(self.cfg)
            except DriverUnavailableError as e:
                self._event("Driver Failure", str(e))
                await self._until_stop_or(asyncio.sleep(DRIVER_RETRY))
                continue
            except StartError as e:
                self._event("Driver Failure", str(e))
                if e.recoverable and not self.driver.status.healthy:
                    continue  # the engine is going away: wait for it, do not count this
                if not await self._decide(self.tracker.on_start_error(
                        str(e), self._clock(), recoverable=e.recoverable)):
                    return None
                continue
            self.handle = handle
            self.state = "running"
            self._run_started = self._clock()
            self.started_at_ns = handle.started_at_ns or time.time_ns()
            self.finished_at_ns = 0
            self._event("Started", f"Task started by the {self.driver.name} driver "
                                   f"({handle.id[:12]})")
            return handle
        self._dead(failed=False)
        return None

    async def _watch(self, handle: TaskHandle) -> ExitResult | None:
        """Wait for the task's exit, probing its checks; on a stop request, stop it."""
        self._start_checks(handle)
        waiter = asyncio.ensure_future(self.driver.wait(handle))
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if waiter.done():
                return waiter.result()
            kind, reason = self._stop_event
            grace = human_duration(self.task.kill_timeout)
            self._event(kind, reason or f"Sent {self.task.kill_signal}, waiting {grace} before "
                                        "force killing")
            while True:
                try:
                    await self.driver.stop(handle, self.task.kill_signal, self.task.kill_timeout)
                    break
                except DriverUnavailableError as e:
                    self._event("Driver Failure", f"cannot stop the task now: {e}")
                    await self.driver.wait_available()
            exit_ = await waiter
            self.exit_code = exit_.exit_code
            self.finished_at_ns = exit_.finished_at_ns or time.time_ns()
            if not self._restart_requested and not self._health_failure:
                self._event("Killed", "Task successfully killed")
            return None
        finally:
            stopper.cancel()
            if not waiter.done():
                waiter.cancel()
            self._stop_checks()

    def _terminated(self, exit_: ExitResult) -> None:
        self.exit_code = exit_.exit_code
        self.finished_at_ns = exit_.finished_at_ns or time.time_ns()
        self._event("Terminated", exit_.describe())

    async def _decide(self, decision: Decision) -> bool:
        """Carry out a restart-policy decision; True when the task should be started again."""
        if decision.action == "restart":
            self.restarts += 1
            self.state = "pending"
            self._event("Restarting", decision.reason)
            await self._until_stop_or(asyncio.sleep(decision.delay))
            if self._stop.is_set():
                self._dead(failed=False)
                return False
            return True
        if decision.action == "complete":
            self._dead(failed=False)
            return False
        self._event("Not Restarting", decision.reason)
        self._dead(failed=True)
        return False

    def _dead(self, *, failed: bool) -> None:
        self.state = "dead"
        self.failed = failed
        if not self.finished_at_ns:
            self.finished_at_ns = time.time_ns()
        self._notify()

    async def _files_ready(self) -> bool:
        """Write the task's files; when they cannot be yet, say why and wait (False)."""
        assert self.files is not None
        self._files_wake.clear()
        try:
            problem = await self.files.prepare()
        except OSError as e:
            problem = f"cannot write the task's files: {e}"
        if not problem:
            self.cfg = dataclasses.replace(self.cfg, env={**self.cfg.env, **self.files.env})
            return True
        last = self.events[-1] if self.events else None
        if last is None or (last.type, last.message) != ("Template", problem):
            self._event("Template", problem)
        await self._until_stop_or(_wait_at_most(self._files_wake, FILES_RETRY))
        return False

    async def _until_stop_or(self, aw: Coroutine[Any, Any, object]) -> None:
        """Wait for ``aw`` or for a stop request, whichever comes first."""
        other = asyncio.ensure_future(aw)
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({other, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            other.cancel()
            stopper.cancel()

    # --- health checks -----------------------------------------------------------------

    def _start_checks(self, handle: TaskHandle) -> None:
        self._stop_checks()
        for tracker in self.checks:
            tracker.reset()
            probe = make_probe(tracker.check, host=self.check_host, ports=dict(self.cfg.ports),
                               driver=self.driver, handle=handle)
            self._check_tasks.append(asyncio.create_task(
                run_check(tracker, probe, self._check_changed, self._check_result),
                name=f"check {tracker.check.name}"))

    def _check_changed(self, tracker: CheckTracker) -> None:
        self._event("Health", f"check {tracker.check.name!r} is {tracker.verdict}: "
                              f"{tracker.output}")

    def _check_result(self, tracker: CheckTracker, result: CheckResult) -> None:
        """check_restart: a check that failed ``limit`` times in a row restarts the task."""
        if not tracker.counts_for_restart(result, self._clock() - self._run_started):
            return
        if self.state != "running" or self._stop.is_set():
            return
        policy = tracker.check.check_restart
        assert policy is not None
        name = tracker.check.name or tracker.check.type
        self._health_failure = (f"health check {name!r} failed {tracker.restart_failures} "
                                f"times in a row ({result.output})")
        self._stop_event = ("Restart Signaled", f"{self._health_failure}: check_restart limit "
                                                f"{policy.limit} reached")
        self._stop.set()

    def _stop_checks(self) -> None:
        for t in self._check_tasks:
            t.cancel()
        self._check_tasks.clear()


async def _wait_at_most(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
