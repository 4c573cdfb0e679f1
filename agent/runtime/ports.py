"""Host ports for an allocation (pure): the scheduler's choice, else the agent's.

The controller normally fills ``Allocation.ports`` (label → host port). A
static port is the port the job asked for. A dynamic port the controller left
unset is picked here from the node's dynamic range: the lowest port that is
neither used by another allocation nor refused by ``is_free`` (the caller's
bind test). Deterministic for the same inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

from orch.errors import RuntimeDriverError
from orch.jobspec.model import Network


def assign_ports(network: Network, given: Mapping[str, int], used: Collection[int], *,
                 lo: int, hi: int, is_free: Callable[[int], bool] = lambda _p: True,
                 ) -> dict[str, int]:
    """Label → host port for every port of ``network``.

    Raises RuntimeDriverError when the dynamic range has no free port left.
    """
    out: dict[str, int] = {}
    taken = set(used)
    for port in network.ports:
        if port.label in given and given[port.label] > 0:
            out[port.label] = given[port.label]
        elif port.static > 0:
            out[port.label] = port.static
        else:
            continue
        taken.add(out[port.label])
    candidate = lo
    for port in network.ports:
        if port.label in out:
            continue
        while candidate <= hi and (candidate in taken or not is_free(candidate)):
            candidate += 1
        if candidate > hi:
            raise RuntimeDriverError(
                f"no free host port left in the dynamic range {lo}-{hi} for port "
                f"{port.label!r}: widen agent runtime.dynamic_ports or free some ports")
        out[port.label] = candidate
        taken.add(candidate)
    return out


def container_port(network: Network, label: str, host_port: int) -> int:
    """The port inside the task for ``label``: ``to``, or the host port when ``to`` is 0."""
    for port in network.ports:
        if port.label == label:
            return port.to or host_port
    return host_port
