"""What this host offers, as the scheduler's constraints see it (Nomad's fingerprints).

Attributes (``${attr.*}``): kernel.name, kernel.version, os.name, os.version, cpu.arch,
cpu.numcores, memory.totalbytes, unique.hostname, and driver.<name> (= "1" when healthy).
Capacity: every core (1000 millicores each) and the memory the kernel reports, unless the
configuration says otherwise.
"""

from __future__ import annotations

import os
import platform
import socket
import uuid
from pathlib import Path


def node_id(data_dir: Path) -> str:
    """A stable id for this node, kept in ``data_dir/node-id`` (made on first start)."""
    path = data_dir / "node-id"
    try:
        text = path.read_text().strip()
        if text:
            return text
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    new = str(uuid.uuid4())
    tmp = path.with_suffix(".tmp")
    tmp.write_text(new + "\n")
    os.replace(tmp, path)
    return new


def memory_mb() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 1024


def attributes() -> dict[str, str]:
    uname = platform.uname()
    out = {
        "kernel.name": uname.system.lower(),
        "kernel.version": uname.release.split("-")[0],
        "cpu.arch": {"x86_64": "amd64", "aarch64": "arm64"}.get(uname.machine, uname.machine),
        "cpu.numcores": str(os.cpu_count() or 1),
        "memory.totalbytes": str(memory_mb() * 1024 * 1024),
        "unique.hostname": socket.gethostname(),
    }
    try:
        text = Path("/etc/os-release").read_text()
        release = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        out["os.name"] = release.get("ID", "").strip('"')
        out["os.version"] = release.get("VERSION_ID", "").strip('"')
    except OSError:
        pass
    return out
