"""The side-by-side gossip benchmark still runs end to end with orch alone (no Go, no
kinship): a crash of one of five members is detected by all, the report carries the
agreed keys, and no worker process or network namespace is left behind. No timing is
asserted beyond the scenario's own timeout."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from bench import gossip_peers as bench
from bench.peers import netns


def _children() -> set[int]:
    """Live processes whose parent is this one (zombies too: they would not be reaped)."""
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == os.getpid():
                out.add(int(d.name))
    return out


@pytest.mark.timeout(60)
def test_orch_alone_crash_run_reports_and_leaves_nothing_behind(
        capsys: pytest.CaptureFixture[str]) -> None:
    before = _children()
    code = bench.main(["--impls", "orch", "--n", "5", "--scenarios", "crash", "--runs", "1",
                       "--no-install", "--json"])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    report = json.loads(out[-1])
    assert report["sizes"] == [5]
    orch = report["orch"]
    assert "error" not in orch, orch.get("error")
    for key in ("detect_p50_s", "detect_p99_s", "join_p99_s"):
        assert isinstance(orch[key], float), key
        assert math.isfinite(orch[key]), key
        assert orch[key] > 0, key
    assert report["memberlist"]["na"] == "not selected"
    assert any(line.startswith("Gossip side by side on real sockets (N = 5;") for line in out)
    # every worker was stopped, and the namespace (when there was one) removed
    assert _children() <= before
    if not netns.available():
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                               check=False).stdout
        assert f"{netns.PREFIX}-{os.getpid()}-" not in names
