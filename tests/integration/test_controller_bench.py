"""The controller benchmark's quick mode still runs end to end and reports the agreed keys
(a real controller and three agents; no timing is asserted)."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest

from bench import controller as bench


@pytest.mark.timeout(90)
def test_quick_run_reports_the_agreed_keys_and_leaves_nothing_behind(
        capsys: pytest.CaptureFixture[str]) -> None:
    tmp = Path(tempfile.gettempdir())
    before = {p.name for p in tmp.glob("orch-bench-controller-*")}
    assert bench.main(["--quick", "--fast", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert result["quick"] is True
    assert result["job_run_allocs"] == 20
    assert result["reschedule_trials"] == 2
    for key in ("job_run_100_s", "job_run_schedule_s", "job_run_start_s", "reschedule_p50_s",
                "reschedule_detect_p50_s", "reschedule_schedule_p50_s", "reschedule_start_p50_s",
                "rpc_getjob_c1_rps", "rpc_getjob_c8_rps", "rpc_listjobs_c1_rps",
                "rpc_listjobs_c8_rps", "rpc_getjob_c8_p99_ms", "rpc_listjobs_c8_p99_ms"):
        assert isinstance(result[key], float), key
        assert math.isfinite(result[key]), key
        assert result[key] >= 0, key
    # detection is one part of each trial's total, so its median is below the total's
    assert result["reschedule_detect_p50_s"] < result["reschedule_p50_s"]
    assert any(line.startswith("orchctl job run of 20 allocations") for line in out)
    assert {p.name for p in tmp.glob("orch-bench-controller-*")} == before  # cleaned up
