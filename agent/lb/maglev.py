"""Maglev consistent hashing (Eisenbud et al., NSDI 2016), weighted; pure.

Each endpoint owns a permutation of the table's M slots (an offset and a skip
drawn from two hashes of its name; M prime, so every skip walks every slot).
Endpoints take turns claiming their next free preferred slot until the table is
full; an endpoint of weight w takes w / max(weights) turns per round. A client
maps to ``table[hash(client) % M]``. Adding or removing one of N endpoints moves
close to the minimal 1/N of the clients, and every endpoint owns a share of the
slots within one entry per round of its weight's share.

Hashes are keyed BLAKE2b, so every agent builds the same table from the same
endpoint set (Python's ``hash`` is salted per process).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def stable_hash(data: bytes, salt: bytes = b"") -> int:
    """A 64-bit hash that is the same in every process and on every machine."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, key=salt).digest(), "little")


def build_table(names: Sequence[str], weights: Sequence[int], size: int) -> list[int]:
    """The lookup table: ``size`` (a prime) entries, each an index into ``names``.

    ``names`` must be distinct; the table depends on the names and weights, and on
    their order only where two endpoints tie for a slot, so callers pass them sorted.
    """
    n = len(names)
    if n == 0:
        return []
    if len(weights) != n:
        raise ValueError("one weight per name")
    top = max(max(weights), 1)
    share = [max(w, 0) / top for w in weights]
    if not any(share):
        share = [1.0] * n
    offsets = [stable_hash(name.encode(), b"maglev-offset") % size for name in names]
    skips = [stable_hash(name.encode(), b"maglev-skip") % (size - 1) + 1 for name in names]
    # position[i]: endpoint i's next candidate slot (offset + j * skip mod size, walked
    # incrementally); credit[i]: turns it has earned and not yet taken.
    position = offsets[:]
    credit = [0.0] * n
    entry = [-1] * size
    filled = 0
    while True:
        for i in range(n):
            credit[i] += share[i]
            if credit[i] < 1.0:
                continue
            credit[i] -= 1.0
            c = position[i]
            skip = skips[i]
            while entry[c] >= 0:
                c += skip
                if c >= size:
                    c -= size
            entry[c] = i
            c += skip
            position[i] = c - size if c >= size else c
            filled += 1
            if filled == size:
                return entry
