"""Network namespaces of a test's own, entered by the test's thread (for the kernel data plane).

``namespace()`` makes ``orch-kernel-<pid>-<n>`` (``ip netns add``), brings its loopback up,
moves the calling thread into it (``setns``) and back afterwards, and removes it: its
nftables tables, conntrack entries and sockets go with it. Threads and processes started
meanwhile (the asyncio executor, ``conntrack``) inherit it. A run killed with SIGKILL leaves
a namespace behind; the next run removes those whose process is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Iterator

from tests.components import require

PREFIX = "orch-kernel"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_count = itertools.count()


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def why_not() -> str:
    """Why namespaces with nftables cannot be made here ('' when they can)."""
    if os.geteuid() != 0:
        return "not root (network namespaces and nftables need CAP_NET_ADMIN)"
    if shutil.which("ip") is None:
        return "ip is missing (Debian: iproute2)"
    from agent.lb.libnft import LIBRARY
    try:
        ctypes.CDLL(LIBRARY)
    except OSError:
        return "libnftables is missing (Debian: nftables)"
    return ""


def reap_stale() -> None:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines():
        m = re.match(rf"({PREFIX}-(\d+)-\S+)", line)
        if m and not os.path.exists(f"/proc/{m.group(2)}"):
            subprocess.run(["ip", "netns", "del", m.group(1)], check=False, capture_output=True)


@contextlib.contextmanager
def namespace() -> Iterator[str]:
    """A fresh namespace with ``lo`` up, the calling thread inside it."""
    require("network namespaces with nftables", not why_not(), why_not() or "")
    reap_stale()
    name = f"{PREFIX}-{os.getpid()}-{next(_count)}"
    _ip("netns", "add", name)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(fd)
        finally:
            os.close(fd)
        try:
            yield name
        finally:
            _setns(home)
    finally:
        os.close(home)
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def nft_tables() -> list[tuple[str, str]]:
    """(family, name) of every nftables table in the current namespace."""
    out = subprocess.run(["nft", "-j", "list", "tables"], capture_output=True, text=True,
                         check=True, timeout=30)
    import json
    return [(x["table"]["family"], x["table"]["name"])
            for x in json.loads(out.stdout)["nftables"] if "table" in x]
