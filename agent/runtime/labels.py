"""The labels that mark a container (or a process task) as orch's, and its name.

Every container orch starts carries ``orch.managed=true`` and who it belongs
to: allocation, job, group, task, node, job version, and a hash of the spec it
was started from. After an agent restart these labels are all the agent needs
to adopt what runs (same allocation, task and spec hash) and to remove what no
longer should (garbage collection, limited to its own ``orch.node``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from orch.jobspec.model import Network, Resources, Task

from .volumes import Mount

MANAGED = "orch.managed"
ALLOC = "orch.alloc"
ALLOC_NAME = "orch.alloc_name"
NAMESPACE = "orch.namespace"
JOB = "orch.job"
JOB_VERSION = "orch.job_version"
GROUP = "orch.group"
TASK = "orch.task"
NODE = "orch.node"
SPEC_HASH = "orch.spec_hash"
PORTS = "orch.ports"
"""``http=20000,admin=9000``: the host ports, so a restarted agent keeps the ones it picked."""

_RESERVED = (MANAGED, ALLOC, ALLOC_NAME, NAMESPACE, JOB, JOB_VERSION, GROUP, TASK, NODE, SPEC_HASH,
             PORTS)


@dataclass(frozen=True, slots=True)
class TaskIdentity:
    """Who a container belongs to, read back from its labels."""

    alloc_id: str
    task: str
    node: str
    spec_hash: str
    job: str = ""
    group: str = ""
    job_version: int = 0
    ports: tuple[tuple[str, int], ...] = ()


def spec_hash(task: Task, network: Network, ports: Mapping[str, int],
              mounts: Sequence[Mount] = ()) -> str:
    """A short hash of everything that, when changed, needs a new container or process.

    The job version is left out on purpose: a new version that does not change the
    task (a new count, new metadata) updates the allocation in place.
    """
    # resources are left out too: a new CPU or memory limit is applied to the running task
    bare = dataclasses.asdict(dataclasses.replace(task, resources=Resources()))
    doc: dict[str, object] = {"task": bare, "network": dataclasses.asdict(network),
                              "ports": dict(sorted(ports.items()))}
    # fields added since are in the hash only when set: a task that does not use them keeps
    # the hash it had, and an agent upgrade adopts it rather than replacing it
    for added in ("volume_mounts", "secrets", "templates"):
        if not bare[added]:
            del bare[added]
    if mounts:
        doc["mounts"] = [dataclasses.asdict(m) for m in mounts]
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=dict)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def task_labels(*, alloc_id: str, alloc_name: str, namespace: str, job: str, job_version: int,
                group: str, task: Task, node: str, spec: str) -> dict[str, str]:
    """The task's own labels, then orch's (which win: a job cannot forge them)."""
    labels = {k: v for k, v in task.labels.items() if k not in _RESERVED}
    labels.update({
        MANAGED: "true", ALLOC: alloc_id, ALLOC_NAME: alloc_name, NAMESPACE: namespace,
        JOB: job, JOB_VERSION: str(job_version), GROUP: group, TASK: task.name, NODE: node,
        SPEC_HASH: spec,
    })
    return labels


def identity(labels: Mapping[str, str]) -> TaskIdentity | None:
    """Who the labelled object belongs to, or None when it is not orch's."""
    if labels.get(MANAGED) != "true" or not labels.get(ALLOC) or not labels.get(TASK):
        return None
    try:
        version = int(labels.get(JOB_VERSION, "0"))
    except ValueError:
        version = 0
    return TaskIdentity(alloc_id=labels[ALLOC], task=labels[TASK], node=labels.get(NODE, ""),
                        spec_hash=labels.get(SPEC_HASH, ""), job=labels.get(JOB, ""),
                        group=labels.get(GROUP, ""), job_version=version,
                        ports=tuple(parse_ports(labels.get(PORTS, "")).items()))


def format_ports(ports: Mapping[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(ports.items()))


def parse_ports(text: str) -> dict[str, int]:
    """The inverse of ``format_ports``; what does not parse is left out."""
    out = {}
    for item in text.split(","):
        label, _, port = item.partition("=")
        if label and port.isdigit():
            out[label] = int(port)
    return out


_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]")


def container_name(task: str, alloc_id: str) -> str:
    """``<task>-<alloc id>``, as Nomad names them; unique per task, so never started twice."""
    name = _UNSAFE.sub("_", f"{task}-{alloc_id}")
    return name if name[0].isalnum() else "orch" + name
