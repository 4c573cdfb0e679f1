"""The kernel data plane's nftables table, as commands: pure.

The agent owns one table, ``ip orch``, and nothing else: it never lists, changes or flushes
another table (Docker's, the host's firewall). Its layout::

    prerouting, output   nat hooks (dstnat): packets to a local address -> ``services``
    services             <proto> dport vmap @ports_<proto>   (published port -> service chain)
    s_<id>               one per service: count the new flow, DNAT by the service's slot map
                             round_robin  numgen inc    mod N  map @s_<id>_slots
                             random       numgen random mod N  map @s_<id>_slots
                             maglev       jhash ip saddr mod M map @s_<id>_slots (a Maglev table)
    postrouting          nat (srcnat): flows DNATed to an endpoint on another node are
                         masqueraded (the reply must come back through this node); flows to
                         this node's endpoints keep the client's address
    count_in, count_out  filter hooks: bytes and packets of the DNATed flows, per published
                         port and direction, into named counters

So an endpoint added or removed changes elements of maps and sets, not rules: one element of
a Maglev table per slot that moved; for round robin and random, the slot map is dense (0..N-1:
a removed endpoint's slot takes the last one) and the one rule of the service's chain is
replaced when N changes. Every change is one transaction (``nft -f`` of one buffer).

The commands are nftables' own syntax, built here from validated values only (names are
hashes, addresses are parsed, ports are integers), never from strings received from outside:
nftables 1.0.6 (Debian 12) cannot declare a map keyed by ``numgen``/``jhash`` in its JSON
input (no ``typeof``; ``type mark`` is refused against an integer key) and its JSON parser
crashes on a DNAT map with a concatenated address and port. Reading (counters, the table) uses
the JSON output.
"""

from __future__ import annotations

import functools
import hashlib
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from agent.lb.maglev import build_table
from orch.vocab import LB_KERNEL_POLICIES

FAMILY = "ip"
TABLE = "orch"
"""The one table the agent owns (``nft list table ip orch``)."""
KERNEL_POLICIES = LB_KERNEL_POLICIES
"""Policies the kernel data plane runs; the others (least_conn, p2c) need the proxy."""
MAGLEV_SEED = 0x6F726368
"""The seed of ``jhash`` ("orch"): the same on every agent, so every node maps a client to
the same slot of the same Maglev table."""
PROTOCOLS = ("tcp", "udp")

Target = tuple[str, int]
"""An endpoint as the kernel sees it: IPv4 address and port."""


@functools.lru_cache(maxsize=4096)
def service_id(key: str) -> str:
    """The name stem of a service's chain, map and counters (from its key; stable across
    restarts, ``[a-z0-9_]`` only)."""
    return "s_" + hashlib.blake2b(key.encode(), digest_size=6).hexdigest()


@functools.lru_cache(maxsize=65536)
def target(host: str, port: int) -> Target:
    """An endpoint address checked for the kernel: an IPv4 address in dotted quads (raises
    ValueError on anything else) and a port."""
    try:
        canonical = socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, host))
    except (OSError, TypeError):
        raise ValueError(f"not an IPv4 address: {host[:64]!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return (canonical, int(port))


@dataclass(frozen=True, slots=True)
class KernelService:
    """One published service as the kernel forwards it."""

    key: str
    protocol: str
    port: int
    policy: str
    slots: tuple[Target, ...]
    """The slot map: index -> endpoint (round robin and random: the N endpoints; Maglev: the
    M-entry lookup table)."""
    remote: frozenset[Target]
    """Endpoints on other nodes (masqueraded)."""

    @property
    def sid(self) -> str:
        return service_id(self.key)

    def targets(self) -> set[Target]:
        return set(self.slots)


def dense_slots(old: Sequence[Target], wanted: Iterable[Target]) -> tuple[Target, ...]:
    """The dense slot list for ``wanted`` that changes as few slots of ``old`` as possible:
    kept endpoints stay in place, a removed endpoint's slot is filled by the last one, new
    endpoints are appended."""
    want = list(dict.fromkeys(wanted))
    keep = set(want)
    slots = list(old)
    i = 0
    while i < len(slots):
        if slots[i] in keep:
            i += 1
            continue
        last = slots.pop()
        if i < len(slots):
            slots[i] = last  # (it may be a removed one too: slot i is looked at again)
    have = set(slots)
    slots.extend(t for t in want if t not in have)
    return tuple(slots)


def maglev_slots(targets: Iterable[tuple[Target, int]], size: int) -> tuple[Target, ...]:
    """The Maglev lookup table over weighted endpoints (``(target, weight)``)."""
    items = sorted(dict(targets).items())
    if not items:
        return ()
    names = [f"{a}:{p}" for (a, p), _ in items]
    table = build_table(names, [w for _, w in items], size)
    return tuple(items[i][0] for i in table)


# --- rendering -------------------------------------------------------------------------------
def _elem(t: Target) -> str:
    return f"{t[0]} . {t[1]}"


def _selector(svc: KernelService) -> str:
    n = len(svc.slots)
    if svc.policy == "maglev":
        return f"jhash ip saddr mod {n} seed {MAGLEV_SEED:#x}"
    mode = "random" if svc.policy == "random" else "inc"
    return f"numgen {mode} mod {n}"


def _dnat_rule(svc: KernelService) -> str:
    sid = svc.sid
    return (f"add rule {FAMILY} {TABLE} {sid} meta l4proto {svc.protocol} "
            f'counter name "{sid}_flows" dnat ip to {_selector(svc)} map @{sid}_slots')


def _chunks(items: Sequence[str], size: int = 4096) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _add_elements(name: str, elems: Sequence[str]) -> list[str]:
    return [f"add element {FAMILY} {TABLE} {name} {{ {', '.join(c)} }}" for c in _chunks(elems)]


def _delete_elements(name: str, elems: Sequence[str]) -> list[str]:
    return [f"delete element {FAMILY} {TABLE} {name} {{ {', '.join(c)} }}"
            for c in _chunks(elems)]


def skeleton(bind: str = "") -> list[str]:
    """Replace whatever table ``ip orch`` holds with the empty skeleton (one transaction with
    what follows: flows in conntrack keep their NAT; new flows see the old table or the new
    one, never none). Published ports are taken on every local address, or on ``bind`` only
    (the agent's ``lb_bind``, when it is not 0.0.0.0)."""
    t = f"{FAMILY} {TABLE}"
    local = "fib daddr type local"
    if bind and bind != "0.0.0.0":
        local = f"ip daddr {target(bind, 1)[0]}"
    cmds = [f"add table {t}", f"delete table {t}", f"add table {t}"]
    for proto in PROTOCOLS:
        cmds.append(f"add map {t} ports_{proto} {{ type inet_service : verdict; }}")
        for way in ("up", "down"):
            cmds.append(f"add map {t} {way}_{proto} {{ type inet_service : counter; }}")
    cmds += [
        f"add set {t} remote {{ type ipv4_addr . inet_proto . inet_service; }}",
        f"add chain {t} services",
        *(f"add rule {t} services {p} dport vmap @ports_{p}" for p in PROTOCOLS),
        f"add chain {t} prerouting {{ type nat hook prerouting priority -100; policy accept; }}",
        f"add rule {t} prerouting {local} jump services",
        f"add chain {t} output {{ type nat hook output priority -100; policy accept; }}",
        f"add rule {t} output {local} jump services",
        f"add chain {t} postrouting {{ type nat hook postrouting priority 100; policy accept; }}",
        f"add rule {t} postrouting ct status dnat ip daddr . meta l4proto . th dport @remote "
        "masquerade",
        # Every packet is counted once: those from interfaces (other than lo) as they come in,
        # those made on this host (including everything on lo) as they go out.
        f"add chain {t} count_in {{ type filter hook prerouting priority 0; policy accept; }}",
        f"add chain {t} count_out {{ type filter hook output priority 0; policy accept; }}",
    ]
    for chain, cond in (("count_in", 'iif != "lo" '), ("count_out", "")):
        for proto in PROTOCOLS:
            for way, direction in (("up", "original"), ("down", "reply")):
                cmds.append(
                    f"add rule {t} {chain} {cond}ct status dnat meta l4proto {proto} ct direction "
                    f"{direction} counter name ct original proto-dst map @{way}_{proto}")
    return cmds


def add_service(svc: KernelService) -> list[str]:
    """Commands that create ``svc`` (its counters, slot map, chain) and publish its port."""
    t, sid = f"{FAMILY} {TABLE}", svc.sid
    key = ("jhash ip saddr mod 2" if svc.policy == "maglev" else "numgen inc mod 2")
    cmds = [
        f"add counter {t} {sid}_flows",
        f"add counter {t} {sid}_up",
        f"add counter {t} {sid}_down",
        f"add map {t} {sid}_slots {{ typeof {key} : ip daddr . {svc.protocol} dport; }}",
        f"add chain {t} {sid}",
    ]
    cmds += _add_elements(f"{sid}_slots", [f"{i} : {_elem(x)}" for i, x in enumerate(svc.slots)])
    cmds.append(_dnat_rule(svc))
    cmds += _add_elements(f"ports_{svc.protocol}", [f"{svc.port} : goto {sid}"])
    cmds += _add_elements(f"up_{svc.protocol}", [f'{svc.port} : "{sid}_up"'])
    cmds += _add_elements(f"down_{svc.protocol}", [f'{svc.port} : "{sid}_down"'])
    cmds += _add_elements("remote", [f"{a} . {svc.protocol} . {p}" for a, p in sorted(svc.remote)])
    return cmds


def remove_service(svc: KernelService) -> list[str]:
    """Commands that unpublish ``svc`` and delete what it owns."""
    t, sid = f"{FAMILY} {TABLE}", svc.sid
    cmds = _delete_elements(f"ports_{svc.protocol}", [str(svc.port)])
    cmds += _delete_elements(f"up_{svc.protocol}", [str(svc.port)])
    cmds += _delete_elements(f"down_{svc.protocol}", [str(svc.port)])
    cmds += _delete_elements("remote", [f"{a} . {svc.protocol} . {p}"
                                        for a, p in sorted(svc.remote)])
    cmds += [f"delete chain {t} {sid}", f"delete map {t} {sid}_slots",
             f"delete counter {t} {sid}_flows", f"delete counter {t} {sid}_up",
             f"delete counter {t} {sid}_down"]
    return cmds


def change_service(old: KernelService, new: KernelService) -> list[str]:
    """The fewest commands that turn ``old`` into ``new`` (same key): the slots that changed,
    the remote endpoints that changed, and the rule when the slot count or policy changed. A
    new port, protocol or policy rebuilds the service."""
    if (old.port, old.protocol, old.policy) != (new.port, new.protocol, new.policy):
        return remove_service(old) + add_service(new)
    t, sid = f"{FAMILY} {TABLE}", new.sid
    cmds: list[str] = []
    changed = [i for i in range(min(len(old.slots), len(new.slots)))
               if old.slots[i] != new.slots[i]]
    gone = list(range(len(new.slots), len(old.slots)))
    added = list(range(len(old.slots), len(new.slots)))
    cmds += _delete_elements(f"{sid}_slots", [str(i) for i in changed + gone])
    cmds += _add_elements(f"{sid}_slots", [f"{i} : {_elem(new.slots[i])}"
                                           for i in changed + added])
    if len(old.slots) != len(new.slots):
        cmds += [f"flush chain {t} {sid}", _dnat_rule(new)]
    proto = new.protocol
    cmds += _delete_elements("remote", [f"{a} . {proto} . {p}"
                                        for a, p in sorted(old.remote - new.remote)])
    cmds += _add_elements("remote", [f"{a} . {proto} . {p}"
                                     for a, p in sorted(new.remote - old.remote)])
    return cmds


def plan(old: Mapping[str, KernelService] | None,
         new: Mapping[str, KernelService], *, bind: str = "") -> list[str]:
    """The commands of one transaction from ``old`` to ``new`` (None: the table is rebuilt
    from nothing, replacing whatever is there; ``bind``: see ``skeleton``)."""
    if old is None:
        cmds = skeleton(bind)
        for key in sorted(new):
            cmds += add_service(new[key])
        return cmds
    cmds = []
    for key in sorted(set(old) - set(new)):
        cmds += remove_service(old[key])
    for key in sorted(new):
        if key not in old:
            cmds += add_service(new[key])
        elif old[key] != new[key]:
            cmds += change_service(old[key], new[key])
    return cmds


def delete_table() -> list[str]:
    """Remove the table (at a clean stop); nothing if it is not there."""
    t = f"{FAMILY} {TABLE}"
    return [f"add table {t}", f"delete table {t}"]


def script(cmds: Sequence[str]) -> str:
    """One buffer for ``nft -f``: one transaction."""
    return "\n".join(cmds) + "\n"
