"""glibc's allocator, set once at a daemon's start for a process that runs for months.

glibc serves a block of ``M_MMAP_THRESHOLD`` bytes or more with a mapping of its own, given
back to the kernel when freed, and gives the heap's free top back once it exceeds
``M_TRIM_THRESHOLD``. By default both thresholds move: when a mapped block is freed, the
mmap threshold rises to its size (up to 32 MiB) and the trim threshold to twice that, and
from then on blocks that large are carved from the heap. A daemon that now and then builds
a large transient buffer (a store snapshot, a big desired set) raises its thresholds at
some moment weeks into its life, the buffers that follow land in the heap, and the live
blocks around them keep the space they leave: the heap's high-water mark, and resident
memory with it, steps up. Setting the thresholds explicitly turns the adjustment off
(mallopt(3)), so a daemon keeps the same allocator behaviour from its first hour on.

The values: blocks of 1 MiB or more are mapped, which is above the largest read the
routing mesh's user-space proxy takes at once (uvloop's 250 KB), so a bulk transfer's
buffers are reused from the heap rather than mapped and unmapped per read; the trim
threshold is twice that, as glibc's own adjustment would set it, so that freeing those buffers does not hand
the same pages back and forth (a threshold of 128 KiB for both halves the proxy's bulk
throughput).

An operator's ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` in the environment
wins; on a C library other than glibc nothing is done.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Mapping

log = logging.getLogger("daemon")

MMAP_THRESHOLD = 1 << 20
"""Blocks this large or larger get a mapping of their own, returned when freed."""
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD
"""Free space above this at the heap's top goes back to the kernel."""
PARAMS = {"MALLOC_MMAP_THRESHOLD_": (-3, MMAP_THRESHOLD),   # M_MMAP_THRESHOLD (malloc.h)
          "MALLOC_TRIM_THRESHOLD_": (-1, TRIM_THRESHOLD)}   # M_TRIM_THRESHOLD
"""The environment variable that names each setting, its mallopt(3) number and our value."""


def is_glibc() -> bool:
    """Whether this process runs on glibc (musl, for one, has no mallopt)."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError):
        return False


def pin_thresholds(env: Mapping[str, str] | None = None) -> dict[str, int]:
    """Fix glibc's mmap and trim thresholds, which stops their adjustment; the settings
    made, by environment name (none that the environment makes already, none off glibc)."""
    env = os.environ if env is None else env
    if not is_glibc():
        return {}
    libc = ctypes.CDLL(None)
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    made = {}
    for name, (param, value) in PARAMS.items():
        if name in env:
            continue
        if libc.mallopt(param, value) != 1:
            log.warning("mallopt refused a setting", extra={"setting": name, "value": value})
            continue
        made[name] = value
    return made
