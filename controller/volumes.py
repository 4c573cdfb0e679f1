"""The cluster's volumes as ``orchctl volume list`` shows them: every node's host volumes
(from its registration) and the Docker volumes allocations mount, each with the live
allocations that mount it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from controller.state import RUN, TERMINAL
from orch.jobspec.model import Group
from orch.v1 import controller_pb2, node_pb2


def live(a: node_pb2.Allocation) -> bool:
    """Desired to run, or still running (its volumes are in use)."""
    return a.desired_status == RUN or a.client_status not in TERMINAL


def volume_entries(nodes: Mapping[str, node_pb2.Node], allocs: Iterable[node_pb2.Allocation],
                   spec: Callable[[node_pb2.Allocation], Group | None],
                   *, with_unused: bool = True) -> list[controller_pb2.VolumeEntry]:
    """Host volumes of ``nodes`` and the Docker volumes ``allocs`` mount, by node and name;
    ``with_unused``: host volumes no allocation mounts too."""
    host: dict[tuple[str, str], controller_pb2.VolumeEntry] = {}
    docker: dict[tuple[str, str], controller_pb2.VolumeEntry] = {}
    for node in nodes.values():
        for hv in node.host_volumes:
            host[node.id, hv.name] = controller_pb2.VolumeEntry(
                name=hv.name, type="host", node_id=node.id, node=node.name, path=hv.path,
                read_only=hv.read_only)
    used: set[tuple[str, str]] = set()
    for a in allocs:
        group = spec(a) if live(a) else None
        if group is None:
            continue
        for v in group.volumes.values():
            key = (a.node_id, v.source_for(a.index))
            if v.type == "host":
                entry = host.get(key)
                if entry is None:  # the node no longer declares it
                    continue
                used.add(key)
            else:
                entry = docker.get(key)
                if entry is None:
                    on = nodes.get(a.node_id)
                    entry = docker[key] = controller_pb2.VolumeEntry(
                        name=key[1], type="docker", node_id=a.node_id,
                        node=on.name if on is not None else "")
            if a.id not in entry.allocations:
                entry.allocations.append(a.id)
    entries = [e for k, e in host.items() if with_unused or k in used] + list(docker.values())
    return sorted(entries, key=lambda e: (e.node, e.type, e.name))
