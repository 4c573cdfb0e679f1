"""The README's main command, end to end: real orch-agent processes on 127.0.0.x."""

from __future__ import annotations

import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.2", 0))
        port: int = s.getsockname()[1]
        return port


def test_the_demo_converges_detects_a_crash_and_stops_cleanly() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "orchctl.demo", "--fast", "--agents", "4", "--port", str(free_port())],
        capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "converged: every agent sees 4 alive members" in out.stdout
    assert "every other agent marked agent-3 dead" in out.stdout
    assert "agent-2 sees agent-1 left" in out.stdout
    assert "done: every agent stopped" in out.stdout
