"""Host ports: do a group's static ports fit on a node, and which dynamic ports does it get.

A host port number is one resource whatever the protocol (TCP and UDP on the
same number conflict), as in Nomad. Reserved ports of the node count as taken.
Dynamic ports are drawn at random (from the call's seeded source) inside the
configured range, so that a port just released is not handed out again at once;
when random draws keep hitting taken ports the range is scanned.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from controller.scheduler.context import Delta, port_taken
from controller.scheduler.snapshot import NodeState

_RANDOM_TRIES = 16


def ports_problem(node: NodeState, delta: Delta | None, static: Sequence[int], dynamic: int,
                  lo: int, hi: int) -> str | None:
    """None when the ports fit, else the exhausted dimension (``port 80``, ``dynamic ports``)."""
    for p in static:
        if port_taken(node, delta, p):
            return f"port {p}"
    if dynamic:
        size = hi - lo + 1
        held = len(node.ports) + (len(delta.ports_added) if delta is not None else 0)
        if held + len(static) + dynamic > size:  # only then count exactly what is in range
            free = size - sum(1 for p in range(lo, hi + 1) if port_taken(node, delta, p))
            # static ports of this very placement may fall in the range too
            free -= sum(1 for p in static if lo <= p <= hi)
            if free < dynamic:
                return "dynamic ports"
    return None


def pick_dynamic(node: NodeState, delta: Delta | None, n: int, lo: int, hi: int,
                 avoid: Sequence[int], rng: random.Random) -> list[int]:
    """``n`` free ports in [lo, hi] not in ``avoid``; assumes :func:`ports_problem` said yes."""
    chosen: list[int] = []
    taken = set(avoid)
    for _ in range(n):
        port = 0
        for _ in range(_RANDOM_TRIES):
            cand = rng.randint(lo, hi)
            if cand not in taken and not port_taken(node, delta, cand):
                port = cand
                break
        if not port:
            start = rng.randint(lo, hi)
            for off in range(hi - lo + 1):
                cand = lo + (start - lo + off) % (hi - lo + 1)
                if cand not in taken and not port_taken(node, delta, cand):
                    port = cand
                    break
        if not port:
            raise RuntimeError(f"no free dynamic port on {node.info.id}")  # checked before
        chosen.append(port)
        taken.add(port)
    return chosen
