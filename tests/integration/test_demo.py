"""The README's main command, end to end: a controller and agents as real processes."""

from __future__ import annotations

import subprocess
import sys


def test_the_demo_runs_a_service_survives_a_killed_agent_and_stops_cleanly() -> None:
    out = subprocess.run([sys.executable, "-m", "orchctl.demo", "--fast", "--agents", "3",
                          "--free-ports"],
                         capture_output=True, text=True, timeout=240, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "registered in" in text
    assert "deployment" in text
    assert "successful" in text
    mesh = [f"GET http://127.0.0.{i}:8080/  ->  200 OK" for i in (2, 3, 4)]
    assert text.count("->  200 OK") == 3 + 3 + 2  # every replica; every agent's load
    assert all(line in text for line in mesh)     # balancer; the survivors' after a kill
    assert "its allocations running elsewhere after" in text
    assert "NodeDown" in text
    assert "NodeUp" in text
    assert "done: every process stopped" in text
