"""In a fresh process: once a large block is freed, glibc carves blocks that large from the
heap, unless the controller's pinned threshold is set; then each keeps a mapping of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from orch import malloc

PROBE = """
import ctypes, json, sys
from orch import malloc
if sys.argv[1] == "pinned":
    assert malloc.pin_mmap_threshold({}) == malloc.MMAP_THRESHOLD
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
first = bytearray(2 << 20)       # mapped of its own (over the starting threshold)
del first                        # freed: glibc's threshold rises to 2 MiB unless pinned
second = bytearray(1 << 20)      # 1 MiB: from the heap, or mapped of its own
print(json.dumps({"mapped": libc.mallinfo2().hblkhd}))
"""


def mapped_after_a_large_free(how: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != malloc.ENV}
    out = subprocess.run([sys.executable, "-c", PROBE, how], capture_output=True, text=True,
                         check=True, timeout=30, env=env)
    return int(json.loads(out.stdout)["mapped"])


def test_a_pinned_threshold_keeps_large_blocks_out_of_the_heap() -> None:
    assert mapped_after_a_large_free("default") < 1 << 20  # glibc's own: the heap took it
    assert mapped_after_a_large_free("pinned") >= 1 << 20
