"""Service discovery through gossip: every agent publishes its endpoints, every agent reads all.

An agent puts one key per (service, allocation) in its gossip node state while
the allocation is healthy::

    "ep:web:3f2a...": [host, port, published_port, protocol, policy, weight, proxy_protocol]

and removes it (a tombstone) when the allocation stops or fails its checks. Each
key travels as a small delta, so a change reaches every member in a few gossip
rounds. ``endpoint_table`` turns the members' states into the load balancer's
table; members that are suspected, dead or gone contribute nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from agent.lb.model import POLICIES, Endpoint, ServiceSpec
from orch.gossip.core import MemberInfo
from orch.gossip.messages import Status
from orch.jobspec.model import Group

log = logging.getLogger("lb")

PREFIX = "ep:"


def entries(alloc_id: str, group: Group, ports: Mapping[str, int], host: str) -> dict[str, Any]:
    """The node-state keys and values an allocation publishes while it is healthy."""
    out: dict[str, Any] = {}
    for svc in group.services:
        port = ports.get(svc.port)
        if not port:
            continue
        out[f"{PREFIX}{svc.name}:{alloc_id}"] = [host, port, svc.published_port, svc.protocol,
                                                  svc.lb_policy, 1, svc.proxy_protocol]
    return out


def endpoint_table(members: Iterable[MemberInfo], me: str) -> dict[str, ServiceSpec]:
    """Services published on a port, with the endpoints alive members announce."""
    found: dict[str, list[tuple[Endpoint, int, str, str]]] = {}
    for m in members:
        if m.status is not Status.ALIVE:
            continue
        for key, value in m.state.items():
            if not key.startswith(PREFIX):
                continue
            parsed = _parse(key, value, m.name, local=m.name == me)
            if parsed is not None:
                name, ep, published, protocol, policy = parsed
                found.setdefault(name, []).append((ep, published, protocol, policy))
    table: dict[str, ServiceSpec] = {}
    for name, eps in sorted(found.items()):
        eps.sort(key=lambda e: e[0].alloc_id)
        _, published, protocol, policy = eps[0]  # the oldest-named allocation decides
        if not published:
            continue
        table[name] = ServiceSpec(name=name, published_port=published, protocol=protocol,
                                  policy=policy, endpoints=tuple(e[0] for e in eps))
    return table


def service_endpoints(members: Iterable[MemberInfo], service: str) -> list[Endpoint]:
    """Every healthy endpoint of ``service`` that alive members announce, published on a
    port or not (what task templates read with ``service("name")``)."""
    prefix = f"{PREFIX}{service}:"
    found = []
    for m in members:
        if m.status is not Status.ALIVE:
            continue
        for key, value in m.state.items():
            if key.startswith(prefix):
                parsed = _parse(key, value, m.name, local=False)
                if parsed is not None:
                    found.append(parsed[1])
    return sorted(found, key=lambda e: e.alloc_id)


def _parse(key: str, value: Any, node: str, *, local: bool) -> \
        tuple[str, Endpoint, int, str, str] | None:
    """One published endpoint, or None (logged) when a member sends something malformed."""
    try:
        _, name, alloc_id = key.split(":", 2)
        host, port, published, protocol, policy, weight, pp = value[:7]
        if not (isinstance(host, str) and isinstance(port, int) and 0 < port < 65536
                and isinstance(published, int) and 0 <= published < 65536
                and protocol in ("tcp", "udp") and policy in POLICIES
                and isinstance(weight, int) and weight > 0 and name and alloc_id):
            raise ValueError("bad field")
    except (ValueError, TypeError):
        log.warning("ignoring a malformed endpoint", extra={"member": node, "key": key[:80]})
        return None
    ep = Endpoint(alloc_id=alloc_id, node=node, host=host, port=port, weight=weight,
                  local=local, proxy_protocol=bool(pp))
    return name, ep, published, protocol, policy
