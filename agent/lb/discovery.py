"""Service discovery through gossip, confirmed by the controller.

An agent puts one key per (service, allocation) in its gossip node state while the
allocation is healthy::

    "ep:web:3f2a...": [host, port, published_port, protocol, policy, weight, proxy_protocol,
                       namespace, job, group]

and removes it (a tombstone) when the allocation stops or fails its checks. Each key
travels as a small delta, so a change reaches every member in a few gossip rounds.

Gossip says which endpoints are healthy now; it does not say which may exist. Any member
(and anyone holding the gossip key) can publish anything, so ``endpoint_table`` takes an
endpoint only when the controller placed it: the controller sends every agent the
expected endpoints (``Expected``: for every service with a port, keyed by namespace, job,
group and service, the allocations placed to run it and the node of each), and an
endpoint is taken only when its allocation is listed for that service, the member
publishing it is the node it was placed on, its host is that member's own gossip address
and its port the one the allocation was given. The service's published port, protocol and
policy come from the controller, never from gossip. Anything else is refused and counted
by reason (``Table.refused``). Until an agent has heard from the controller it takes its
own endpoints only. Members that are suspected, dead or gone contribute nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.lb.model import POLICIES, Endpoint, ServiceSpec
from orch.errors import ProtocolError
from orch.gossip.core import MemberInfo
from orch.gossip.messages import Status
from orch.jobspec.model import Group
from orch.v1 import controller_pb2

log = logging.getLogger("lb")

PREFIX = "ep:"
REASONS = ("malformed", "unexpected", "node", "address", "port")
"""Why a published endpoint is refused: not an endpoint (malformed); its allocation is not
placed for that service (unexpected); published by another member than the node it was
placed on (node); at another host than the publishing member's own (address); at another
port than the allocation was given (port)."""
LOGGED = 4096
"""Refused endpoints remembered so that each is logged once (then forgotten all at once)."""


def service_key(namespace: str, job: str, group: str, name: str) -> str:
    """The load balancer's name for a service: unique in the cluster."""
    return f"{namespace}/{job}/{group}/{name}"


def entries(alloc_id: str, group: Group, ports: Mapping[str, int], host: str, *,
            namespace: str = "default", job: str = "") -> dict[str, Any]:
    """The node-state keys and values an allocation publishes while it is healthy."""
    out: dict[str, Any] = {}
    for svc in group.services:
        port = ports.get(svc.port)
        if not port:
            continue
        out[f"{PREFIX}{svc.name}:{alloc_id}"] = [host, port, svc.published_port, svc.protocol,
                                                  svc.lb_policy, 1, svc.proxy_protocol,
                                                  namespace, job, group.name]
    return out


@dataclass(frozen=True, slots=True)
class Placed:
    """An endpoint the controller placed: its service, its node and its host port."""

    service: str
    node: str
    port: int


@dataclass(frozen=True, slots=True)
class Expected:
    """What the controller placed: every service with a port (published or not) and its
    allocations."""

    services: Mapping[str, ServiceSpec]
    """By service key, without endpoints."""
    placed: Mapping[tuple[str, str], Placed]
    """(allocation id, service name) -> where it was placed."""
    version: int = 0

    @classmethod
    def from_proto(cls, pb: controller_pb2.ExpectedEndpoints) -> Expected:
        """The controller's message; entries that make no sense are left out."""
        held = ExpectedSet()
        held.replace(pb)
        return held.expected


class ExpectedSet:
    """The expected endpoints as the controller's messages make them: a stream's whole set
    (``ExpectedEndpoints``), then the services that changed (``ExpectedEndpointChanges``),
    each naming the version it applies to. ::

        held = ExpectedSet()
        held.replace(msg.endpoints)             # a whole set
        held.change(msg.endpoint_changes)       # ProtocolError: not a change of the set held
        table.set_expected(held.expected)

    Services that make no sense are left out (a changed one that makes none is taken out).
    """

    __slots__ = ("_placed", "_services", "_where", "version")

    def __init__(self) -> None:
        self.version = 0
        self._services: dict[str, ServiceSpec] = {}
        self._placed: dict[tuple[str, str], Placed] = {}
        self._where: dict[str, list[tuple[str, str]]] = {}
        """Service key -> its entries in ``_placed`` (to take them out when it changes)."""

    @property
    def expected(self) -> Expected:
        """The set held (its maps are this object's own: later messages change them)."""
        return Expected(self._services, self._placed, self.version)

    def replace(self, pb: controller_pb2.ExpectedEndpoints) -> None:
        """Become the whole set ``pb`` carries."""
        self._services, self._placed, self._where = {}, {}, {}
        for s in pb.services:
            self._put(s)
        self.version = pb.version

    def change(self, pb: controller_pb2.ExpectedEndpointChanges) -> None:
        """Apply changes to the set held; ProtocolError (and nothing changed) when they are
        changes of another version."""
        if pb.base_version != self.version:
            raise ProtocolError(f"expected-endpoint changes for version {pb.base_version}, "
                                f"but this node holds version {self.version}")
        for s in pb.removed:
            self._drop(service_key(s.namespace or "default", s.job, s.group, s.name))
        for s in pb.services:
            self._drop(service_key(s.namespace or "default", s.job, s.group, s.name))
            self._put(s)
        self.version = pb.version

    def __len__(self) -> int:
        return len(self._services)

    def _put(self, s: controller_pb2.ExpectedService) -> None:
        if not (s.name and s.job and 0 <= s.published_port < 65536
                and s.protocol in ("tcp", "udp") and s.lb_policy in POLICIES):
            return
        key = service_key(s.namespace or "default", s.job, s.group, s.name)
        self._services[key] = ServiceSpec(name=s.name, namespace=s.namespace or "default",
                                          job=s.job, group=s.group,
                                          published_port=s.published_port,
                                          protocol=s.protocol, policy=s.lb_policy,
                                          proxy_protocol=s.proxy_protocol)
        where = self._where.setdefault(key, [])
        for e in s.endpoints:
            if e.alloc_id and e.node:
                self._placed[(e.alloc_id, s.name)] = Placed(key, e.node, max(0, e.port))
                where.append((e.alloc_id, s.name))

    def _drop(self, key: str) -> None:
        self._services.pop(key, None)
        for entry in self._where.pop(key, ()):
            placed = self._placed.get(entry)
            if placed is not None and placed.service == key:  # not claimed since by another
                del self._placed[entry]


@dataclass(slots=True)
class Table:
    """An endpoint table, and what was refused building it."""

    services: dict[str, ServiceSpec]
    """The published services (what the load balancer serves), by service key."""
    refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    catalog: dict[str, ServiceSpec] = field(default_factory=dict)
    """Every service with a healthy endpoint, published or not (what task templates
    read), by service key."""

    def endpoints(self, namespace: str, name: str) -> list[Endpoint]:
        """The healthy endpoints of service ``name`` in ``namespace`` (every job and group
        that names a service so)."""
        return sorted((e for s in self.catalog.values()
                       if s.name == name and s.namespace == namespace for e in s.endpoints),
                      key=lambda e: e.alloc_id)


_logged: set[tuple[str, str, str]] = set()


def _refuse(table: Table, reason: str, member: str, key: str) -> None:
    table.refused[reason] += 1
    if (member, key, reason) in _logged:
        return
    if len(_logged) >= LOGGED:
        _logged.clear()
    _logged.add((member, key, reason))
    log.warning("refusing an endpoint published in gossip", extra={
        "member": member, "key": key[:80], "reason": reason})


def endpoint_table(members: Iterable[MemberInfo], me: str,
                   expected: Expected | None = None) -> Table:
    """The services to publish, with the endpoints alive members announce that the
    controller placed (``expected``; None: not heard from it yet, only our own)."""
    found: dict[str, list[Endpoint]] = {}
    own: dict[str, ServiceSpec] = {}
    table = Table({})
    for m in members:
        if m.status is not Status.ALIVE:
            continue
        local = m.name == me
        for key, value in m.state.items():
            if not key.startswith(PREFIX):
                continue
            parsed = _parse(key, value)
            if parsed is None:
                _refuse(table, "malformed", m.name, key)
                continue
            name, alloc_id, host, port, weight, spec = parsed
            if expected is None:
                if not local:
                    _refuse(table, "unexpected", m.name, key)
                    continue
                skey = service_key(spec.namespace, spec.job, spec.group, name)
                own.setdefault(skey, spec)
                proxy, want_port = spec.proxy_protocol, 0
            else:
                placed = expected.placed.get((alloc_id, name))
                if placed is None:
                    _refuse(table, "unexpected", m.name, key)
                    continue
                if placed.node != m.name:
                    _refuse(table, "node", m.name, key)
                    continue
                skey, want_port = placed.service, placed.port
                proxy = expected.services[skey].proxy_protocol
            if host != m.addr[0]:
                _refuse(table, "address", m.name, key)
                continue
            if want_port and port != want_port:
                _refuse(table, "port", m.name, key)
                continue
            found.setdefault(skey, []).append(Endpoint(
                alloc_id=alloc_id, node=m.name, host=host, port=port, weight=weight,
                local=local, proxy_protocol=proxy))
    specs = expected.services if expected is not None else own
    for skey, eps in sorted(found.items()):
        spec = specs[skey]
        eps.sort(key=lambda e: e.alloc_id)
        full = ServiceSpec(
            name=spec.name, namespace=spec.namespace, job=spec.job, group=spec.group,
            published_port=spec.published_port, protocol=spec.protocol, policy=spec.policy,
            proxy_protocol=spec.proxy_protocol, endpoints=tuple(eps))
        table.catalog[skey] = full
        if spec.published_port:
            table.services[skey] = full
    return table


def _parse(key: str, value: Any) -> tuple[str, str, str, int, int, ServiceSpec] | None:
    """One published endpoint: (service, allocation, host, port, weight, the spec it
    claims); None when it is not one."""
    try:
        _, name, alloc_id = key.split(":", 2)
        if type(value) is not list or len(value) < 7:
            return None
        host, port, published, protocol, policy, weight, pp = value[:7]
        ns, job, group = (value[7:10] + ["default", "", ""][len(value[7:10]):])
        if not (type(host) is str and 0 < len(host) <= 255 and type(port) is int
                and 0 < port < 65536 and type(published) is int and 0 <= published < 65536
                and protocol in ("tcp", "udp") and policy in POLICIES
                and type(weight) is int and 0 < weight <= 1000 and name and alloc_id
                and len(name) <= 256 and len(alloc_id) <= 256
                and all(type(x) is str and len(x) <= 256 for x in (ns, job, group))):
            return None
    except (ValueError, TypeError):
        return None
    spec = ServiceSpec(name=name, namespace=ns or "default", job=job, group=group,
                       published_port=published, protocol=protocol, policy=policy,
                       proxy_protocol=pp is True)
    return name, alloc_id, host, port, weight, spec
