"""The expected-endpoints benchmark's quick mode still runs and reports what scripts read
(its byte counts, which do not depend on the machine)."""

import json

import pytest

from bench import endpoints as bench


def test_quick_mode_runs_and_ends_with_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--quick", "--json", "--agents", "3"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert (summary["services"], summary["agents"]) == (100, 3)
    # an agent that takes changes is sent one service; the others every service again
    assert summary["changes_bytes_per_agent"] * 50 < summary["whole_bytes_per_agent"]
    assert summary["changes_commit_ms"] > 0
    assert any(line.startswith("whole / changes") for line in out)
