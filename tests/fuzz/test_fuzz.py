"""The fuzz tier: each target of tests/fuzz/targets.py under atheris (coverage-guided,
libFuzzer), in a process of its own (``python -m tests.fuzz.run``), for a bounded number of
runs and within one fixed time budget: untrusted input yields only the documented error.

``BUDGET_S`` is the whole tier's fuzzing time, split evenly between the targets; a target
stops at its number of runs or at its share of the budget, whichever comes first (on a
2-core machine the runs come first, in a few seconds each). ``./run test`` runs this tier
with the others, ``./run test fuzz`` alone; the same targets under hypothesis are in the
unit tier (tests/unit/test_fuzz.py). A crash fails the test with the end of libFuzzer's
report, and the input that caused it is kept in the test's temporary directory.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]

BUDGET_S = 90
"""Seconds of fuzzing for the whole tier, at most."""
RUNS = {"gossip_packet": 200_000, "stream_frame": 200_000, "endpoints": 200_000,
        "snapshot": 50_000, "grpc_message": 200_000, "job_file": 5_000, "job_message": 50_000,
        "dns_query": 100_000}
"""Each target's number of runs, and so the targets the budget is split between."""
SHARE_S = BUDGET_S // len(RUNS)
"""Each target's share of the budget (libFuzzer's -max_total_time)."""
GRACE_S = 60
"""Beyond its share, how long a run may take to start and stop before it is killed."""

pytestmark = pytest.mark.fuzz


@pytest.mark.parametrize(("target", "runs"), list(RUNS.items()))
def test_atheris(target: str, runs: int, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.run", target, f"-runs={runs}",
         f"-max_total_time={SHARE_S}", f"-corpus={tmp_path / 'corpus'}",
         f"-artifact_prefix={tmp_path}/"],
        cwd=ROOT, capture_output=True, text=True, timeout=SHARE_S + GRACE_S)
    tail = "\n".join(proc.stderr.splitlines()[-30:])
    assert proc.returncode == 0, tail
    assert "DONE" in proc.stderr, tail
