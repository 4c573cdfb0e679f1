"""The fuzz targets (tests/fuzz/targets.py) under hypothesis, and under atheris for a
bounded number of runs: untrusted input yields only the documented error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz import targets

ROOT = Path(__file__).parents[2]


@given(st.one_of(st.binary(max_size=1500),
                 st.sampled_from(targets.gossip_seeds()).flatmap(
                     lambda s: st.binary(max_size=64).map(lambda b: s[:len(s) // 2] + b))))
@settings(max_examples=500)
def test_gossip_packet(data: bytes) -> None:
    targets.gossip_packet(data)


@given(st.one_of(st.text(max_size=400).map(str.encode),
                 st.sampled_from(targets.job_seeds()).flatmap(
                     lambda s: st.integers(0, len(s)).map(lambda i: s[:i]))))
@settings(max_examples=200, deadline=None)
def test_job_file(data: bytes) -> None:
    targets.job_file(data)


@given(st.binary(max_size=600))
@settings(max_examples=300)
def test_job_message(data: bytes) -> None:
    targets.job_message(data)


@pytest.mark.parametrize(("target", "runs"), [("gossip_packet", 200_000), ("job_file", 5_000),
                                              ("job_message", 50_000)])
def test_atheris(target: str, runs: int, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.run", target, f"-runs={runs}", "-max_total_time=60",
         f"-corpus={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=180)
    tail = "\n".join(proc.stderr.splitlines()[-30:])
    assert proc.returncode == 0, tail
    assert "DONE" in proc.stderr, tail
