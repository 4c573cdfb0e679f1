"""What a task mounts: its group's volumes resolved on this node (pure).

A group names its volumes (``volumes: {data: {type: host, source: data}}``) and each task
mounts some of them (``volume_mounts: [{volume: data, destination: /var/lib/kv}]``). On a
node they become :class:`Mount` s: a host volume is the folder its agent declares
(``[[host_volume]]`` in agent.toml), a Docker volume a named volume of the node's engine
(``<source>-<index>`` with ``per_alloc``). The drivers carry them out: Docker as bind or
volume mounts; the process driver as bind mounts into the task's folder.

A task finds each volume through ``ORCH_VOLUME_<name>``: the destination in a container,
the folder in a process task's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

from orch.jobspec.model import Group, Task

from .config import HostVolume

_ENV_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
ENV_PREFIX = "ORCH_VOLUME_"


@dataclass(frozen=True, slots=True, kw_only=True)
class Mount:
    """One volume in one task, as its driver mounts it."""

    volume: str
    """The group's name for the volume."""
    type: str
    """host or docker."""
    source: str
    """host: the folder on this node; docker: the volume's name on this node's engine."""
    destination: str
    """docker: the path in the container; process: the path in the task's folder."""
    read_only: bool


def task_mounts(group: Group, index: int, task: Task,
                host_volumes: Iterable[HostVolume]) -> tuple[tuple[Mount, ...], list[str]]:
    """The mounts of ``task`` (of allocation ``index`` of ``group``) on this node, and what
    is wrong (a host volume this node does not declare); the job was validated."""
    declared = {v.name: v for v in host_volumes}
    mounts, problems = [], []
    for m in task.volume_mounts:
        vol = group.volumes.get(m.volume)
        if vol is None:
            problems.append(f"task {task.name!r} mounts volume {m.volume!r}, which its group "
                            "does not declare")
            continue
        read_only = m.read_only or vol.read_only
        if vol.type == "host":
            host = declared.get(vol.source)
            if host is None:
                problems.append(f"host volume {vol.source!r} is not declared there "
                                "(agent.toml: [[host_volume]])")
                continue
            mounts.append(Mount(volume=m.volume, type="host", source=host.path,
                                destination=m.destination, read_only=read_only or host.read_only))
        else:
            mounts.append(Mount(volume=m.volume, type="docker", source=vol.source_for(index),
                                destination=m.destination, read_only=read_only))
    return tuple(mounts), problems


def in_task_dir(destination: str) -> PurePosixPath:
    """Where a process task's mount goes, relative to its ``local`` folder (``/data`` and
    ``data`` both become ``data``); the job was validated (no ``..``, not the root)."""
    return PurePosixPath(*[p for p in destination.split("/") if p not in ("", ".")])


def volume_env(mounts: Iterable[Mount], where: Mapping[str, str]) -> dict[str, str]:
    """``ORCH_VOLUME_<name>`` for each volume (the first mount of it): ``where[volume]``."""
    out: dict[str, str] = {}
    for m in mounts:
        key = ENV_PREFIX + _ENV_UNSAFE.sub("_", m.volume)
        out.setdefault(key, where[m.volume])
    return out
