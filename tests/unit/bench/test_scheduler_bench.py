"""The scheduler benchmark's quick mode still runs and reports what scripts read (no timings)."""

import json

import pytest

from bench import scheduler as bench


def test_quick_mode_runs_and_ends_with_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--quick", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert summary["quick"] is True
    assert summary["placements_per_s_500"] > 0
    assert "placements_per_s_5000" in summary
    assert summary["packing"]["nodes_used"] >= summary["packing"]["lower_bound"] > 0
    assert isinstance(summary["packing_overhead_pct"], float)
    placed = {(s["scenario"], s["nodes"]): s["placed"] for s in summary["scenarios"]}
    assert placed[("plain", 500)] == 1000
    assert any(line.startswith("scenario") for line in out)
