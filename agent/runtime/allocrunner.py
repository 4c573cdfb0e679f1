"""One allocation on this node: its tasks, started together, reported together.

The AllocRunner makes the TaskConfig of every task (environment, labels,
ports, spec hash), hands each to a TaskRunner, and turns their states into the
allocation's status. When one task fails for good, its siblings are stopped
("Sibling Task Failed"), as Nomad does: the allocation has failed and the
controller decides where it runs next.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from orch.errors import DriverUnavailableError, RuntimeDriverError
from orch.jobspec.model import Check, Group, Task

from . import labels as lbl
from .alloc_health import HealthWatch
from .config import RuntimeConfig
from .driver import Recovered, TaskConfig, TaskDriver
from .ports import container_port
from .restart import RestartTracker
from .state import AllocSpec, AllocStatus, ClientStatus, TaskEvent, TaskStatus, client_status
from .taskfiles import Sources, TaskFiles, needs_files
from .taskrunner import TaskRunner
from .volumes import Mount, in_task_dir, task_mounts, volume_env

_ENV_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def task_checks(group: Group, task: Task) -> list[Check]:
    """The task's own checks, then those of the group's services the task serves, named."""
    out = []
    first = group.tasks[0].name if group.tasks else ""
    for i, c in enumerate(task.checks):
        out.append(c if c.name else replace(c, name=f"{task.name}-{c.type}-{i}"))
    for s in group.services:
        if s.check is not None and (s.task or first) == task.name:
            c = s.check if s.check.port else replace(s.check, port=s.port)
            out.append(c if c.name else replace(c, name=f"service: {s.name}"))
    return out




def task_env(spec: AllocSpec, task: Task, ports: Mapping[str, int], *, node_id: str,
             address: str, docker_joined: bool = False) -> dict[str, str]:
    """The task's environment: its own, then orch's variables (which win), as Nomad's NOMAD_*.

    The job's meta and the group's (which wins) are ``ORCH_META_<KEY>``: the key upper-cased,
    and as written too when that differs (a dispatched job's meta arrives this way).
    ``docker_joined``: docker tasks share a network namespace (``docker_network_mode``), so
    they listen on their host ports as in host mode."""
    env = dict(task.env)
    for key, value in {**spec.job_meta, **spec.group.meta}.items():
        name = _ENV_UNSAFE.sub("_", key)
        env[f"ORCH_META_{name.upper()}"] = value
        env[f"ORCH_META_{name}"] = value
    env.update({
        "ORCH_ALLOC_ID": spec.id, "ORCH_ALLOC_NAME": spec.name,
        "ORCH_ALLOC_INDEX": str(spec.index), "ORCH_JOB_NAME": spec.job,
        "ORCH_GROUP_NAME": spec.group.name, "ORCH_TASK_NAME": task.name,
        "ORCH_NAMESPACE": spec.namespace, "ORCH_NODE_ID": node_id,
        "ORCH_CPU_LIMIT": str(task.resources.cpu_millicores),
        "ORCH_MEMORY_LIMIT": str(task.resources.memory_mb),
    })
    bridged = task.driver == "docker" and spec.group.network.mode != "host" and not docker_joined
    for label, host_port in ports.items():
        key = _ENV_UNSAFE.sub("_", label)
        inside = container_port(spec.group.network, label, host_port) if bridged else host_port
        env[f"ORCH_PORT_{key}"] = str(inside)
        env[f"ORCH_HOST_PORT_{key}"] = str(host_port)
        env[f"ORCH_ADDR_{key}"] = f"{address}:{host_port}"
    return env


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def interpolate(task: Task, env: Mapping[str, str]) -> Task:
    """``${ORCH_PORT_http}`` and other variables of the task's environment, replaced in its
    command and args (as Nomad does with ``${NOMAD_PORT_http}``); unknown names stay."""
    def sub(text: str) -> str:
        return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), text)

    if "${" not in task.command and not any("${" in a for a in task.args):
        return task
    return replace(task, command=sub(task.command), args=tuple(map(sub, task.args)))


def _mounted_at(task: Task, mounts: tuple[Mount, ...], task_dir: Path) -> dict[str, str]:
    """Where the task finds each volume: the destination in a container, the folder in a
    process task's own (``local/<destination>``; the driver says otherwise when it cannot
    bind it there)."""
    if task.driver != "process":
        return {m.volume: m.destination for m in mounts}
    return {m.volume: str(task_dir / "local" / in_task_dir(m.destination)) for m in mounts}


class AllocRunner:
    """Runs the tasks of one allocation and reports its status."""

    def __init__(self, spec: AllocSpec, *, config: RuntimeConfig,
                 drivers: Mapping[str, TaskDriver], ports: Mapping[str, int],
                 notify: Callable[[str], None], recovered: Mapping[str, Recovered] | None = None,
                 rng: random.Random | None = None,
                 sources: Callable[[str], Sources] | None = None) -> None:
        self.spec = spec
        self._sources = sources
        """What the tasks' secrets and templates are made of, for a namespace."""
        self.config = config
        self.drivers = drivers
        self.ports = dict(ports)
        self._notify = notify
        self._recovered = dict(recovered or {})
        self._rng = rng
        self.tasks: dict[str, TaskRunner] = {}
        self.description = ""
        self._setup_failures: dict[str, TaskStatus] = {}
        self.modify_time_ns = time.time_ns()
        self.given_up = False
        """Stopped by this agent on its own: cut off from the controllers for longer than the
        group's ``disconnect.stop_after`` (reported lost)."""
        adopted = bool(recovered) and all(t.name in self._recovered for t in spec.group.tasks)
        self.health = HealthWatch(received_at=time.monotonic(),
                                  trusted=spec.healthy and adopted)
        """The verdict for deployments (``alloc_health``), fed on every change."""
        self._health_timer: asyncio.TimerHandle | None = None

    @property
    def id(self) -> str:
        return self.spec.id

    def changed(self) -> None:
        self.modify_time_ns = time.time_ns()
        self._watch_health()
        self._notify(self.spec.id)

    def _watch_health(self) -> None:
        """Feed the health watch what the tasks do now, and come back when its verdict
        would change with time alone (min_healthy_time or healthy_deadline runs out)."""
        _, cs, ok = self._summary()
        now = time.monotonic()
        update = self.spec.group.update
        self.health.observe(running=cs == "running", ok=ok, now=now,
                            min_healthy_time=update.min_healthy_time)
        _, at = self.health.verdict(now, min_healthy_time=update.min_healthy_time,
                                    healthy_deadline=update.healthy_deadline)
        if self._health_timer is not None:
            self._health_timer.cancel()
            self._health_timer = None
        if at is not None and cs in ("pending", "running"):
            self._health_timer = asyncio.get_running_loop().call_later(
                max(0.0, at - now) + 0.001, self.changed)

    def deployment_health(self) -> tuple[str, float | None]:
        """The verdict for deployments now, and in how many seconds it changes unless the
        tasks do (None: it does not)."""
        update, now = self.spec.group.update, time.monotonic()
        verdict, at = self.health.verdict(now, min_healthy_time=update.min_healthy_time,
                                          healthy_deadline=update.healthy_deadline)
        return verdict, None if at is None else max(0.0, at - now)

    async def resize(self, want: AllocSpec) -> bool:
        """Give the tasks whose CPU or memory changed their new limits in place; False when a
        driver cannot (the allocation is then replaced)."""
        old = {t.name: t for t in self.spec.group.tasks}
        for task in want.group.tasks:
            runner = self.tasks.get(task.name)
            if runner is None or old[task.name].resources == task.resources:
                continue
            if not await runner.resize(task.resources):
                return False
        return True

    def spec_hashes(self, spec: AllocSpec | None = None) -> dict[str, str]:
        s = spec or self.spec
        return {t.name: lbl.spec_hash(t, s.group.network, self.ports,
                                      task_mounts(s.group, s.index, t, self.config.host_volume)[0])
                for t in s.group.tasks}

    def task_config(self, task: Task) -> TaskConfig:
        s = self.spec
        task_dir = self.task_dir(task)
        mounts, _ = task_mounts(s.group, s.index, task, self.config.host_volume)
        spec_hash = lbl.spec_hash(task, s.group.network, self.ports, mounts)
        labels = lbl.task_labels(alloc_id=s.id, alloc_name=s.name, namespace=s.namespace,
                                 job=s.job, job_version=s.job_version, group=s.group.name,
                                 task=task, node=self.config.node_id, spec=spec_hash)
        labels[lbl.PORTS] = lbl.format_ports(self.ports)
        env = task_env(s, task, self.ports, node_id=self.config.node_id,
                       address=self.config.check_address,
                       docker_joined=bool(self.config.docker_network_mode))
        env.update(volume_env(mounts, _mounted_at(task, mounts, task_dir)))
        if self.config.dns_addr:
            env["ORCH_DNS"] = self.config.dns_addr
        search = tuple(f"service.{s.namespace}.{d}" for d in self.config.dns_search)
        return TaskConfig(
            alloc_id=s.id, task=interpolate(task, env), network=s.group.network, ports=self.ports,
            env=env,
            labels=labels, spec_hash=spec_hash, task_dir=task_dir,
            node_name=self.config.name, files=needs_files(task), payload=s.payload,
            mounts=mounts, dns_servers=self.config.dns_servers, dns_search=search)

    def task_dir(self, task: Task) -> Path:
        return Path(self.config.data_dir) / "alloc" / self.spec.id / task.name

    def _files(self, task: Task) -> TaskFiles | None:
        """The task's secrets and templates on disk (None when it has neither)."""
        if not needs_files(task) or self._sources is None:
            return None
        driver = self.drivers[task.driver]
        uid, gid = driver.file_owner(task)
        return TaskFiles(task, self.task_dir(task),
                         functools.partial(self._sources, self.spec.namespace),
                         in_container=driver.containerized, uid=uid, gid=gid)

    async def refresh_files(self) -> None:
        """The tasks' secrets or templates may read something new: render them again."""
        for runner in list(self.tasks.values()):
            await runner.refresh_files()

    def start(self) -> None:
        """Start a runner for every task (adopting what ``recovered`` says still runs)."""
        missing = [t for t in self.spec.group.tasks if t.driver not in self.drivers]
        if missing:
            for t in missing:
                known = ", ".join(sorted(self.drivers)) or "none"
                self._setup_failures[t.name] = TaskStatus(
                    state="dead", failed=True, finished_at_ns=time.time_ns(), events=(TaskEvent(
                        time_ns=time.time_ns(), type="Setup Failure",
                        message=f"driver {t.driver!r} is not available on node "
                                f"{self.config.name} (it has: {known})"),))
            self.description = "a task's driver is not available on this node"
            self.changed()
            return
        for t in self.spec.group.tasks:
            _, problems = task_mounts(self.spec.group, self.spec.index, t, self.config.host_volume)
            if problems:
                self._setup_failures[t.name] = TaskStatus(
                    state="dead", failed=True, finished_at_ns=time.time_ns(), events=(TaskEvent(
                        time_ns=time.time_ns(), type="Setup Failure",
                        message=f"task {t.name!r} cannot start on node {self.config.name}: "
                                f"{'; '.join(problems)}"),))
        if self._setup_failures:
            self.description = "a volume a task mounts is not on this node"
            self.changed()
            return
        for task in self.spec.group.tasks:
            runner = TaskRunner(
                task=task, cfg=self.task_config(task), driver=self.drivers[task.driver],
                tracker=RestartTracker(self.spec.group.restart, self.spec.job_type, self._rng),
                checks=task_checks(self.spec.group, task),
                check_host=self.config.check_address, notify=self.changed,
                adopted=self._recovered.pop(task.name, None), on_finished=self._task_finished,
                files=self._files(task))
            self.tasks[task.name] = runner
        for runner in self.tasks.values():
            runner.start()
        self.changed()

    def _task_finished(self, runner: TaskRunner) -> None:
        if not runner.failed:
            return
        for other in self.tasks.values():
            if other is not runner and other.state != "dead":
                other.request_stop("Sibling Task Failed",
                                   f"Task {runner.task.name!r} failed: stopping its siblings")

    def driver_changed(self, name: str) -> None:
        for runner in self.tasks.values():
            if runner.driver.name == name:
                runner.driver_changed()

    async def stop(self, reason: str = "", *, given_up: bool = False) -> None:
        """Stop every task (kill signal, grace, SIGKILL) and wait until they are dead.
        ``given_up``: the agent stops it on its own (no controller), and reports it lost."""
        if reason:
            self.description = reason
        if given_up:
            self.given_up = True
        for runner in self.tasks.values():
            runner.request_stop("Killing", reason if given_up else "")
        await asyncio.gather(*(r.wait_finished() for r in self.tasks.values()))
        self.changed()

    async def destroy(self) -> None:
        """Stop the tasks, then remove their containers (or task folders) and their logs."""
        await self.stop()
        if self._health_timer is not None:
            self._health_timer.cancel()
            self._health_timer = None
        for runner in self.tasks.values():
            if runner.files is not None:
                await runner.files.cleanup()
            if runner.handle is None:
                continue
            while True:
                try:
                    await runner.driver.destroy(runner.handle)
                    break
                except DriverUnavailableError:
                    await runner.driver.wait_available()
                except RuntimeDriverError:
                    break

    async def detach(self) -> None:
        """Forget the tasks and leave them running (agent shutdown)."""
        await asyncio.gather(*(r.detach() for r in self.tasks.values()))

    def restart(self, task: str | None = None) -> list[str]:
        """Restart the running tasks (or the one named); returns the names restarted."""
        done = []
        for name, runner in self.tasks.items():
            if task in (None, name) and runner.state == "running":
                runner.request_restart()
                done.append(name)
        return done

    @property
    def terminal(self) -> bool:
        return bool(self._setup_failures) or (
            bool(self.tasks) and all(r.state == "dead" for r in self.tasks.values()))

    def _summary(self) -> tuple[dict[str, TaskStatus], ClientStatus, bool]:
        """The tasks' statuses, the allocation's client status, and whether every task runs
        and passes its checks (a batch task that finished well counts as passing)."""
        tasks = {name: r.status() for name, r in self.tasks.items()}
        tasks.update(self._setup_failures)
        cs = client_status(tasks.values())
        if self.given_up and cs in ("complete", "failed"):
            cs = "lost"
        healthy = cs == "running" and all(
            t.healthy for n, t in tasks.items()
            if t.state != "dead" or t.failed or self.spec.job_type != "batch")
        return tasks, cs, healthy

    def status(self) -> AllocStatus:
        tasks, cs, healthy = self._summary()
        verdict, next_in = self.deployment_health()
        return AllocStatus(alloc_id=self.spec.id, client_status=cs, healthy=healthy,
                           tasks=tasks, ports=dict(self.ports), description=self.description,
                           modify_time_ns=self.modify_time_ns, job_version=self.spec.job_version,
                           deployment_health=verdict,
                           health_next_in=next_in if cs in ("pending", "running") else None)


async def stop_quietly(runner: AllocRunner) -> None:
    """``runner.destroy()``, never raising (used by background cleanups)."""
    with contextlib.suppress(RuntimeDriverError):
        await runner.destroy()
