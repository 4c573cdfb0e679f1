"""The ``docker`` driver: one container per task, through the Engine API (aiodocker).

- A container is named ``<task>-<alloc id>`` and labelled as orch's (``labels``),
  so a task is never started twice and an agent restart finds what runs.
- A restart (restart policy) starts the same container again, as Docker's own
  restart policy does: its logs and writable layer carry over. A changed spec
  (another spec hash) replaces the container.
- Exits come from the engine's event stream (``die`` and ``destroy`` events of
  this node's containers); each is checked with an inspect, so a late or
  replayed event never ends the wrong run. A container that someone else
  signalled (``kill`` events orch did not cause: ``docker stop``, or the engine
  shutting down, which stops its containers before it stops answering) is
  reported ``lost``, not failed. When the stream breaks the driver turns
  unhealthy, reconnects with backoff (asking for the events it missed), and
  inspects every container it waits for: one that stopped while the engine was
  unreachable is ``lost`` too.
- Logs come from the engine's logs API; their offsets count the bytes of the
  stream the engine still keeps (json-file, rotated by size and count).
- An image that is not present is pulled; if that fails the start fails for
  good with "image X is not present on node Y and could not be pulled: ...".
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import json
import logging
import math
import os
import re
import signal
import tarfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError
from aiodocker.execs import Exec
from aiodocker.stream import Stream as ExecStream

from orch.errors import ConfigError, DriverUnavailableError, RuntimeDriverError, StartError
from orch.execs import MAX_FRAME
from orch.jobspec.model import Resources

from . import labels as lbl
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
from .ports import container_port
from .taskfiles import IN_CONTAINER, LOCAL, SECRETS
from .volumes import Mount

log = logging.getLogger("runtime.docker")

RECONNECT_MIN = 0.2
"""Seconds before the first reconnection attempt; doubles up to RECONNECT_MAX."""
RECONNECT_MAX = 5.0
API_TIMEOUT = aiohttp.ClientTimeout(total=60, connect=5)
"""For ordinary API calls; streams (events, logs) and pulls have no total limit."""
DEFAULT_URL = "unix:///var/run/docker.sock"
"""The engine's address when neither the configuration nor DOCKER_HOST names one."""
_UNREACHABLE = 900  # aiodocker's status for "cannot connect to the engine"
_MIB = 1 << 20


def parse_time_ns(text: str) -> int:
    """Docker's RFC 3339 time with nanoseconds (``2024-01-02T03:04:05.123456789Z``) as ns."""
    if not text or text.startswith("0001-"):
        return 0
    text = text.rstrip("Z")
    whole, _, frac = text.partition(".")
    offset = 0
    for sign in ("+", "-"):
        if sign in frac:
            frac, _, zone = frac.partition(sign)
            hours, _, minutes = zone.partition(":")
            offset = (1 if sign == "+" else -1) * (int(hours) * 3600 + int(minutes or 0) * 60)
    secs = dt.datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC).timestamp()
    return (int(secs) - offset) * 1_000_000_000 + int((frac or "0")[:9].ljust(9, "0"))


def _unavailable(e: DockerError) -> bool:
    return e.status == _UNREACHABLE


_CONTAINER_DIR = re.compile(r"/containers/([0-9a-f]{64})/")


def own_container_id(mountinfo: str) -> str | None:
    """The id of the Docker container this process runs in, from /proc/self/mountinfo (the
    engine bind-mounts the container's hostname, hosts and resolv.conf from its folder)."""
    m = _CONTAINER_DIR.search(mountinfo)
    return m.group(1) if m else None


def resolve_network_mode(mode: str) -> str:
    """``docker_network_mode`` as the engine takes it: ``container:self`` becomes this
    process's own container; anything but "" or ``container:...`` is refused."""
    if not mode:
        return ""
    if not mode.startswith("container:") or mode == "container:":
        raise ConfigError(f"expected \"\" or container:<name, id or self>, got {mode!r}",
                          where="docker_network_mode")
    if mode != "container:self":
        return mode
    try:
        with open("/proc/self/mountinfo") as f:
            found = own_container_id(f.read())
    except OSError:
        found = None
    if found is None:
        raise ConfigError("container:self, but this agent does not run in a Docker container "
                          "(no container folder in /proc/self/mountinfo)",
                          where="docker_network_mode")
    return f"container:{found}"


class DockerDriver(TaskDriver):
    """Tasks as Docker containers on the engine at ``url`` (default: DOCKER_HOST or the socket)."""

    name = "docker"

    def __init__(self, *, node_id: str, node_name: str = "", url: str | None = None,
                 allow_privileged: bool = False, allow_host_network: bool = False,
                 log_max_bytes: int = 10 << 20,
                 log_max_files: int = 3, pull_timeout: float = 300.0,
                 bind_address: str = "", network_mode: str = "",
                 pids_limit: int = 4096) -> None:
        super().__init__()
        self.node_id, self.node_name = node_id, node_name or node_id
        # aiodocker refuses to start (an assertion) when no engine socket exists yet: name the
        # default, so that a host without Docker gets an unhealthy driver, not a dead agent
        self.url = url or os.environ.get("DOCKER_HOST") or DEFAULT_URL
        self.allow_privileged = allow_privileged
        self.allow_host_network = allow_host_network
        self.log_max_bytes, self.log_max_files = log_max_bytes, log_max_files
        self.pull_timeout = pull_timeout
        self.bind_address = bind_address
        self.pids_limit = pids_limit
        self.network_mode = resolve_network_mode(network_mode)
        """"" (each task its own network) or ``container:<id>`` (see RuntimeConfig)."""
        self._docker: aiodocker.Docker | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._exits: dict[str, asyncio.Future[ExitResult]] = {}
        self._started_ns: dict[str, int] = {}
        self._stopping: set[str] = set()
        """Containers orch is stopping now (their kill events are ours)."""
        self._foreign_kill: set[str] = set()
        """Containers someone else signalled: ``docker stop``, or the engine shutting down."""
        self._lost_contact = False
        self._connected = asyncio.Event()
        self._stream: asyncio.Task[None] | None = None

    @property
    def docker(self) -> aiodocker.Docker:
        if self._docker is None:
            raise DriverUnavailableError("the docker driver is not open")
        return self._docker

    # --- life of the driver -----------------------------------------------------------

    async def open(self) -> None:
        self._docker = aiodocker.Docker(url=self.url, timeout=API_TIMEOUT)
        self._connected.clear()
        self._watcher = asyncio.create_task(self._watch(), name="docker-events")
        with contextlib.suppress(TimeoutError):  # a down engine is reported, not fatal
            async with asyncio.timeout(5):
                await self._connected.wait()

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        if self._stream is not None:
            self._stream.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._stream
            self._stream = None
        if self._docker is not None:
            await self._docker.close()
            self._docker = None
        for fut in self._exits.values():
            fut.cancel()
        self._exits.clear()
        self._set_status(False, "closed")

    async def _watch(self) -> None:
        """Follow the engine's events for ever, reconnecting when the stream breaks."""
        docker = self.docker
        sub = docker.events.subscribe(create_task=False)  # type: ignore[no-untyped-call]
        delay = RECONNECT_MIN
        since = time.time() - 1
        where = self.url
        while True:
            try:
                version = await docker.version()
            except (DockerError, aiohttp.ClientError, OSError, TimeoutError) as e:
                self._lost_contact = True
                self._set_status(False, f"cannot reach the Docker engine at {where}: "
                                        f"{getattr(e, 'message', e)}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX)
                continue
            filters = {"type": ["container"], "label": [f"{lbl.NODE}={self.node_id}"]}
            self._stream = asyncio.create_task(
                docker.events.run(filters=filters, since=f"{since:.9f}"), name="docker-stream")
            await self._resync()
            delay = RECONNECT_MIN
            self._lost_contact = False
            self._set_status(True, f"Docker {version.get('Version', '?')} "
                                   f"(API {version.get('ApiVersion', '?')})")
            self._connected.set()
            while (event := await sub.get()) is not None:
                since = max(since, int(event.get("timeNano", 0)) / 1e9)
                try:
                    await self._on_event(event)
                except DockerError as e:
                    log.warning("handling a Docker event failed: %s", e)
            self._lost_contact = True
            self._set_status(False, f"lost the Docker engine's event stream at {where}; "
                                    "reconnecting")
            with contextlib.suppress(Exception):
                await self._stream

    async def _on_event(self, event: dict[str, Any]) -> None:
        cid = event.get("id") or event.get("Actor", {}).get("ID", "")
        action = str(event.get("Action") or event.get("status") or "")
        fut = self._exits.get(cid)
        if fut is None or fut.done():
            return
        if action == "kill" and cid not in self._stopping:
            self._foreign_kill.add(cid)
        elif action in ("die", "destroy"):
            await self._check_exit(cid, lost=False)

    async def _resync(self) -> None:
        """After a (re)connection: settle every wait whose container is no longer running."""
        lost = self._lost_contact
        for cid, fut in list(self._exits.items()):
            if not fut.done():
                with contextlib.suppress(DockerError):
                    await self._check_exit(cid, lost=lost)

    async def _check_exit(self, cid: str, *, lost: bool) -> None:
        """Inspect ``cid``; if it is not running, resolve its wait with how it ended."""
        fut = self._exits.get(cid)
        if fut is None or fut.done():
            return
        try:
            info = await self.docker.containers.container(cid).show()
        except DockerError as e:
            if e.status != 404:
                raise
            if not fut.done():
                fut.set_result(ExitResult(exit_code=-1, lost=True, finished_at_ns=time.time_ns(),
                                          error="the container was removed"))
            return
        state = info.get("State", {})
        if state.get("Running") or state.get("Restarting"):
            return
        started = parse_time_ns(state.get("StartedAt", ""))
        if started and started < self._started_ns.get(cid, 0):
            return  # an older run than the one waited for
        code = int(state.get("ExitCode", -1))
        if cid in self._foreign_kill:
            self._foreign_kill.discard(cid)
            fut.set_result(ExitResult(
                exit_code=code, lost=True,
                finished_at_ns=parse_time_ns(state.get("FinishedAt", "")) or time.time_ns(),
                error=f"the container was stopped from outside orch (docker stop or kill, or "
                      f"the engine shutting down; exit code {code})"))
            return
        result = ExitResult(
            exit_code=code, signal=code - 128 if 128 < code < 160 else 0,
            oom_killed=bool(state.get("OOMKilled")),
            finished_at_ns=parse_time_ns(state.get("FinishedAt", "")) or time.time_ns(),
            error=state.get("Error", "") or "", lost=lost)
        if lost:
            result = ExitResult(
                exit_code=code, signal=result.signal, oom_killed=result.oom_killed,
                finished_at_ns=result.finished_at_ns, lost=True,
                error=f"the container stopped while the Docker engine was unreachable "
                      f"(exit code {code})")
        if not fut.done():
            fut.set_result(result)

    # --- tasks -------------------------------------------------------------------------

    def _future(self, cid: str) -> asyncio.Future[ExitResult]:
        fut = self._exits.get(cid)
        if fut is None:
            fut = self._exits[cid] = asyncio.get_running_loop().create_future()
        return fut

    async def start(self, cfg: TaskConfig) -> TaskHandle:
        task = cfg.task
        if not task.image:
            raise StartError(f"task {task.name!r} has no image: the docker driver needs "
                             "task.image", recoverable=False)
        if task.privileged and not self.allow_privileged:
            raise StartError(f"task {task.name!r} asks for a privileged container, which node "
                             f"{self.node_name} does not allow (agent setting "
                             "runtime.allow_privileged)", recoverable=False)
        if cfg.network.mode == "host" and not self.allow_host_network:
            raise StartError(f"task {task.name!r} asks for the host's network, which node "
                             f"{self.node_name} does not allow (agent setting "
                             "allow_host_network)", recoverable=False)
        parse_signal(task.kill_signal)
        name = lbl.container_name(task.name, cfg.alloc_id)
        try:
            info = await self._inspect(name)
            if info is not None and info.get("Config", {}).get("Labels", {}).get(
                    lbl.SPEC_HASH) != cfg.spec_hash:
                await self.docker.containers.container(info["Id"]).delete(force=True)
                info = None
            if info is not None and info["State"].get("Running"):
                return self._handle(info)  # already runs with this spec: adopt it
            cid = info["Id"] if info is not None else await self._create(cfg, name)
            if info is None and cfg.payload:
                await self.docker.containers.container(cid).put_archive(
                    "/", payload_archive(cfg.payload))  # type: ignore[no-untyped-call]
            old = self._exits.pop(cid, None)
            if old is not None and not old.done():
                old.cancel()
            self._foreign_kill.discard(cid)
            await self.docker.containers.container(cid).start()
            info = await self.docker.containers.container(cid).show()
        except DockerError as e:
            raise self._start_error(e, task.name) from None
        self._started_ns[info["Id"]] = parse_time_ns(info["State"].get("StartedAt", ""))
        self._future(info["Id"])
        return self._handle(info)

    async def _inspect(self, name: str) -> dict[str, Any] | None:
        try:
            return await self.docker.containers.container(name).show()
        except DockerError as e:
            if e.status == 404:
                return None
            raise

    async def _create(self, cfg: TaskConfig, name: str) -> str:
        config = self.container_config(cfg)
        try:
            c = await self.docker.containers.create(config, name=name)
        except DockerError as e:
            if e.status != 404 or "image" not in e.message.lower():
                raise
            await self._pull(cfg.task.image)
            c = await self.docker.containers.create(config, name=name)
        return c.id

    async def _pull(self, image: str) -> None:
        try:
            async with asyncio.timeout(self.pull_timeout):
                await self.docker.images.pull(image)
        except (DockerError, TimeoutError) as e:
            why = e.message if isinstance(e, DockerError) else (
                f"no answer within {self.pull_timeout:g}s")
            raise StartError(f"image {image} is not present on node {self.node_name} and could "
                             f"not be pulled: {why}", recoverable=False) from None

    def container_config(self, cfg: TaskConfig) -> dict[str, Any]:
        """The Engine API's container config for ``cfg`` (create body)."""
        task, net = cfg.task, cfg.network
        host: dict[str, Any] = {
            **self.resource_limits(task.resources),
            "NetworkMode": self.network_mode or ("host" if net.mode == "host" else "bridge"),
            "Privileged": task.privileged,
            # safe defaults (a privileged task, which the node must allow, keeps everything)
            **({} if task.privileged else {
                "CapDrop": ["NET_RAW"], "SecurityOpt": ["no-new-privileges"],
                "PidsLimit": self.pids_limit}),
            "LogConfig": {"Type": "json-file", "Config": {
                "max-size": f"{max(1, self.log_max_bytes // 1024)}k",
                "max-file": str(self.log_max_files)}},
        }
        if cfg.mounts:
            host["Mounts"] = [self.mount(m, cfg) for m in cfg.mounts]
        if host["NetworkMode"] == "bridge" and cfg.dns_servers:
            # the agent's DNS (at the bridge's gateway): orch's names, the node's upstreams
            # behind them; a task sharing a network namespace keeps that one's resolver
            host["Dns"] = list(cfg.dns_servers)
            host["DnsSearch"] = list(cfg.dns_search)
        exposed: dict[str, dict[str, str]] = {}
        if net.mode != "host" and not self.network_mode:
            bindings: dict[str, list[dict[str, str]]] = {}
            for port in net.ports:
                if port.label not in cfg.ports:
                    continue
                hport = cfg.ports[port.label]
                key = f"{container_port(net, port.label, hport)}/{port.protocol}"
                exposed[key] = {}
                bindings.setdefault(key, []).append(
                    {"HostIp": self.bind_address, "HostPort": str(hport)})
            host["PortBindings"] = bindings
        config: dict[str, Any] = {
            "Image": task.image,
            "Env": [f"{k}={v}" for k, v in cfg.env.items()],
            "Labels": dict(cfg.labels),
            "StopSignal": task.kill_signal,
            "StopTimeout": math.ceil(task.kill_timeout),
            "ExposedPorts": exposed,
            "HostConfig": host,
        }
        if task.command:
            config["Entrypoint"] = [task.command]
        if task.args:
            config["Cmd"] = list(task.args)
        if cfg.files:
            # the task's secrets (a tmpfs the agent mounted on this host) and its local/
            host.setdefault("Mounts", []).extend([
                {"Type": "bind", "Source": str(cfg.task_dir / SECRETS),
                 "Target": IN_CONTAINER[SECRETS], "ReadOnly": True},
                {"Type": "bind", "Source": str(cfg.task_dir / LOCAL),
                 "Target": IN_CONTAINER[LOCAL], "ReadOnly": False}])
        if task.workdir:
            config["WorkingDir"] = task.workdir
        if task.user:
            config["User"] = task.user
        return config

    @staticmethod
    def mount(m: Mount, cfg: TaskConfig) -> dict[str, Any]:
        """The Engine API's mount of a volume: a bind of a host volume's folder, or a named
        volume (made by the engine when first mounted, labelled with its job)."""
        if m.type == "host":
            return {"Type": "bind", "Source": m.source, "Target": m.destination,
                    "ReadOnly": m.read_only, "BindOptions": {"Propagation": "rprivate"}}
        labels = {lbl.MANAGED: "true", lbl.NAMESPACE: cfg.labels.get(lbl.NAMESPACE, ""),
                  lbl.JOB: cfg.labels.get(lbl.JOB, ""), lbl.GROUP: cfg.labels.get(lbl.GROUP, "")}
        return {"Type": "volume", "Source": m.source, "Target": m.destination,
                "ReadOnly": m.read_only, "VolumeOptions": {"Labels": labels}}

    def _start_error(self, e: DockerError, task: str) -> Exception:
        if _unavailable(e):
            return DriverUnavailableError(f"cannot start task {task!r}: {e.message}")
        msg = e.message.strip()
        # 4xx: the request (the task's spec) is wrong. The engine reports some spec errors
        # as 500 too; other 5xx (a busy or stopping engine) are worth another try.
        fatal = 400 <= e.status < 500 or "unable to find user" in msg or (
            "exec:" in msg and ("no such file" in msg or "permission denied" in msg
                                or "executable file not found" in msg))
        return StartError(f"Docker could not start task {task!r}: {msg}", recoverable=not fatal)

    def _handle(self, info: dict[str, Any]) -> TaskHandle:
        labels = info.get("Config", {}).get("Labels", {}) or {}
        ident = lbl.identity(labels)
        return TaskHandle(
            driver=self.name, id=info["Id"], alloc_id=ident.alloc_id if ident else "",
            task=ident.task if ident else "",
            started_at_ns=parse_time_ns(info.get("State", {}).get("StartedAt", "")),
            pid=int(info.get("State", {}).get("Pid", 0) or 0),
            extra={"name": info.get("Name", "").lstrip("/"),
                   "ip": info.get("NetworkSettings", {}).get("IPAddress", "") or ""})

    async def wait(self, handle: TaskHandle) -> ExitResult:
        fut = self._future(handle.id)
        self._started_ns.setdefault(handle.id, handle.started_at_ns)
        if not fut.done():
            # an exit that happened before anyone waited (or while the engine was away)
            with contextlib.suppress(DockerError):
                await self._check_exit(handle.id, lost=False)
        return await asyncio.shield(fut)

    async def stop(self, handle: TaskHandle, signal: str, grace: float) -> None:
        fut = self._future(handle.id)
        if fut.done():
            return
        self._stopping.add(handle.id)
        try:
            await self._stop(handle, signal, grace, fut)
        finally:
            self._stopping.discard(handle.id)

    containerized = True

    async def signal(self, handle: TaskHandle, signal: str) -> None:
        try:
            await self.docker.containers.container(handle.id).kill(
                signal=parse_signal(signal).name)
        except DockerError as e:
            if _unavailable(e):
                raise DriverUnavailableError(f"cannot signal {handle.task}: {e.message}") from None
            if e.status not in (404, 409):  # gone, or not running: nothing to tell
                raise self._start_error(e, handle.task) from None

    async def _stop(self, handle: TaskHandle, signal: str, grace: float,
                    fut: asyncio.Future[ExitResult]) -> None:
        container = self.docker.containers.container(handle.id)
        try:
            await container.kill(signal=parse_signal(signal).name)
        except DockerError as e:
            if _unavailable(e):
                raise DriverUnavailableError(f"cannot stop {handle.task}: {e.message}") from None
            if e.status not in (404, 409):  # gone, or not running
                raise self._start_error(e, handle.task) from None
            await self._check_exit(handle.id, lost=False)
            return
        try:
            async with asyncio.timeout(grace):
                await asyncio.shield(fut)
            return
        except TimeoutError:
            pass
        with contextlib.suppress(DockerError):
            await container.kill(signal="SIGKILL")
        async with asyncio.timeout(30):
            await self.wait(handle)

    async def destroy(self, handle: TaskHandle) -> None:
        fut = self._exits.pop(handle.id, None)
        if fut is not None and not fut.done():
            fut.cancel()
        self._started_ns.pop(handle.id, None)
        self._foreign_kill.discard(handle.id)
        try:
            await self.docker.containers.container(handle.id).delete(force=True)
        except DockerError as e:
            if _unavailable(e):
                raise DriverUnavailableError(f"cannot remove {handle.task}: {e.message}") from None
            if e.status != 404:
                raise

    async def recover(self) -> list[Recovered]:
        try:
            found = await self.docker.containers.list(all=True, filters={
                "label": [f"{lbl.MANAGED}=true", f"{lbl.NODE}={self.node_id}"]})
        except DockerError as e:
            raise DriverUnavailableError(f"cannot list containers: {e.message}") from None
        out = []
        for c in found:
            try:
                info = await c.show()
            except DockerError:
                continue  # removed meanwhile
            ident = lbl.identity(info.get("Config", {}).get("Labels", {}) or {})
            if ident is None:
                continue
            handle = self._handle(info)
            running = bool(info["State"].get("Running"))
            exit_ = None
            if not running:
                code = int(info["State"].get("ExitCode", -1))
                exit_ = ExitResult(
                    exit_code=code, oom_killed=bool(info["State"].get("OOMKilled")),
                    finished_at_ns=parse_time_ns(info["State"].get("FinishedAt", "")))
            out.append(Recovered(handle=handle, identity=ident, running=running, exit=exit_))
        return out

    async def exec(self, handle: TaskHandle, argv: list[str]) -> ExecResult:
        container = self.docker.containers.container(handle.id)
        try:
            execution = await container.exec(argv, stdout=True, stderr=True)
            out = bytearray()
            async with execution.start(detach=False) as stream:
                while (msg := await stream.read_out()) is not None:
                    out.extend(msg.data)
            info = await execution.inspect()
        except DockerError as e:
            return ExecResult(exit_code=126, output=e.message.encode())
        code = info.get("ExitCode")
        return ExecResult(exit_code=126 if code is None else int(code), output=bytes(out))

    async def exec_session(self, handle: TaskHandle, spec: ExecSpec) -> ExecSession:
        """``spec.argv`` in the container (``docker exec``), as the container's user."""
        container = self.docker.containers.container(handle.id)
        try:
            execution = await container.exec(
                list(spec.argv), stdout=True, stderr=True, stdin=spec.stdin, tty=spec.tty,
                environment={"TERM": spec.term or "xterm"} if spec.tty else None)
            stream = await execution.start(detach=False).__aenter__()
            if spec.tty:
                with contextlib.suppress(DockerError):
                    await execution.resize(h=spec.rows or None, w=spec.cols or None)
        except DockerError as e:
            if _unavailable(e):
                raise DriverUnavailableError(f"cannot run a command in {handle.task}: "
                                             f"{e.message}") from None
            raise RuntimeDriverError(f"cannot run {spec.argv[0]!r} in task {handle.task}: "
                                     f"{e.message}") from None
        return DockerExec(execution, stream, handle.id, tty=spec.tty, stdin=spec.stdin)

    async def resize(self, handle: TaskHandle, resources: Resources) -> bool:
        """New CPU and memory limits for the running container (``docker update``)."""
        body = self.resource_limits(resources)
        try:
            await self.docker._query_json(f"containers/{handle.id}/update", method="POST",
                                          data=json.dumps(body))
        except DockerError as e:
            log.warning("cannot resize the container in place: %s", e.message,
                        extra={"container": handle.id[:12]})
            return False
        return True

    @staticmethod
    def resource_limits(resources: Resources) -> dict[str, int]:
        """The Engine API's limits for ``resources`` (create and update bodies)."""
        millicores, memory = resources.cpu_millicores, resources.memory_mb * _MIB
        return {"NanoCpus": millicores * 1_000_000,
                "CpuShares": max(2, millicores * 1024 // 1000),
                "Memory": memory, "MemorySwap": memory}

    async def usage(self, handle: TaskHandle) -> Usage | None:
        # aiodocker's stats() cannot ask for one-shot stats; without it the engine waits a
        # second for a second sample, on every call.
        try:
            stats = await self.docker._query_json(
                f"containers/{handle.id}/stats", params={"stream": False, "one-shot": True})
        except DockerError:
            return None
        if not isinstance(stats, dict) or not stats.get("pids_stats"):
            return None  # not running
        cpu = stats.get("cpu_stats", {}).get("cpu_usage", {}).get("total_usage", 0)
        mem = stats.get("memory_stats", {})
        detail = mem.get("stats", {}) or {}
        cache = detail.get("total_inactive_file", detail.get("inactive_file", 0))
        return Usage(cpu_seconds=cpu / 1e9, memory_bytes=max(int(mem.get("usage", 0)) - cache, 0))

    async def log_offset(self, handle: TaskHandle, stream: Stream, since_ns: int) -> int:
        """The engine's lines with their times: the bytes of those written before
        ``since_ns`` (the offsets ``logs`` counts)."""
        container = self.docker.containers.container(handle.id)
        try:
            kept = await container.log(stdout=stream == "stdout", stderr=stream == "stderr",
                                       timestamps=True)
        except DockerError as e:
            raise RuntimeDriverError(f"cannot read the logs of {handle.task}: {e.message}"
                                     ) from None
        offset = 0
        for piece in kept:
            stamp, _, text = piece.partition(" ")
            if parse_time_ns(stamp) >= since_ns:
                break
            offset += len(text.encode())
        return offset

    async def logs(self, handle: TaskHandle, stream: Stream, *, offset: int = 0,
                   follow: bool = False) -> AsyncIterator[LogChunk]:
        container = self.docker.containers.container(handle.id)
        out, err = stream == "stdout", stream == "stderr"
        try:
            if offset < 0 or not follow:
                kept = await container.log(stdout=out, stderr=err)
                if offset < 0:
                    offset = max(sum(len(p.encode()) for p in kept) + offset, 0)
                if not follow:
                    pos = 0
                    for piece in kept:
                        chunk, pos = self._from(piece.encode(), pos, offset)
                        if chunk is not None:
                            yield chunk
                    return
            pos = 0
            async for piece in container.log(stdout=out, stderr=err, follow=True):
                chunk, pos = self._from(piece.encode(), pos, offset)
                if chunk is not None:
                    yield chunk
        except DockerError as e:
            if _unavailable(e):
                raise DriverUnavailableError(f"cannot read the logs of {handle.task}: "
                                             f"{e.message}") from None
            raise RuntimeDriverError(f"cannot read the logs of {handle.task}: {e.message}"
                                     ) from None

    @staticmethod
    def _from(data: bytes, pos: int, offset: int) -> tuple[LogChunk | None, int]:
        """The part of ``data`` (which starts at ``pos``) at or after ``offset``."""
        end = pos + len(data)
        if end <= offset:
            return None, end
        skip = max(offset - pos, 0)
        return LogChunk(offset=pos + skip, data=data[skip:]), end


def payload_archive(data: bytes) -> bytes:
    """A tar of ``local/payload`` holding ``data``, owned by root and read-only (0444):
    copied into a created container before it starts. A copy rather than a bind mount, as
    the agent may itself run in a container beside the engine, where its folders are not
    the host's."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        folder = tarfile.TarInfo(PAYLOAD_FILE.split("/")[0])
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        info = tarfile.TarInfo(PAYLOAD_FILE)
        info.size, info.mode = len(data), 0o444
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


EXEC_EXIT_WAIT = 5.0
"""Seconds to wait, once a command's output has ended, for the engine to know its exit code."""


class DockerExec(ExecSession):
    """A ``docker exec`` instance and its attached stream (aiodocker)."""

    def __init__(self, execution: Exec, stream: ExecStream, container_id: str, *,
                 tty: bool, stdin: bool) -> None:
        self._exec = execution
        self._stream = stream
        self._container = container_id
        self._tty = tty
        self._stdin = stdin

    async def write(self, data: bytes) -> None:
        if not self._stdin:
            return  # it was started to read nothing
        with contextlib.suppress(RuntimeError, ConnectionError, aiohttp.ClientError):
            await self._stream.write_in(data)

    async def close_stdin(self) -> None:
        if not self._stdin:
            return  # it reads nothing: there is nothing to close
        if self._tty:
            await self.write(b"\x04")
            return
        # half-close the attached connection: the engine closes the command's stdin, and its
        # output keeps coming (aiodocker's own close() would end both directions)
        resp = getattr(self._stream, "_resp", None)
        transport = resp.connection.transport if resp is not None and resp.connection else None
        if transport is not None and transport.can_write_eof():
            transport.write_eof()

    async def resize(self, rows: int, cols: int) -> None:
        if self._tty and rows > 0 and cols > 0:
            with contextlib.suppress(DockerError):
                await self._exec.resize(h=rows, w=cols)

    async def output(self) -> AsyncIterator[tuple[Stream, bytes]]:
        while True:
            try:
                msg = await self._stream.read_out()
            except (aiohttp.ClientError, ConnectionError):
                return
            if msg is None:
                return
            stream: Stream = "stderr" if msg.stream == 2 else "stdout"
            data = msg.data
            for i in range(0, len(data), MAX_FRAME):
                yield stream, data[i:i + MAX_FRAME]

    async def wait(self) -> int:
        deadline = time.monotonic() + EXEC_EXIT_WAIT
        while True:
            info = await self._exec.inspect()
            if not info.get("Running") and info.get("ExitCode") is not None:
                return int(info["ExitCode"])
            if time.monotonic() > deadline:
                raise RuntimeDriverError("the engine did not say how the command ended")
            await asyncio.sleep(0.05)

    async def kill(self) -> None:
        """Close the stream (a terminal hangs up: SIGHUP); then, if the command still runs
        and its process is visible here (the agent shares the host's process namespace),
        SIGKILL it. The engine has no way to end an exec itself: one that ignores the hang
        up and cannot be seen from here runs on until it ends, as with ``docker exec``."""
        with contextlib.suppress(Exception):
            await self._stream.close()
        try:
            info = await self._exec.inspect()
        except DockerError:
            return
        pid = int(info.get("Pid") or 0)
        if info.get("Running") and pid > 0 and _in_container(pid, self._container):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _in_container(pid: int, container_id: str) -> bool:
    """Whether host process ``pid`` belongs to the container (its cgroup names it)."""
    try:
        return container_id in Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False
