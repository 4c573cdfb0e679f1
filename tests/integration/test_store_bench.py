"""The store benchmark's quick mode still runs and reports what scripts read (no timings)."""

import json
import shutil
from pathlib import Path

import pytest

from bench import store as bench
from bench.etcd_cluster import HOW
from tests.components import optional


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
    if optional("the etcd binary", shutil.which("etcd") is not None, HOW):  # CI must measure it
        assert summary["etcd"].startswith("3.")
        assert summary["etcd_commits_per_s"] > 0
        assert summary["etcd_commits_per_s_8_tasks"] > 0
        assert summary["etcd_p99_ms"] >= summary["etcd_p50_ms"] > 0
        assert [(r["members"], r["tasks"]) for r in summary["etcd_rows"]] == [(1, 1), (1, 8)]
        assert summary["big"]["etcd_ops"] == 1003
        assert summary["big"]["etcd_ms"] > 0
        assert any(line.startswith("etcd x1, 1 task") for line in out)
    assert list(tmp_path.iterdir()) == []  # the database files and etcd's data are gone
