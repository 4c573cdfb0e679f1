"""The words orch uses for its enums, and the default namespace: mapped to the wire once.

The protos' enums (``CLIENT_STATUS_RUNNING``) are the API and the store format; the
scheduler, the runtime, metrics and ``orchctl`` speak the same values as lower-case
words (``running``). Each enum's words come from its descriptor, so a value added to a
proto has its word at once. A zero value on the wire means "not set" and reads as the
enum's default (an allocation nobody has reported on yet is ``pending``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar

from google.protobuf.descriptor import EnumDescriptor

from orch.v1 import job_pb2, node_pb2

DEFAULT_NAMESPACE = "default"
"""The namespace of a job (and of everything it owns) that names none."""


def namespace_of(namespace: str) -> str:
    """``namespace``, or the default namespace when it is empty (not set on the wire)."""
    return namespace or DEFAULT_NAMESPACE


LB_KERNEL_POLICIES = ("round_robin", "random", "maglev")
"""Balancing policies the routing mesh's kernel data plane runs (nftables ``numgen`` and
``jhash`` into a Maglev table); a service with another policy, or with the PROXY protocol,
is forwarded by the user-space proxy."""


def lb_mode(policy: str, proxy_protocol: bool, kernel_nodes: int, nodes: int) -> str:
    """The data plane of a service with ``policy`` when ``kernel_nodes`` of the ``nodes``
    run the kernel data plane (node attribute ``lb.mode``)."""
    if proxy_protocol or policy not in LB_KERNEL_POLICIES or kernel_nodes == 0:
        return "proxy"
    if kernel_nodes >= nodes:
        return "kernel"
    return f"kernel on {kernel_nodes} of {nodes} nodes"


V = TypeVar("V", bound=int)


class _Enum(Protocol):
    DESCRIPTOR: EnumDescriptor


class Words(Generic[V]):
    """One protobuf enum's values as words: ``CLIENT_STATUS_RUNNING`` <-> ``running``."""

    def __init__(self, enum: _Enum, unset: str) -> None:
        values = enum.DESCRIPTOR.values
        prefix = values[0].name.removesuffix("UNSPECIFIED")
        self._word: dict[int, str] = {v.number: v.name.removeprefix(prefix).lower()
                                      for v in values}
        self._value: dict[str, V] = {w: n for n, w in self._word.items()  # type: ignore[misc]
                                     if n != 0}
        if unset and unset not in self._value:  # "": the unset value has no word
            raise ValueError(f"{enum.DESCRIPTOR.name} has no value {unset!r}")
        self._word[0] = unset
        self._unset = unset
        self.words = tuple(self._value)
        """Every word, in the enum's order (the unspecified value has none of its own)."""

    def word(self, value: int) -> str:
        """The word for a value on the wire; 0 (not set), or a value this build does not
        know, reads as the default word."""
        return self._word.get(value, self._unset)

    def value(self, word: str) -> V:
        """The value on the wire for a word; KeyError when the enum has no such word."""
        return self._value[word]


CLIENT_STATUS = Words[node_pb2.ClientStatus.ValueType](node_pb2.ClientStatus, unset="pending")
"""What the agent reports of an allocation: pending, running, complete, failed, lost."""
DESIRED_STATUS = Words[node_pb2.DesiredStatus.ValueType](node_pb2.DesiredStatus, unset="run")
"""What the controller wants of an allocation: run or stop."""
NODE_STATUS = Words[node_pb2.NodeStatus.ValueType](node_pb2.NodeStatus, unset="init")
"""A node's status: init, ready or down."""
JOB_TYPE = Words[job_pb2.JobType.ValueType](job_pb2.JobType, unset="service")
"""service, batch or system."""
ALLOC_HEALTH = Words[node_pb2.AllocHealth.ValueType](node_pb2.AllocHealth, unset="")
"""An agent's verdict on an allocation for deployments: pending, healthy, unhealthy; ""
when its agent does not judge (the controller times it)."""
JOB_STATUS = Words[job_pb2.JobStatus.ValueType](job_pb2.JobStatus, unset="pending")
"""pending, running or dead."""

HOST_VOLUME_ATTR = "host_volume."
"""A node's attribute ``host_volume.<name>``: ``rw``, or ``ro`` for a host volume its agent
declares read-only (fingerprinted from agent.toml's ``[[host_volume]]`` tables); constraints
read it as ``${attr.host_volume.<name>}``, the scheduler places groups by it."""


def host_volume_attributes(volumes: Iterable[tuple[str, bool]]) -> dict[str, str]:
    """The node attributes of its host volumes, given as (name, read_only)."""
    return {f"{HOST_VOLUME_ATTR}{name}": "ro" if read_only else "rw"
            for name, read_only in volumes}


DESIRED_CHANGES = "desired-changes"
"""A node's feature (``Node.features``): its stream takes ``DesiredChanges`` after the first
full desired set (``agent.desired``, ``controller.desired``)."""

HEARTBEAT_INTERVAL = "heartbeat-interval"
"""A node's feature (``Node.features``): its stream takes heartbeats at the interval each
one names (``Heartbeat.next_ms``), which the leader makes longer as more agents stream to
it, instead of one every second."""

ENDPOINT_CHANGES = "endpoint-changes"
"""A node's feature (``Node.features``): its stream takes ``ExpectedEndpointChanges`` after
the first whole ``ExpectedEndpoints`` (``agent.lb.discovery.ExpectedSet``,
``controller.endpoints``)."""
