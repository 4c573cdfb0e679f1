"""The node's task runtime: converges to the desired allocations the controller sends.

Usage from the agent (``agent/main.py``)::

    rt = Runtime(RuntimeConfig(node_id=..., data_dir=...))   # docker + process drivers
    await rt.start()                        # open the drivers, find what already runs
    await rt.apply(version, allocs)         # the node's full desired set, any number of times
    batch = await rt.next_updates()         # AllocStatus / DriverStatus changes to send on
    rt.usage()                              # CPU and memory per allocation (sampled)
    async for chunk in rt.logs(alloc, task, "stdout", follow=True): ...
    await rt.close()                        # tasks keep running; the next agent adopts them

``apply`` is level-triggered and idempotent. Each allocation converges on its
own (one lock per allocation, always towards the newest desired spec): start
what is missing, stop what is ``desired == "stop"``, remove what is no longer
in the set, replace what changed (another spec hash), update in place what did
not (a new job version with the same tasks). A failed or complete allocation
is left as it is: replacing it is the controller's decision. A set of an older
store epoch, or of an older version in the same epoch, is ignored (a restore of the
controllers' store advances the epoch: its versions start again).

Adoption: at start every driver lists this node's tasks (container labels,
process task folders). A desired allocation takes its tasks back (same spec:
reattached, nothing started twice); what no desired allocation claims is
stopped and removed, at the first ``apply`` from a controller of this node's cluster
(``agent.cluster_pin``) and then every ``gc_interval``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orch.errors import DriverUnavailableError, NotFoundError, RuntimeDriverError
from orch.templates import Endpoint

from . import labels as lbl
from .allocrunner import AllocRunner
from .config import RuntimeConfig
from .docker import DockerDriver
from .driver import ExecSession, ExecSpec, LogChunk, Recovered, Stream, TaskDriver, Usage
from .ports import assign_ports
from .process import ProcessDriver
from .state import AllocSpec, AllocStatus, DriverStatus
from .taskfiles import Sources
from .volumes import task_mounts

log = logging.getLogger("runtime")

Update = AllocStatus | DriverStatus


@dataclass(frozen=True, slots=True, kw_only=True)
class AllocUsage:
    alloc_id: str
    cpu_seconds: float
    """CPU time used by the allocation's running tasks (cumulative, per task run)."""
    memory_bytes: int
    sampled_at_ns: int
    tasks: Mapping[str, Usage] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TaskRun:
    """One run of a task, as a log follower tells runs apart."""

    state: str
    handle: str
    """The process or container ("" before the first start)."""
    started_at_ns: int

    def __bool__(self) -> bool:
        return bool(self.handle)


def default_drivers(config: RuntimeConfig) -> dict[str, TaskDriver]:
    """The docker and process drivers, configured from ``config``."""
    return {
        "docker": DockerDriver(
            node_id=config.node_id, node_name=config.name, url=config.docker_url,
            allow_privileged=config.allow_privileged,
            allow_host_network=config.allow_host_network, log_max_bytes=config.log_max_bytes,
            log_max_files=config.log_max_files, pull_timeout=config.image_pull_timeout,
            bind_address=config.docker_bind_address, network_mode=config.docker_network_mode,
            pids_limit=config.pids_limit),
        "process": ProcessDriver(config.data_dir, node_id=config.node_id,
                                 log_max_bytes=config.log_max_bytes,
                                 log_max_files=config.log_max_files,
                                 limits=config.process_limits, task_user=config.task_user,
                                 allow_root=config.allow_root_tasks),
    }


class Runtime:
    """Runs this node's allocations on its task drivers."""

    def __init__(self, config: RuntimeConfig, drivers: Mapping[str, TaskDriver] | None = None,
                 *, rng: random.Random | None = None) -> None:
        self.config = config
        self.drivers = dict(drivers) if drivers is not None else default_drivers(config)
        self.version = -1
        """The version of the last desired set applied (-1: none yet)."""
        self.epoch = 0
        """The store epoch of the last desired set applied: a newer one resets the version."""
        self._may_remove_strays = False
        self._rng = rng or random.Random()
        self._desired: dict[str, AllocSpec] = {}
        self._runners: dict[str, AllocRunner] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._recovered: dict[str, dict[str, Recovered]] = {}
        self._dirty: dict[str, None] = {}
        self._driver_dirty: dict[str, DriverStatus] = {}
        self._wake = asyncio.Event()
        self._usage: dict[str, AllocUsage] = {}
        self._background: set[asyncio.Task[object]] = set()
        self._loops: list[asyncio.Task[object]] = []
        self._driver_seen: dict[str, DriverStatus] = {}
        self.driver_failures: dict[str, int] = {}
        """Times each driver went from healthy to unhealthy (its engine stopped answering)."""
        self.secrets: dict[tuple[str, str], bytes] = {}
        """(namespace, name) -> the value the controller sent last (in memory only)."""
        self.catalog: Callable[[str, str], Iterable[Endpoint]] = lambda _ns, _name: ()
        """(namespace, service) -> its healthy endpoints."""
        """A service's healthy endpoints (templates' ``service()``); the agent sets it."""
        self.node_info: Callable[[], Mapping[str, Any]] = dict
        """This node as templates see it (``node.name``, ``node.attr[...]``)."""

    # --- life --------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the drivers (a driver that is down is reported, not fatal), find what runs."""
        for name, driver in self.drivers.items():
            driver.on_status(functools.partial(self._driver_changed, name))
            await driver.open()
            self._driver_changed(name, driver.status)
        for driver in self.drivers.values():
            if not driver.status.healthy:
                continue  # its tasks are found by name when they start, or by the GC sweep
            try:
                found = await driver.recover()
            except DriverUnavailableError as e:
                log.warning("cannot list the %s driver's tasks: %s", driver.name, e)
                continue
            for r in found:
                self._recovered.setdefault(r.identity.alloc_id, {})[r.identity.task] = r
        log.info("runtime started", extra={"node": self.config.node_id, "recovered": sum(
            len(t) for t in self._recovered.values())})
        self._loops = [asyncio.create_task(self._usage_loop(), name="runtime-usage"),
                       asyncio.create_task(self._gc_loop(), name="runtime-gc")]

    async def close(self, *, stop_tasks: bool = False, grace: float = 60.0) -> None:
        """Stop the runtime. The tasks keep running (adopted by the next agent) unless
        ``stop_tasks``: then they are stopped and removed, for at most ``grace`` seconds
        (what a driver that is down cannot stop is left to the next agent)."""
        for t in self._loops:
            t.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        runners = list(self._runners.values())
        if stop_tasks and runners:
            work = [asyncio.ensure_future(r.destroy()) for r in runners]
            _, late = await asyncio.wait(work, timeout=grace)
            for t in late:
                t.cancel()
            await asyncio.gather(*work, return_exceptions=True)
        await asyncio.gather(*(r.detach() for r in runners), return_exceptions=True)
        for t in list(self._background):
            t.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for driver in self.drivers.values():
            await driver.close()

    # --- the desired set ---------------------------------------------------------------

    async def apply(self, version: int, allocs: Iterable[AllocSpec], *, epoch: int = 0,
                    remove_strays: bool = True) -> bool:
        """Converge to ``allocs``, the node's full desired set; False if it is stale: an older
        store ``epoch``, or an older ``version`` in the same epoch (a newer epoch, after a
        restore, starts the versions again).

        Returns at once: starting and stopping go on in the background, and their
        progress comes out of ``next_updates``. Tasks no allocation claims are removed
        from the first set applied with ``remove_strays`` on (the caller placed the sender
        in this node's cluster), and every ``gc_interval`` after.
        """
        if (epoch, version) < (self.epoch, self.version):
            log.info("ignored a stale desired set", extra={
                "version": version, "epoch": epoch, "current": self.version,
                "current_epoch": self.epoch})
            return False
        if epoch > self.epoch and self.version >= 0:
            log.info("a desired set of a newer store epoch: its versions start again",
                     extra={"epoch": epoch, "version": version, "was": self.version})
        self.epoch, self.version = epoch, version
        self._desired = {a.id: a for a in allocs}
        for aid in set(self._desired) | set(self._runners):
            self._spawn(self._converge(aid), f"converge {aid}")
        if remove_strays and not self._may_remove_strays:
            self._may_remove_strays = True
            strays = [r for aid, tasks in self._recovered.items() for r in tasks.values()
                      if aid not in self._desired]
            for r in strays:
                self._spawn(self._remove_stray(r), f"gc {r.identity.alloc_id}")
        return True

    def set_secrets(self, values: Mapping[tuple[str, str], bytes]) -> None:
        """The secrets the controller sent with the desired set; the tasks that read one that
        changed are told."""
        if dict(values) != self.secrets:
            self.secrets = dict(values)
            self._spawn(self.refresh_files(), "refresh task files")

    def sources(self, namespace: str) -> Sources:
        """What a task of ``namespace`` renders its files from."""
        return Sources(secrets={n: v for (ns, n), v in self.secrets.items() if ns == namespace},
                       services=lambda name: self.catalog(namespace, name),
                       node=self.node_info())

    async def refresh_files(self) -> None:
        """Render every task's secrets and templates again (their inputs may have changed)."""
        for runner in list(self._runners.values()):
            await runner.refresh_files()

    def _lock(self, aid: str) -> asyncio.Lock:
        return self._locks.setdefault(aid, asyncio.Lock())

    async def _converge(self, aid: str) -> None:
        async with self._lock(aid):
            want = self._desired.get(aid)
            runner = self._runners.get(aid)
            if want is None:
                if runner is not None:
                    await self._shutdown_delay(runner)
                    await runner.destroy()
                    del self._runners[aid]
                    self._usage.pop(aid, None)
                self._locks.pop(aid, None)
                return
            if want.desired == "stop":
                if runner is not None and not runner.terminal:
                    await self._shutdown_delay(runner)
                    await runner.stop("the allocation's desired status is stop")
                elif runner is None:
                    for r in self._recovered.pop(aid, {}).values():
                        await self._remove(r)
                return
            if runner is None:
                self._start_runner(want, previous_ports={})
                return
            if runner.terminal or want == runner.spec:
                return
            ports = self._ports_for(want, previous=runner.ports, exclude=aid)
            if self._hashes(want, ports) != runner.spec_hashes() or not await runner.resize(want):
                runner.description = f"replaced by job version {want.job_version}"
                await runner.destroy()
                self._start_runner(want, previous_ports=ports)
            else:
                runner.spec = want  # same tasks (perhaps new limits): updated in place
                runner.changed()

    @staticmethod
    async def _shutdown_delay(runner: AllocRunner) -> None:
        """Let connections drain: the agent has withdrawn the allocation's endpoints already
        (they leave every load balancer within a few gossip rounds)."""
        delay = runner.spec.group.shutdown_delay
        if delay > 0 and not runner.terminal:
            runner.description = f"leaving the load balancer; stopping in {delay:g}s"
            runner.changed()
            await asyncio.sleep(delay)

    def _start_runner(self, spec: AllocSpec, previous_ports: Mapping[str, int]) -> None:
        recovered = self._recovered.pop(spec.id, {})
        kept = dict(previous_ports)
        for r in recovered.values():
            kept.update(dict(r.identity.ports))
        try:
            ports = self._ports_for(spec, previous=kept, exclude=spec.id)
        except RuntimeDriverError as e:
            ports = {}
            log.warning("%s", e, extra={"alloc": spec.id})
        runner = AllocRunner(spec, config=self.config, drivers=self.drivers, ports=ports,
                             notify=self._alloc_changed, recovered=recovered, rng=self._rng,
                             sources=self.sources)
        self._runners[spec.id] = runner
        runner.start()

    def _hashes(self, spec: AllocSpec, ports: Mapping[str, int]) -> dict[str, str]:
        return {t.name: lbl.spec_hash(t, spec.group.network, ports,
                                      task_mounts(spec.group, spec.index, t,
                                                  self.config.host_volume)[0])
                for t in spec.group.tasks}

    def _ports_for(self, spec: AllocSpec, *, previous: Mapping[str, int],
                   exclude: str) -> dict[str, int]:
        given = {**previous, **{k: v for k, v in spec.ports.items() if v > 0}}
        used = {p for aid, r in self._runners.items() if aid != exclude for p in r.ports.values()}
        lo, hi = self.config.dynamic_ports
        return assign_ports(spec.group.network, given, used, lo=lo, hi=hi, is_free=self._port_free)

    def _port_free(self, port: int) -> bool:
        with socket.socket() as s:
            try:
                s.bind((self.config.docker_bind_address or "0.0.0.0", port))
            except OSError:
                return False
        return True

    # --- cut off from the controllers --------------------------------------------------

    def stop_disconnected(self, offline: float) -> list[str]:
        """Stop the allocations whose group's ``disconnect.stop_after`` is shorter than
        ``offline`` (seconds since a controller was last heard), so that a copy the
        controller placed elsewhere does not run beside them for longer; they are reported
        lost when the controllers are back. Returns the ids stopped now."""
        stopped = []
        for aid, runner in list(self._runners.items()):
            policy = runner.spec.group.disconnect
            if policy is None or policy.stop_after <= 0 or offline < policy.stop_after \
                    or runner.given_up or runner.terminal:
                continue
            reason = (f"no controller heard for {offline:.1f}s: stopped by the agent "
                      f"(disconnect.stop_after {policy.stop_after:g}s)")
            log.warning("stopping an allocation cut off from the controllers",
                        extra={"alloc": aid, "offline": round(offline, 1),
                               "stop_after": policy.stop_after})
            self._spawn(runner.stop(reason, given_up=True), f"disconnect {aid}")
            stopped.append(aid)
        return stopped

    # --- garbage collection ------------------------------------------------------------

    async def _gc_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.gc_interval)
            await self.collect_garbage()

    async def collect_garbage(self) -> int:
        """Stop and remove this node's orch tasks that no allocation owns; returns how many.
        Nothing is removed before a desired set of this node's cluster was applied."""
        if not self._may_remove_strays:
            return 0
        removed = 0
        for driver in self.drivers.values():
            if not driver.status.healthy:
                continue
            try:
                found = await driver.recover()
            except DriverUnavailableError:
                continue
            for r in found:
                if r.identity.alloc_id not in self._runners and await self._remove_stray(r):
                    removed += 1
        return removed

    async def _remove_stray(self, r: Recovered) -> bool:
        aid = r.identity.alloc_id
        async with self._lock(aid):
            want = self._desired.get(aid)
            if aid in self._runners or (want is not None and want.desired == "run"):
                return False
            return await self._remove(r)

    async def _remove(self, r: Recovered) -> bool:
        driver = self.drivers.get(r.handle.driver)
        if driver is None:
            return False
        log.info("removing a task no allocation owns", extra={
            "alloc": r.identity.alloc_id, "task": r.identity.task, "id": r.handle.id})
        try:
            if r.running:
                await driver.stop(r.handle, "SIGTERM", self.config.gc_kill_timeout)
            await driver.destroy(r.handle)
        except RuntimeDriverError as e:
            log.warning("could not remove a stray task: %s", e, extra={"id": r.handle.id})
            return False
        return True

    # --- what it reports ---------------------------------------------------------------

    def _alloc_changed(self, aid: str) -> None:
        self._dirty[aid] = None
        self._wake.set()

    def _driver_changed(self, name: str, status: DriverStatus) -> None:
        old = self._driver_seen.get(name)
        if old is not None and old.healthy and not status.healthy:
            self.driver_failures[name] = self.driver_failures.get(name, 0) + 1
        self._driver_seen[name] = status
        self._driver_dirty[name] = status
        self._wake.set()
        for runner in self._runners.values():
            runner.driver_changed(name)

    async def next_updates(self) -> list[Update]:
        """Wait for changes, then return them: driver statuses, then allocation statuses.

        Changes made while nobody waited are coalesced (the newest status of each).
        """
        await self._wake.wait()
        self._wake.clear()
        out: list[Update] = list(self._driver_dirty.values())
        self._driver_dirty.clear()
        for aid in self._dirty:
            runner = self._runners.get(aid)
            if runner is not None:
                out.append(runner.status())
        self._dirty.clear()
        return out

    def statuses(self) -> list[AllocStatus]:
        """The status of every allocation this node runs or ran (a full report)."""
        return [r.status() for r in self._runners.values()]

    def status(self, alloc_id: str) -> AllocStatus:
        return self._runner(alloc_id).status()

    def specs(self) -> dict[str, AllocSpec]:
        """The desired allocations of the last set applied."""
        return dict(self._desired)

    def check_results(self) -> list[tuple[str, str, str, int, int, bool]]:
        """(alloc id, task, check, passed, failed, passing now) for every check on this node."""
        out = []
        for runner in self._runners.values():
            for name, task in runner.tasks.items():
                for i, c in enumerate(task.checks):
                    out.append((runner.id, name, c.check.name or f"{c.check.type}-{i}",
                                c.passed_total, c.failed_total, c.healthy))
        return out

    def task_run(self, alloc_id: str, task: str) -> TaskRun:
        """The task's state and its current run: which process or container (a new one writes
        a log of its own, whose offsets start again) and when it started (a new start of the
        same container, as Docker's restarts are, appends to its log)."""
        runner = self._runner(alloc_id).tasks.get(task)
        if runner is None:
            raise NotFoundError(f"allocation {alloc_id} has no task {task!r}")
        return TaskRun(state=runner.state,
                       handle=runner.handle.id if runner.handle is not None else "",
                       started_at_ns=runner.started_at_ns if runner.handle is not None else 0)

    def task_names(self, alloc_id: str) -> list[str]:
        """The tasks of an allocation on this node, in the group's order."""
        return list(self._runner(alloc_id).tasks)

    def driver_statuses(self) -> list[DriverStatus]:
        return [d.status for d in self.drivers.values()]

    def _runner(self, alloc_id: str) -> AllocRunner:
        runner = self._runners.get(alloc_id)
        if runner is None:
            raise NotFoundError(f"allocation {alloc_id} is not on node {self.config.name}")
        return runner

    # --- usage, logs, restarts ---------------------------------------------------------

    async def _usage_loop(self) -> None:
        while True:
            await self.sample_usage()
            await asyncio.sleep(self.config.usage_interval)

    async def sample_usage(self) -> dict[str, AllocUsage]:
        """Sample CPU and memory of every running task now; also kept for ``usage()``."""
        async def one(runner: AllocRunner) -> AllocUsage:
            names, calls = [], []
            for name, t in runner.tasks.items():
                if t.state == "running" and t.handle is not None and t.driver.status.healthy:
                    names.append(name)
                    calls.append(t.driver.usage(t.handle))
            got = await asyncio.gather(*calls, return_exceptions=True)
            tasks = {n: u for n, u in zip(names, got, strict=True) if isinstance(u, Usage)}
            return AllocUsage(alloc_id=runner.id, sampled_at_ns=time.time_ns(), tasks=tasks,
                              cpu_seconds=sum(u.cpu_seconds for u in tasks.values()),
                              memory_bytes=sum(u.memory_bytes for u in tasks.values()))
        runners = list(self._runners.values())
        samples = await asyncio.gather(*(one(r) for r in runners))
        self._usage = {s.alloc_id: s for s in samples}
        return dict(self._usage)

    def usage(self) -> dict[str, AllocUsage]:
        """The last sample per allocation (every ``usage_interval`` seconds)."""
        return dict(self._usage)

    async def logs(self, alloc_id: str, task: str, stream: Stream = "stdout", *,
                   offset: int = 0, follow: bool = False) -> AsyncIterator[LogChunk]:
        """A task's output from byte ``offset`` (negative: from the end); ``follow`` waits
        for more until the task exits."""
        runner = self._runner(alloc_id).tasks.get(task)
        if runner is None or runner.handle is None:
            raise NotFoundError(f"task {task!r} of allocation {alloc_id} has not run here")
        async for chunk in runner.driver.logs(runner.handle, stream, offset=offset,
                                              follow=follow):
            yield chunk

    async def exec_session(self, alloc_id: str, task: str, spec: ExecSpec) -> ExecSession:
        """Start a command in a running task of an allocation (``orchctl alloc exec``);
        NotFoundError or RuntimeDriverError saying why it cannot run."""
        runner = self._runner(alloc_id)
        names = list(runner.tasks)
        name = task or (names[0] if names else "")
        t = runner.tasks.get(name)
        if t is None:
            raise NotFoundError(f"allocation {alloc_id[:8]} has no task {name!r} on node "
                                f"{self.config.name} (tasks: {', '.join(names) or 'none'})")
        if t.state != "running" or t.handle is None:
            raise RuntimeDriverError(f"task {name!r} of allocation {alloc_id[:8]} is {t.state}: "
                                     "a command runs only in a running task")
        return await t.driver.exec_session(t.handle, spec)

    async def log_offset(self, alloc_id: str, task: str, stream: Stream, since_ns: int) -> int:
        """Where a task's ``stream`` starts to hold what was written at or after ``since_ns``."""
        runner = self._runner(alloc_id).tasks.get(task)
        if runner is None or runner.handle is None:
            raise NotFoundError(f"task {task!r} of allocation {alloc_id} has not run here")
        return await runner.driver.log_offset(runner.handle, stream, since_ns)

    def restart(self, alloc_id: str, task: str | None = None) -> list[str]:
        """Restart an allocation's running tasks (or one): ``orchctl alloc restart``."""
        return self._runner(alloc_id).restart(task)

    # --- helpers -----------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, object], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[object]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("runtime background work failed: %r", task.exception(),
                      exc_info=task.exception())

    async def settle(self) -> None:
        """Wait until the convergence work started so far is done (for tests and tools)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.sleep(0)
