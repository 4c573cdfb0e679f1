"""The gossip benchmark's quick mode still runs and keeps its JSON keys (no timing asserted)."""

from __future__ import annotations

import json

import pytest

from bench import gossip


@pytest.mark.slow  # the simulator on 50 and 100 members: 25-70 s, too long for the unit tier
def test_quick_run_reports_the_agreed_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert gossip.main(["--quick", "--only", "detection,faults,load", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["detect_p99_s"]) == {"50", "100"}
    for key in ("false_dead_loss10", "false_dead_loss20_lifeguard", "false_dead_loss20_plain",
                "bytes_per_member_s", "sim_wall_s", "join_p99_s"):
        assert key in result
    assert result["false_dead_loss20_lifeguard"] == 0  # issue 2's target, memberlist's timings
    assert result["false_dead_loss10"] == 0  # the goal, at orch's defaults
