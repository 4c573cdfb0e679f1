"""The metrics benchmark's harness runs end to end on a small scenario (a real controller and
agent, 8 allocations in 2 published services) and reports what scripts read. No timings are
asserted."""

from __future__ import annotations

import json
import shutil

import pytest

from bench import metrics as bench
from tests.components import optional
from tests.promtool import HOW


@pytest.mark.timeout(120, method="thread")
def test_small_scenario_reports_the_agreed_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--quick", "--json", "--allocs", "8", "--services", "2",
                       "--scrapes", "5", "--rounds", "2"]) == 0
    captured = capsys.readouterr()
    out = captured.out.strip().splitlines()
    result = json.loads(out[-1])
    assert result["scrape_ms"] == result["agent"]["p99_ms"] > 0
    assert result["scrape_ms_is"].startswith("agent p99")
    assert result["scrape_cpu_ms"] > 0
    for daemon in ("agent", "controller"):
        d = result[daemon]
        assert d["max_ms"] >= d["p99_ms"] >= d["p50_ms"] > 0
        assert d["scrapes"] == 10
        assert len(d["round_p99_ms"]) == 2
        assert d["render_cpu_p50_ms"] > 0
        assert d["bytes"] > 0
        assert d["series"] > 0
    parts = result["agent"]["collectors"]
    assert set(parts) == {"gossip", "runtime", "lb"}
    assert parts["lb"]["series"] > 0  # the two services reached the load balancer
    assert set(result["controller"]["collectors"]) == {"controller", "gossip"}
    if optional("promtool", shutil.which("promtool") is not None, HOW):
        assert result["promtool_clean"] is True, (result["agent"]["promtool"],
                                                  result["controller"]["promtool"])
    else:
        assert result["promtool_clean"] is None
    assert any(line.strip().startswith("agent ") for line in out)
    assert "left behind" not in captured.err  # every task stopped with its agent
