"""A network namespace of the benchmark's own, with iptables rules inside it only.

The members run on the namespace's loopback (127.0.0.0/8 is local there once ``lo`` is
up), so loss and partitions made with iptables touch nothing outside it. The namespace is
named ``orch-peers-<pid>-<tag>``: a run killed with SIGKILL leaves one behind, which the
next run removes (its pid is gone). Removing a namespace removes its rules with it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import threading

PREFIX = "orch-peers"
_lock = threading.Lock()


def available() -> str:
    """Why a namespace cannot be made here ('' when it can)."""
    if os.geteuid() != 0:
        return "not root (network namespaces and iptables need CAP_NET_ADMIN)"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (Debian: iproute2, iptables)"
    return ""


def _run(args: list[str], check: bool = True) -> str:
    p = subprocess.run(args, capture_output=True, text=True, check=False, timeout=30)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {(p.stderr or p.stdout).strip()}")
    return p.stdout


def reap_stale() -> list[str]:
    """Remove namespaces this benchmark left behind in runs whose process is gone."""
    removed = []
    for line in _run(["ip", "netns", "list"], check=False).splitlines():
        m = re.match(rf"({PREFIX}-(\d+)-\S+)", line)
        if m and not os.path.exists(f"/proc/{m.group(2)}"):
            _run(["ip", "netns", "del", m.group(1)], check=False)
            removed.append(m.group(1))
    return removed


class Netns:
    """One namespace: ``exec_prefix()`` runs a command inside, ``iptables()`` changes its rules."""

    def __init__(self, tag: str) -> None:
        self.name = f"{PREFIX}-{os.getpid()}-{tag}"
        self.created = False

    def create(self) -> None:
        _run(["ip", "netns", "add", self.name])
        self.created = True
        _run([*self.exec_prefix(), "ip", "link", "set", "lo", "up"])

    def remove(self) -> None:
        if self.created:
            _run(["ip", "netns", "del", self.name], check=False)
            self.created = False

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def iptables(self, *args: str) -> str:
        with _lock:  # one change at a time (the threads of several implementations share it)
            return _run([*self.exec_prefix(), "iptables", "-w", *args])

    def add_rule(self, chain: str, spec: list[str], table: str = "filter") -> list[str]:
        """Append a rule; returns what ``delete_rule`` needs."""
        self.iptables("-t", table, "-A", chain, *spec)
        return [table, chain, *spec]

    def delete_rule(self, rule: list[str]) -> None:
        table, chain, *spec = rule
        with contextlib.suppress(RuntimeError):
            self.iptables("-t", table, "-D", chain, *spec)

    def counters(self, chain: str = "OUTPUT") -> dict[str, tuple[int, int]]:
        """Packets and bytes of every rule in ``chain`` that carries a comment, by comment."""
        out: dict[str, tuple[int, int]] = {}
        for line in self.iptables("-nvxL", chain).splitlines():
            m = re.match(r"\s*(\d+)\s+(\d+)\s.*/\*\s*(\S+)\s*\*/", line)
            if m:
                out[m.group(3)] = (int(m.group(1)), int(m.group(2)))
        return out

    def __enter__(self) -> Netns:
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
