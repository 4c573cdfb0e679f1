"""The ``process`` driver: a plain child process per task, limited by cgroups.

For hosts without Docker, the local demo and fast tests. Where the agent may create
cgroups (root, cgroup v1 or v2 with the cpu and memory controllers), each task gets one
(``cgroups``): a hard memory limit (``oom_killed`` when the kernel ends it) and a CPU
weight in proportion to its millicores; otherwise tasks run without limits, as Nomad's
raw_exec, and the node says so (attribute ``driver.process.limits``). Each task runs under
its own supervisor (``process_shim``) in its own session and process group,
so it outlives an agent restart; the task's folder in the data dir holds::

    spec.json    what to run (argv, env, cwd, user, cgroup), its labels and log limits
    state.json   written by the shim once the task runs: pids, start time
    exit.json    written by the shim when the task exited: code, signal, time
    shim.log     the shim's own errors
    logs/        <task>.stdout.<offset>, <task>.stderr.<offset> (``logfiles``)
    local/       the task's default working directory; the host volumes it mounts are
                 bound in it, at local/<destination> (``binds``)

Exits are noticed through a pidfd on the shim (no polling, works for shims an
earlier agent started); stopping signals the task's whole process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pwd
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import agent
from orch.errors import RuntimeDriverError, StartError
from orch.jobspec.model import Resources, Task

from . import binds, logfiles, spawn
from . import labels as lbl
from .cgroups import CgroupError, Hierarchy, TaskCgroup, cgroup_name
from .driver import (
    PAYLOAD_FILE,
    ExecResult,
    ExecSession,
    ExecSpec,
    ExitResult,
    LogChunk,
    Recovered,
    Stream,
    TaskConfig,
    TaskDriver,
    TaskHandle,
    Usage,
    parse_signal,
)
from .process_exec import ProcessExec
from .volumes import in_task_dir, volume_env

log = logging.getLogger("runtime.process")

SHIM_START_TIMEOUT = 10.0
"""Seconds to wait for the shim to say that the task runs."""
LOG_POLL_INTERVAL = 0.2
"""Seconds between looks at a followed log file that has no new bytes."""
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(slots=True)
class _Watch:
    """One task whose exit we wait for: the shim's pidfd and the future it resolves."""

    handle: TaskHandle
    task_dir: Path
    pgid: int
    future: asyncio.Future[ExitResult]
    pidfd: int = -1


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def default_task_user() -> str:
    """``orch-task`` when this node has that user (the installer makes it), else ``nobody``."""
    try:
        pwd.getpwnam(TASK_USER)
    except KeyError:
        return "nobody"
    return TASK_USER


def _prepare(task_dir: Path, uid: int, gid: int) -> None:
    """The task's folders: its own (``local``, its working folder, entered as root before it
    becomes its user) belongs to its user, mode 0700; the rest (its spec with the env, its
    logs) is the agent's, and the folders above let it through without letting anyone list
    them."""
    local = task_dir / "local"
    local.mkdir(parents=True, exist_ok=True)
    for d in (task_dir.parent, task_dir):
        d.chmod(0o711)
    if os.geteuid() == 0:
        os.chown(local, uid, gid)
    local.chmod(0o700)


RESOLV_CONF = "resolv.conf"
"""A process task's resolver file, in its ``local/`` (``RES_OPTIONS``/``LOCALDOMAIN`` or a
bind mount make programs use it; ``ORCH_DNS`` names the agent's DNS with its port)."""


def _resolv_conf(path: Path, cfg: TaskConfig, uid: int, gid: int) -> None:
    """The task's ``resolv.conf``: the agent's DNS on port 53 when it listens there, and
    the task's search domains."""
    lines = ["# the orch agent's DNS (ORCH_DNS names it with its port)"]
    lines += [f"nameserver {s}" for s in cfg.dns_servers]
    if cfg.dns_search:
        lines.append("search " + " ".join(cfg.dns_search))
    if not cfg.dns_servers and not cfg.env.get("ORCH_DNS"):
        path.unlink(missing_ok=True)
        return
    path.write_text("\n".join(lines) + "\n")
    if os.geteuid() == 0:
        os.chown(path, uid, gid)


def _payload(path: Path, data: bytes, uid: int, gid: int) -> None:
    """A dispatched job's payload for the task: its user's, read-only (0400), written anew
    (an earlier one, e.g. of a task restarted, replaced whole)."""
    if not data:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
    try:
        os.write(fd, data)
        if os.geteuid() == 0:
            os.fchown(fd, uid, gid)
    finally:
        os.close(fd)
    tmp.replace(path)


def _as_task(argv: list[str], user: str, cgroup: dict[str, Any] | None) -> list[str]:
    """``argv`` wrapped to join the task's cgroup (as root) and then become its user."""
    if os.geteuid() != 0:
        return argv
    if user:
        argv = ["setpriv", f"--reuid={user}", f"--regid={_gid_of(user)}", "--init-groups",
                "--", *argv]
    procs = [str(Path(p) / "cgroup.procs") for p in (cgroup or {}).get("paths", [])]
    if procs:
        script = ('n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1"; shift; n=$((n-1)); '
                  'done; exec "$@"')
        argv = ["/bin/sh", "-c", script, "sh", str(len(procs)), *procs, *argv]
    return argv


def _gid_of(user: str) -> int:
    try:
        return (pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)).pw_gid
    except KeyError:
        return 65534  # nogroup: the check then fails as the task would


def _cgroup_of(task_dir: Path) -> TaskCgroup | None:
    doc = (read_json(task_dir / "spec.json") or {}).get("cgroup")
    return TaskCgroup.from_doc(doc) if doc else None


def _shim_alive(shim_pid: int, task_dir: Path) -> bool:
    """Whether ``shim_pid`` is still our shim for ``task_dir`` (and not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{shim_pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{shim_pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    zombie = stat[stat.rfind(")") + 2:].startswith("Z")
    return not zombie and b"agent.runtime.process_shim" in cmdline and \
        os.fsencode(str(task_dir)) in cmdline


def _reap(pid: int, flags: int) -> None:
    """Collect ``pid``'s exit status if it is our child (a shim an earlier agent started is not)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, flags)


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def group_usage(pgids: set[int]) -> dict[int, Usage]:
    """CPU seconds and resident bytes summed over each process group (one /proc scan)."""
    cpu: dict[int, int] = dict.fromkeys(pgids, 0)
    rss: dict[int, int] = dict.fromkeys(pgids, 0)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        pgrp = int(fields[2])
        if pgrp in cpu:
            cpu[pgrp] += int(fields[11]) + int(fields[12])
            rss[pgrp] += int(fields[21]) * _PAGE
    return {g: Usage(cpu_seconds=cpu[g] / _CLK_TCK, memory_bytes=rss[g]) for g in pgids}


TASK_USER = "orch-task"
"""The unprivileged user process tasks run as by default (made by deploy/install.sh)."""


class ProcessDriver(TaskDriver):
    """Tasks as supervised child processes, their state in ``data_dir/alloc``."""

    name = "process"

    def __init__(self, data_dir: Path, *, node_id: str, log_max_bytes: int = 10 << 20,
                 log_max_files: int = 3, python: str = sys.executable,
                 limits: bool = True, task_user: str = "", allow_root: bool = False) -> None:
        super().__init__()
        self.alloc_dir = Path(data_dir) / "alloc"
        self.node_id = node_id
        self.log_max_bytes, self.log_max_files = log_max_bytes, log_max_files
        self.python = python
        self.limits = limits
        """Enforce tasks' CPU and memory with cgroups when this host allows it."""
        self.task_user = task_user
        self.allow_root = allow_root
        self.cgroups: Hierarchy | None = None
        self.no_limits = "switched off (limits = false)"
        """Why tasks run without limits (when ``cgroups`` is None)."""
        self._watches: dict[str, _Watch] = {}

    # --- life of the driver -----------------------------------------------------------

    async def open(self) -> None:
        self.alloc_dir.mkdir(parents=True, exist_ok=True)
        self.alloc_dir.chmod(0o711)  # tasks reach their own folder; nobody lists the others
        if self.limits and self.cgroups is None:
            try:
                self.cgroups = await asyncio.to_thread(Hierarchy.detect, self.node_id)
                await asyncio.to_thread(self.cgroups.sweep)
            except (CgroupError, OSError) as e:
                self.no_limits = str(e)
                log.warning("process tasks will run without CPU and memory limits",
                            extra={"reason": self.no_limits})
        limits = self.cgroups.describe() if self.cgroups else f"none: {self.no_limits}"
        self._set_status(True, f"process driver, python {sys.version.split()[0]}, "
                               f"limits {limits}")

    def attributes(self) -> dict[str, str]:
        return {"driver.process.limits":
                f"cgroup-v{self.cgroups.version}" if self.cgroups else "none"}

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for w in self._watches.values():
            if w.pidfd >= 0:
                loop.remove_reader(w.pidfd)
                os.close(w.pidfd)
                w.pidfd = -1
            if not w.future.done():
                w.future.cancel()
        self._watches.clear()
        if self.cgroups is not None:  # only when no task runs on (they outlive the agent)
            await asyncio.to_thread(self.cgroups.release)
        self._set_status(False, "closed")

    # --- tasks -------------------------------------------------------------------------

    async def start(self, cfg: TaskConfig) -> TaskHandle:
        task_dir = cfg.task_dir
        task = cfg.task
        if not task.command:
            raise StartError(f"task {task.name!r} has no command: the process driver runs "
                             "task.command with task.args", recoverable=False)
        parse_signal(task.kill_signal)
        running = self._running_in(task_dir)
        if running is not None:
            if running.get("spec_hash") == cfg.spec_hash:
                return self._attach(task_dir, running).handle
            await self._stop_dir(task_dir, running, task.kill_signal, task.kill_timeout)
        for stale in ("state.json", "exit.json"):
            (task_dir / stale).unlink(missing_ok=True)
        user, uid, gid = self._user(task.name, task.user)
        _prepare(task_dir, uid, gid)
        _payload(task_dir / PAYLOAD_FILE, cfg.payload, uid, gid)
        _resolv_conf(task_dir / "local" / RESOLV_CONF, cfg, uid, gid)
        env = dict(cfg.env)
        env.update(await asyncio.to_thread(self._mount_volumes, cfg))
        env.setdefault("PATH", os.environ.get("PATH", os.defpath))
        cgroup = None
        if self.cgroups is not None:
            cgroup = self.cgroups.task(cgroup_name(cfg.alloc_id, task.name))
            res = task.resources
            try:
                await asyncio.to_thread(cgroup.create, res.cpu_millicores, res.memory_mb)
            except CgroupError as e:
                raise StartError(str(e), recoverable=True) from None
        spec = {
            "name": task.name, "argv": [task.command, *task.args], "env": env,
            "cwd": task.workdir or str(task_dir / "local"), "user": user,
            "log_max_bytes": self.log_max_bytes, "log_max_files": self.log_max_files,
            "labels": dict(cfg.labels), "spec_hash": cfg.spec_hash,
            "kill_signal": task.kill_signal,
            "cgroup": cgroup.to_doc() if cgroup is not None else None,
        }
        tmp = task_dir / "spec.json.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the env
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(spec))
        tmp.replace(task_dir / "spec.json")
        shim_pid, out = self._spawn_shim(task_dir)
        line = await self._first_line(shim_pid, out)
        if not line.startswith("ok "):
            await asyncio.to_thread(_reap, shim_pid, 0)
            message = line[len("error "):] if line.startswith("error ") else (
                f"the process supervisor exited before starting the task (see {task_dir}/shim.log)")
            raise StartError(message, recoverable=not line.startswith("error "))
        state = read_json(task_dir / "state.json")
        if state is None:
            raise StartError(f"the process supervisor wrote no state in {task_dir}",
                             recoverable=True)
        state["spec_hash"] = cfg.spec_hash
        return self._attach(task_dir, state).handle

    def _mount_volumes(self, cfg: TaskConfig) -> dict[str, str]:
        """Bind the task's volumes into its folder (what an earlier run left is detached
        first); where this agent may not mount, the task gets each volume's own path in
        ``ORCH_VOLUME_<name>`` instead, unless it is to be read-only and is not already.
        Returns the variables that change."""
        left = binds.unbind_all(cfg.task_dir / "local")  # (secrets/ is the task's files' tmpfs)
        if left:
            raise StartError(f"cannot detach what an earlier run mounted in {cfg.task_dir}: "
                             f"{', '.join(left)}", recoverable=True)
        local = cfg.task_dir / "local"
        direct: dict[str, str] = {}
        for m in cfg.mounts:
            where = f"volume {m.volume!r} of task {cfg.task.name!r}"
            try:
                binds.bind(m.source, local, in_task_dir(m.destination), read_only=m.read_only)
                continue
            except binds.BindUnavailable as e:
                if m.read_only and not binds.read_only_fs(m.source):
                    raise StartError(
                        f"cannot mount {where} read-only on node {cfg.node_name}: this agent "
                        f"may not make mounts ({e.strerror}), and {m.source} is writable. The "
                        "process driver binds volumes into the task's folder, which needs "
                        "CAP_SYS_ADMIN; or declare the host volume read_only on a read-only "
                        "folder", recoverable=False) from None
                log.info("cannot bind a volume into a process task; it gets the volume's path",
                         extra={"alloc": cfg.alloc_id, "task": cfg.task.name,
                                "volume": m.volume, "reason": e.strerror})
            except OSError as e:
                binds.unbind_all(cfg.task_dir)
                raise StartError(f"cannot mount {where} ({m.source}): {e.strerror}",
                                 recoverable=False) from None
            direct.update(volume_env([m], {m.volume: m.source}))
        return direct

    def _spawn_shim(self, task_dir: Path) -> tuple[int, int]:
        """Start the shim in a session of its own: (its pid, the read end of its stdout).

        posix_spawn rather than subprocess.Popen: the shim must outlive this driver, and
        whoever notices its exit (this driver or the next in the same process) reaps it.
        """
        root = str(Path(agent.__file__).resolve().parent.parent)
        env = {"PATH": os.environ.get("PATH", os.defpath), "PYTHONPATH": root,
               "PYTHONDONTWRITEBYTECODE": "1"}
        read_end, write_end = os.pipe()
        log = os.open(task_dir / "shim.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            pid = os.posix_spawn(
                self.python, [self.python, "-m", "agent.runtime.process_shim", str(task_dir)],
                env, setsid=True, file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, write_end, 1),
                    (os.POSIX_SPAWN_DUP2, log, 2),
                ])
        except OSError as e:
            os.close(read_end)
            raise StartError(f"cannot start the process supervisor: {e}",
                             recoverable=True) from None
        finally:
            os.close(write_end)
            os.close(log)
        return pid, read_end

    async def _first_line(self, shim_pid: int, fd: int) -> str:
        loop = asyncio.get_running_loop()
        got = bytearray()
        done: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                return
            got.extend(chunk)
            if (not chunk or b"\n" in got) and not done.done():
                done.set_result(None)

        os.set_blocking(fd, False)
        loop.add_reader(fd, readable)
        try:
            async with asyncio.timeout(SHIM_START_TIMEOUT):
                await done
        except TimeoutError:
            os.kill(shim_pid, signal.SIGKILL)
            await asyncio.to_thread(_reap, shim_pid, 0)
            raise StartError("the process supervisor did not answer within "
                             f"{SHIM_START_TIMEOUT:g}s", recoverable=True) from None
        finally:
            loop.remove_reader(fd)
            os.close(fd)
        return got.decode(errors="replace").split("\n", 1)[0].strip()

    def _attach(self, task_dir: Path, state: dict[str, Any], *, alive: bool = True) -> _Watch:
        """Watch the shim of ``task_dir`` for its exit (a pidfd readable once it exits).

        ``alive=False``: the shim is known to be gone; the exit is read at once.
        """
        shim_pid, pid = int(state["shim_pid"]), int(state["pid"])
        hid = f"{shim_pid}:{pid}"
        if hid in self._watches:
            return self._watches[hid]
        spec = read_json(task_dir / "spec.json") or {}
        ident = lbl.identity(spec.get("labels", {}))
        handle = TaskHandle(
            driver=self.name, id=hid, alloc_id=ident.alloc_id if ident else task_dir.parent.name,
            task=ident.task if ident else task_dir.name,
            started_at_ns=int(state.get("started_at_ns", 0)), pid=pid,
            extra={"task_dir": str(task_dir), "shim_pid": str(shim_pid),
                   "pgid": str(state.get("pgid", pid))})
        loop = asyncio.get_running_loop()
        watch = _Watch(handle=handle, task_dir=task_dir, pgid=int(state.get("pgid", pid)),
                       future=loop.create_future())
        self._watches[hid] = watch
        try:
            if not alive:
                raise ProcessLookupError
            watch.pidfd = os.pidfd_open(shim_pid)
        except ProcessLookupError:
            self._finish(watch)
            return watch
        loop.add_reader(watch.pidfd, self._finish, watch)
        return watch

    def _finish(self, watch: _Watch) -> None:
        """The shim has exited: reap it, read the task's exit, resolve the waiters."""
        if watch.pidfd >= 0:
            asyncio.get_running_loop().remove_reader(watch.pidfd)
            os.close(watch.pidfd)
            watch.pidfd = -1
        _reap(int(watch.handle.extra["shim_pid"]), os.WNOHANG)
        if not watch.future.done():
            watch.future.set_result(self._exit_of(watch.task_dir, watch.pgid))

    def _exit_of(self, task_dir: Path, pgid: int) -> ExitResult:
        doc = read_json(task_dir / "exit.json")
        if doc is not None:
            return ExitResult(exit_code=int(doc["exit_code"]), signal=int(doc.get("signal", 0)),
                              oom_killed=bool(doc.get("oom_killed")),
                              finished_at_ns=int(doc.get("finished_at_ns", 0)))
        _kill_group(pgid, signal.SIGKILL)
        cgroup = _cgroup_of(task_dir)
        if cgroup is not None:
            cgroup.remove()
        return ExitResult(exit_code=-1, lost=True, finished_at_ns=time.time_ns(),
                          error="the task's supervisor died; what was left of the task "
                                "was killed")

    def _running_in(self, task_dir: Path) -> dict[str, Any] | None:
        """The state of the task running in ``task_dir``, or None."""
        state = read_json(task_dir / "state.json")
        if state is None or (task_dir / "exit.json").exists():
            return None
        if not _shim_alive(int(state["shim_pid"]), task_dir):
            return None
        spec = read_json(task_dir / "spec.json") or {}
        state["spec_hash"] = spec.get("spec_hash", "")
        return state

    def _watch_of(self, handle: TaskHandle) -> _Watch:
        watch = self._watches.get(handle.id)
        if watch is not None:
            return watch
        task_dir = Path(handle.extra["task_dir"])
        state = read_json(task_dir / "state.json")
        if state is None:
            raise RuntimeDriverError(f"process task {handle.task} has no state in {task_dir}")
        return self._attach(task_dir, state, alive=self._running_in(task_dir) is not None)

    async def wait(self, handle: TaskHandle) -> ExitResult:
        return await asyncio.shield(self._watch_of(handle).future)

    async def stop(self, handle: TaskHandle, signal_name: str, grace: float) -> None:
        watch = self._watch_of(handle)
        if watch.future.done():
            return
        sig = parse_signal(signal_name)
        _kill_group(watch.pgid, sig)
        try:
            async with asyncio.timeout(grace):
                await asyncio.shield(watch.future)
            return
        except TimeoutError:
            pass
        _kill_group(watch.pgid, signal.SIGKILL)
        async with asyncio.timeout(10):
            await asyncio.shield(watch.future)

    def file_owner(self, task: Task) -> tuple[int, int]:
        try:
            _, uid, gid = self._user(task.name, task.user)
        except StartError:
            return -1, -1  # the start says why
        return uid, gid

    async def signal(self, handle: TaskHandle, signal_name: str) -> None:
        watch = self._watch_of(handle)
        if not watch.future.done():
            _kill_group(watch.pgid, parse_signal(signal_name))

    async def _stop_dir(self, task_dir: Path, state: dict[str, Any], sig: str,
                        grace: float) -> None:
        await self.stop(self._attach(task_dir, state).handle, sig, grace)

    async def destroy(self, handle: TaskHandle) -> None:
        watch = self._watches.pop(handle.id, None)
        if watch is not None and not watch.future.done():
            raise RuntimeDriverError(f"process task {handle.task} still runs: stop it first")
        task_dir = Path(handle.extra["task_dir"])
        left = await asyncio.to_thread(binds.unbind_all, task_dir)
        if left:  # deleting the folder would delete the volume's data
            raise RuntimeDriverError(f"cannot detach the volumes mounted in {task_dir} "
                                     f"({', '.join(left)}); the folder is left as it is")
        await asyncio.to_thread(shutil.rmtree, task_dir, True)
        with contextlib.suppress(OSError):
            task_dir.parent.rmdir()  # the allocation's folder, once its last task is gone

    async def recover(self) -> list[Recovered]:
        found: list[Recovered] = []
        for spec_path in sorted(self.alloc_dir.glob("*/*/spec.json")):
            task_dir = spec_path.parent
            spec = read_json(spec_path) or {}
            ident = lbl.identity(spec.get("labels", {}))
            state = read_json(task_dir / "state.json")
            if ident is None or ident.node != self.node_id or state is None:
                continue
            running = self._running_in(task_dir)
            if running is not None:
                watch = self._attach(task_dir, running)
                found.append(Recovered(handle=watch.handle, identity=ident, running=True))
                continue
            watch = self._attach(task_dir, state, alive=False)
            exit_ = await asyncio.shield(watch.future)
            found.append(Recovered(handle=watch.handle, identity=ident, running=False,
                                   exit=exit_))
        return found

    def _user(self, task: str, asked: str) -> tuple[str, int, int]:
        """(user, uid, gid) a task runs as: the one its job names, else this node's task user;
        StartError when it does not exist here, or is root on a node that does not allow it.
        An agent that is not root itself runs every task as its own user ("")."""
        if os.geteuid() != 0 and not asked:
            return "", os.getuid(), os.getgid()
        name = asked or self.task_user or default_task_user()
        try:
            pw = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
        except KeyError:
            raise StartError(f"task {task!r}: no user {name!r} on this node", recoverable=False) \
                from None
        if pw.pw_uid == 0 and not self.allow_root:
            raise StartError(f"task {task!r} would run as root ({name}): this node does not "
                             "allow it (allow_root_tasks = true in agent.toml)", recoverable=False)
        return name, pw.pw_uid, pw.pw_gid

    async def exec(self, handle: TaskHandle, argv: list[str]) -> ExecResult:
        """Run ``argv`` as the task does: as its user, in its cgroup, in its folder, with its
        environment (``setpriv`` drops to the user after the command joined the cgroup)."""
        spec = read_json(Path(handle.extra["task_dir"]) / "spec.json") or {}
        argv = _as_task(argv, str(spec.get("user") or ""), spec.get("cgroup"))
        try:  # posix_spawn: no Python runs in the child of this threaded process (spawn)
            code, out = await spawn.run(argv, env=spec.get("env"), cwd=spec.get("cwd") or None)
        except OSError as e:
            msg = f"cannot run {argv[0]!r}: {e.strerror}"
            return ExecResult(exit_code=127, output=msg.encode())
        return ExecResult(exit_code=code, output=out)

    async def exec_session(self, handle: TaskHandle, spec: ExecSpec) -> ExecSession:
        """``spec.argv`` as the task runs: as its user, in its cgroup, in its folder, with its
        environment (and TERM on a terminal)."""
        task_spec = read_json(Path(handle.extra["task_dir"]) / "spec.json") or {}
        argv = _as_task(list(spec.argv), str(task_spec.get("user") or ""),
                        task_spec.get("cgroup"))
        env = dict(task_spec.get("env") or {})
        if spec.tty:
            env["TERM"] = spec.term or "xterm"
        try:
            return await ProcessExec.start(argv, env=env, cwd=task_spec.get("cwd") or None,
                                           spec=spec)
        except OSError as e:
            raise RuntimeDriverError(f"cannot run {spec.argv[0]!r} in task {handle.task}: "
                                     f"{e.strerror}") from None

    async def resize(self, handle: TaskHandle, resources: Resources) -> bool:
        """New limits on the task's cgroup, in place (nothing to change without one)."""
        cgroup = _cgroup_of(Path(handle.extra["task_dir"]))
        if cgroup is None:
            return True
        try:
            await asyncio.to_thread(cgroup.set_limits, resources.cpu_millicores,
                                    resources.memory_mb)
        except OSError as e:
            log.warning("cannot change a process task's limits", extra={
                "alloc": handle.alloc_id, "task": handle.task, "error": str(e)})
            return False
        return True

    async def usage(self, handle: TaskHandle) -> Usage | None:
        watch = self._watches.get(handle.id)
        if watch is None or watch.future.done():
            return None
        return (await asyncio.to_thread(group_usage, {watch.pgid}))[watch.pgid]

    async def log_offset(self, handle: TaskHandle, stream: Stream, since_ns: int) -> int:
        folder = Path(handle.extra["task_dir"]) / "logs"
        return await asyncio.to_thread(logfiles.offset_at, folder, f"{handle.task}.{stream}",
                                       since_ns)

    async def logs(self, handle: TaskHandle, stream: Stream, *, offset: int = 0,
                   follow: bool = False) -> AsyncIterator[LogChunk]:
        task_dir = Path(handle.extra["task_dir"])
        folder, name = task_dir / "logs", f"{handle.task}.{stream}"
        pos = offset
        while True:
            last = not follow or self._exited(handle, task_dir)
            start, data = await asyncio.to_thread(logfiles.read, folder, name, pos)
            pos = start + len(data)
            if data:
                yield LogChunk(offset=start, data=data)
            elif last:
                return
            else:
                await asyncio.sleep(LOG_POLL_INTERVAL)

    def _exited(self, handle: TaskHandle, task_dir: Path) -> bool:
        watch = self._watches.get(handle.id)
        if watch is not None:
            return watch.future.done()
        return (task_dir / "exit.json").exists() or self._running_in(task_dir) is None
