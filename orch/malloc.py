"""glibc's allocator, set once at the controller's start, for a process that runs for months.

glibc serves a block of ``M_MMAP_THRESHOLD`` bytes or more (128 KiB at first) with a
mapping of its own, given back to the kernel when freed. By default the threshold moves:
when a mapped block is freed, it rises to that block's size (up to 32 MiB), and from then
on blocks that large are carved from the heap. A controller builds a large transient
buffer now and then (a store snapshot, a big desired set); at some moment weeks into its
life one is freed, the buffers that follow land in the heap, and the live blocks around
them keep the space they leave: the heap's high-water mark, and resident memory with it,
steps up. Setting the threshold explicitly turns the adjustment off (mallopt(3)), with
the trim threshold left at glibc's 128 KiB, so large buffers keep their own mappings and
go back to the kernel when freed.

The agent does not do this: its large blocks are the routing mesh's reads (uvloop's
250 KB), of one steady size, which glibc's adjustment settles on within the first bulk
transfer; with the threshold fixed at 128 KiB each read would be mapped and unmapped,
which halves the user-space proxy's bulk throughput.

An operator's ``MALLOC_MMAP_THRESHOLD_`` in the environment wins; on a C library other
than glibc nothing is done.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Mapping

log = logging.getLogger("daemon")

MMAP_THRESHOLD = 128 * 1024
"""glibc's own starting value: blocks this large or larger get a mapping of their own."""
M_MMAP_THRESHOLD = -3
"""mallopt(3)'s parameter number (malloc.h)."""
ENV = "MALLOC_MMAP_THRESHOLD_"


def is_glibc() -> bool:
    """Whether this process runs on glibc (musl, for one, has no mallopt)."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError):
        return False


def pin_mmap_threshold(env: Mapping[str, str] | None = None,
                       threshold: int = MMAP_THRESHOLD) -> int | None:
    """Fix glibc's mmap threshold at ``threshold`` bytes, which stops its adjustment; the
    threshold set, or None when the environment sets one already or this is not glibc."""
    env = os.environ if env is None else env
    if ENV in env or not is_glibc():
        return None
    libc = ctypes.CDLL(None)
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    if libc.mallopt(M_MMAP_THRESHOLD, threshold) != 1:
        log.warning("mallopt refused the mmap threshold", extra={"threshold": threshold})
        return None
    return threshold
