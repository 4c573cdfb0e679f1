"""The DNS benchmark runs end to end in its small mode (a few seconds per part, ten gossip
members) and prints every key scripts read. No timings are asserted."""

from __future__ import annotations

import json
import shutil

import pytest

from bench import dns as bench
from tests.components import require


@pytest.mark.timeout(240, method="thread")
def test_the_quick_run_prints_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    for tool, package in (("dnsperf", "dnsperf"), ("dnsmasq", "dnsmasq-base"),
                          ("prometheus", "prometheus")):
        require(tool, shutil.which(tool) is not None, f"apt-get install {package}")
    argv = ["--quick", "--json", "--rounds", "1", "--seconds", "1", "--members", "10",
            "--trials", "2"]
    assert bench.main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("qps_ratio_vs_dnsmasq", "p99_ms", "propagation_p99_s", "removal_p99_s",
                "sd_targets_ok"):
        assert key in result
    assert result["orch_qps"] > 0
    assert result["members"] == 10
    assert result["sd_targets_ok"] is True
