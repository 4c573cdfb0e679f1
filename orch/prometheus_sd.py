"""Prometheus service discovery from gossip (pure): the ``http_sd_configs`` target groups
every agent serves at ``/v1/sd/prometheus`` on its metrics listener.

Every member says where its own ``/metrics`` is in its node state (``metrics``:
``host:port``), and an agent announces each healthy allocation's port labelled
``metrics``::

    "mx:<alloc-id>": [host, port, namespace, job, group]

As with service endpoints (``agent.lb.discovery``), a member can only point at itself:
an address whose host is not the member's own gossip address is left out (and counted),
so a hostile member cannot make Prometheus scrape someone else. Suspected, dead and gone
members contribute nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from orch.gossip.core import MemberInfo
from orch.gossip.messages import Status

PREFIX = "mx:"
"""Node-state keys of tasks' metrics ports."""
METRICS_KEY = "metrics"
"""The node-state key of a member's own ``/metrics`` address."""
ROLE_JOBS = {"agent": "orch-agent", "controller": "orch-controller"}
"""The ``job`` label of the daemons' own metrics (a task's is its orch job's name)."""
NAME_MAX = 256
"""The longest namespace, job or group taken from gossip (longer: left out)."""


@dataclass(slots=True)
class Targets:
    groups: list[dict[str, Any]] = field(default_factory=list)
    """Prometheus's target groups: ``{"targets": ["host:port"], "labels": {...}}``."""
    refused: int = 0
    """Addresses left out: malformed, or at another host than their member's."""


def entry(alloc_id: str, host: str, port: int, *, namespace: str, job: str,
          group: str) -> dict[str, Any]:
    """The node-state key and value announcing an allocation's metrics port."""
    return {f"{PREFIX}{alloc_id}": [host, port, namespace, job, group]}


def _hostport(text: Any) -> tuple[str, int] | None:
    if type(text) is not str or len(text) > 300:
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.strip("[]"), int(port)


def targets(members: Iterable[MemberInfo]) -> Targets:
    """Every live member's ``/metrics`` and every healthy task's metrics port."""
    out = Targets()
    for m in sorted(members, key=lambda m: m.name):
        if m.status is not Status.ALIVE:
            continue
        host = m.addr[0]
        role = m.state.get("role")
        own = m.state.get(METRICS_KEY)
        if own is not None:
            hp = _hostport(own)
            if hp is None or hp[0] != host:
                out.refused += 1
            else:
                out.groups.append({"targets": [f"{hp[0]}:{hp[1]}"], "labels": {
                    "job": ROLE_JOBS.get(str(role), "orch"), "node": m.name,
                    "role": str(role) if role in ROLE_JOBS else "member"}})
        for key, value in sorted(m.state.items()):
            if not key.startswith(PREFIX):
                continue
            alloc_id = key[len(PREFIX):]
            if not (type(value) is list and len(value) >= 5 and value[0] == host
                    and type(value[1]) is int and 0 < value[1] < 65536
                    and all(type(x) is str and 0 < len(x) <= NAME_MAX for x in value[2:5])
                    and 0 < len(alloc_id) <= NAME_MAX):
                out.refused += 1
                continue
            out.groups.append({"targets": [f"{host}:{value[1]}"], "labels": {
                "job": value[3], "group": value[4], "namespace": value[2], "node": m.name,
                "alloc_id": alloc_id, "role": "task"}})
    return out
