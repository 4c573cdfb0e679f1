"""The failover benchmark's harness runs end to end on a tiny scenario (one leader kill, a few
registrations, real processes on 127.0.82.x) and reports the agreed keys; no timing is
asserted."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest

from bench import failover as bench
from tests.etcd_server import etcd_binary

pytestmark = [pytest.mark.etcd, pytest.mark.slow]


@pytest.mark.timeout(90)
def test_one_trial_reports_the_agreed_keys_and_leaves_nothing_behind(
        capsys: pytest.CaptureFixture[str]) -> None:
    etcd_binary()  # skip, or fail under CI=true, before starting anything
    tmp = Path(tempfile.gettempdir())
    before = {p.name for p in tmp.glob("orch-bench-failover-*")}
    assert bench.main(["--quick", "--json", "--trials", "1", "--registrations", "20",
                       "--agents", "1", "--net", "127.0.82"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert result["quick"] is True
    assert result["trials"] == 1
    assert result["lease_ttl_s"] == 2
    assert result["registrations"] == 20
    for key in ("failover_p50_s", "failover_max_s", "elected_p50_s", "agents_p50_s",
                "registrations_per_s_etcd", "registrations_per_s_sqlite", "ratio",
                "registrations_per_s_etcd_8", "registrations_per_s_sqlite_8", "ratio_8"):
        assert isinstance(result[key], float), key
        assert math.isfinite(result[key]), key
        assert result[key] > 0, key
    assert result["failover_p50_s"] == result["failover_max_s"]  # one trial
    assert result["lost_acknowledged"] == 0
    assert result["started_twice"] == 0
    assert any(line.startswith("Summary") for line in out)
    assert any(line.strip().startswith("failover_p50_s") for line in out)
    assert {p.name for p in tmp.glob("orch-bench-failover-*")} == before  # cleaned up
