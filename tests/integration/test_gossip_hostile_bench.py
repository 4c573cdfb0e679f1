"""The hostile scenario of the gossip benchmark still runs in its small mode and keeps its
JSON keys (figures are printed, not asserted: the benchmark is not a test)."""

from __future__ import annotations

import json

import pytest

from bench import gossip

pytestmark = pytest.mark.timeout(600, method="thread")


def test_the_hostile_scenario_reports_its_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert gossip.main(["--quick", "--only", "hostile", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("hostile_false_dead", "hostile_detect_p99_ratio", "hostile_loop_lag_p99_ms",
                "hostile_endpoints_accepted", "udp_flood_legit_success"):
        assert key in result
