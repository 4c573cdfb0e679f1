"""A task's secrets and templates on disk: rendered before it starts, rendered again when
what they read changes.

Every task that reads secrets or has templates gets two folders in its task folder::

    secrets/   a tmpfs (when the agent runs as root), owned by root, mode 0755: the
               task's secret files and what its templates write there. Process tasks:
               files owned by the task's user, 0400. Containers see it read-only at
               /secrets, files 0444 (only that container mounts it).
    local/     the task's own folder (containers: /local); templates may write there.

A secret's value reaches the environment only when the job asks (``env:`` of a secret).
The task starts only once every secret it reads is here and every template renders
(it waits, and says why in its events). Afterwards, when a secret or a service endpoint
that a template reads changes, the files are written again and the task reacts: a changed
secret file or variable restarts it; a changed template does what its ``change_mode``
says (restart, signal, noop).

Files are written without following links (a task that owns ``local/`` could otherwise
point a path at a file of the host): every folder is opened with O_NOFOLLOW from the task
folder down, and each file replaced atomically by a rename within its folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orch.jobspec.model import Task
from orch.templates import Endpoint, TemplateProblem, render

from . import binds

log = logging.getLogger("runtime")

SECRETS, LOCAL = "secrets", "local"
IN_CONTAINER = {SECRETS: "/secrets", LOCAL: "/local"}
"""Where a container sees the two folders."""
TMPFS_SIZE = "8m"
"""The secrets tmpfs of one task: its secrets (64 KiB each at most) and rendered files."""


@dataclass(frozen=True, slots=True)
class Sources:
    """What the files are made of: the secrets the controller sent for this task's namespace,
    the service catalog, the node."""

    secrets: Mapping[str, bytes]
    services: Callable[[str], Iterable[Endpoint]]
    node: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Rendering:
    files: dict[str, bytes] = field(default_factory=dict)
    """Path in the task folder (``secrets/db``, ``local/app.conf``) -> content."""
    modes: dict[str, int] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    problem: str = ""
    """Why the task cannot have its files yet (a secret not here, a template that fails)."""


@dataclass(frozen=True, slots=True)
class Reaction:
    restart: bool = False
    signals: frozenset[str] = frozenset()
    changed: tuple[str, ...] = ()
    """The files (or ``env``) that changed."""


def needs_files(task: Task) -> bool:
    return bool(task.secrets or task.templates)


def render_task(task: Task, src: Sources, *, in_container: bool) -> Rendering:
    """The task's files and secret variables as of ``src`` (pure)."""
    files: dict[str, bytes] = {}
    modes: dict[str, int] = {}
    env: dict[str, str] = {}
    secret_mode = 0o444 if in_container else 0o400
    for ref in task.secrets:
        value = src.secrets.get(ref.name)
        if value is None:
            return Rendering(problem=f"waiting for secret {ref.name!r} (not sent to this node "
                                     "yet, or removed)")
        path = f"{SECRETS}/{ref.file_name}"
        files[path], modes[path] = value, secret_mode
        if ref.env:
            try:
                env[ref.env] = value.decode()
            except UnicodeDecodeError:
                return Rendering(problem=f"secret {ref.name!r} is not UTF-8 text, so it cannot "
                                         f"be the variable {ref.env}; read it as a file")
            if "\0" in env[ref.env]:
                return Rendering(problem=f"secret {ref.name!r} holds a NUL byte, so it cannot "
                                         f"be the variable {ref.env}; read it as a file")
    for tpl in task.templates:
        try:
            text = render(tpl.data, secrets=src.secrets, services=src.services, node=src.node)
        except TemplateProblem as e:
            return Rendering(problem=f"template {tpl.destination}: {e}")
        files[tpl.destination] = text.encode()
        modes[tpl.destination] = int(tpl.perms, 8) if tpl.perms else secret_mode
    return Rendering(files, modes, env)


def reaction(task: Task, old: Rendering, new: Rendering) -> Reaction:
    """What the running task must do about going from ``old`` to ``new`` files."""
    changed = [p for p in sorted(set(old.files) | set(new.files))
               if old.files.get(p) != new.files.get(p)]
    templates = {t.destination: t for t in task.templates}
    restart = old.env != new.env  # a variable changes only with a new process
    signals = set()
    for path in changed:
        tpl = templates.get(path)
        if tpl is None or tpl.change_mode == "restart":  # a secret's own file: restart
            restart = True
        elif tpl.change_mode == "signal":
            signals.add(tpl.change_signal)
    if old.env != new.env:
        changed.append("env")
    return Reaction(restart=restart, signals=frozenset(signals), changed=tuple(changed))


class TaskFiles:
    """One task's secrets and templates, on disk."""

    def __init__(self, task: Task, task_dir: Path, sources: Callable[[], Sources], *,
                 in_container: bool, uid: int = -1, gid: int = -1) -> None:
        self.task = task
        self.task_dir = task_dir
        self._sources = sources
        self.in_container = in_container
        self.uid, self.gid = uid, gid
        self.current: Rendering | None = None
        self.tmpfs = False
        self._lock = asyncio.Lock()

    @property
    def env(self) -> dict[str, str]:
        """The secrets the task asked for as variables, and where its secrets are."""
        where = IN_CONTAINER[SECRETS] if self.in_container else str(self.task_dir / SECRETS)
        return {"ORCH_SECRETS_DIR": where, **(self.current.env if self.current else {})}

    async def prepare(self) -> str:
        """Make the folders and write the files as of now; the problem ("" when none)."""
        async with self._lock:
            await self._folders()
            r = render_task(self.task, self._sources(), in_container=self.in_container)
            if r.problem:
                return r.problem
            self._write(r)
            self.current = r
            return ""

    async def refresh(self) -> Reaction | None:
        """Render again; when something changed, write it and say how the task must react
        (None: nothing changed, or it cannot render now and the old files stay)."""
        async with self._lock:
            if self.current is None:
                return None
            r = render_task(self.task, self._sources(), in_container=self.in_container)
            if r.problem:
                log.warning("cannot render the task's files again; the old ones stay: %s",
                            r.problem, extra={"task": self.task.name, "dir": str(self.task_dir)})
                return None
            react = reaction(self.task, self.current, r)
            if not react.changed:
                return None
            self._write(r)
            self.current = r
            return react

    async def cleanup(self) -> None:
        """Unmount the secrets tmpfs and remove the folder (the task has stopped)."""
        secrets = self.task_dir / SECRETS
        if await _is_mountpoint(secrets):
            binds.unmount(secrets)
        await asyncio.to_thread(shutil.rmtree, secrets, True)

    # --- disk -----------------------------------------------------------------------------

    async def _folders(self) -> None:
        self.task_dir.mkdir(parents=True, exist_ok=True)
        secrets, local = self.task_dir / SECRETS, self.task_dir / LOCAL
        for d in (secrets, local):
            if d.is_symlink():
                raise OSError(f"{d} is a link; refusing to use it")
        secrets.mkdir(exist_ok=True)
        local.mkdir(exist_ok=True)
        root = os.geteuid() == 0
        if root and not await _is_mountpoint(secrets):
            try:
                binds.mount_tmpfs(secrets, size=TMPFS_SIZE, mode=0o755)
                self.tmpfs = True
            except OSError as e:
                log.warning("could not mount a tmpfs for a task's secrets: they are kept on "
                            "disk, readable only by the task", extra={"dir": str(secrets),
                                                                      "error": str(e)})
        elif root:
            self.tmpfs = True
        os.chmod(secrets, 0o755 if root else 0o700)
        if root and not self.in_container and self.uid >= 0:
            os.chown(local, self.uid, self.gid)

    def _write(self, r: Rendering) -> None:
        root = os.geteuid() == 0
        for path, data in r.files.items():
            folder, _, name = path.rpartition("/")
            fd = _open_folder(self.task_dir, folder.split("/"),
                              uid=self.uid if root and not self.in_container else -1,
                              gid=self.gid)
            try:
                _replace(fd, name, data, r.modes[path],
                         uid=self.uid if root and not self.in_container else -1, gid=self.gid)
            finally:
                os.close(fd)
        stale = set(self.current.files) - set(r.files) if self.current is not None else set()
        for path in stale:
            folder, _, name = path.rpartition("/")
            with contextlib.suppress(OSError):
                fd = _open_folder(self.task_dir, folder.split("/"), create=False)
                try:
                    os.unlink(name, dir_fd=fd)
                finally:
                    os.close(fd)


def _open_folder(base: Path, parts: list[str], *, uid: int = -1, gid: int = -1,
                 create: bool = True) -> int:
    """A descriptor of ``base/parts...`` opened without following any link below ``base``
    (folders made on the way belong to ``uid``)."""
    fd = os.open(base, os.O_DIRECTORY | os.O_RDONLY)
    try:
        for part in parts:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                    if uid >= 0:
                        os.chown(part, uid, gid, dir_fd=fd, follow_symlinks=False)
            nxt = os.open(part, os.O_DIRECTORY | os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def _replace(folder: int, name: str, data: bytes, mode: int, *, uid: int, gid: int) -> None:
    tmp = f".{name}.{hashlib.sha256(os.urandom(8)).hexdigest()[:8]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if uid >= 0:
                os.fchown(f.fileno(), uid, gid)
            os.fchmod(f.fileno(), mode)
        os.rename(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=folder)
        raise


async def _is_mountpoint(path: Path) -> bool:
    return await asyncio.to_thread(os.path.ismount, path)
