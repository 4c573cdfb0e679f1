"""The store benchmark's quick mode still runs and reports what scripts read (no timings)."""

import json
from pathlib import Path

import pytest

from bench import store as bench


def test_quick_mode_runs_and_ends_with_json(capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path) -> None:
    assert bench.main(["--quick", "--json", "--commits", "30", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert summary["quick"] is True
    assert summary["commits"] == 30
    assert summary["commits_per_s_full"] > 0
    assert summary["commits_per_s_normal"] > 0
    assert summary["p99_ms_full"] >= summary["p50_ms_full"] > 0
    assert [(r["synchronous"], r["tasks"]) for r in summary["rows"]] == [
        ("full", 1), ("normal", 1), ("full", 8), ("normal", 8)]
    assert any(line.startswith("FULL, 1 task") for line in out)
    assert list(tmp_path.iterdir()) == []  # the database files are gone
