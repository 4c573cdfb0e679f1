"""The soak benchmark's quick mode still runs end to end on SQLite and reports the agreed keys
(a real controller process, simulated agents over mTLS; no figure is asserted, except that
the restore round trip, a matter of correctness, holds)."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest

from bench import soak

KEYS = ("store_rows_end_over_live", "rss_slope_mb_per_10k_versions",
        "commit_p99_ratio_end_over_start", "commit_p99_ratio_end_over_start_paired",
        "reschedule_after_churn_s")


@pytest.mark.timeout(240)
def test_quick_run_reports_the_agreed_keys_and_leaves_nothing_behind(
        capsys: pytest.CaptureFixture[str]) -> None:
    tmp = Path(tempfile.gettempdir())
    before = {p.name for p in tmp.glob("orch-soak-*")}
    assert soak.main(["--quick", "--store", "sqlite", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert result["quick"] is True
    sqlite = result["stores"]["sqlite"]
    assert sqlite["versions"] >= soak.QUICK.versions
    assert sqlite["nodes_joined"] == soak.QUICK.nodes
    for key in KEYS:
        assert isinstance(sqlite[key], float), key
        assert math.isfinite(sqlite[key]), key
    assert sqlite["restore_roundtrip_ok"] is True, sqlite["restore_detail"]
    assert any("soak: a month of churn" in line for line in out)
    assert {p.name for p in tmp.glob("orch-soak-*")} == before  # cleaned up
