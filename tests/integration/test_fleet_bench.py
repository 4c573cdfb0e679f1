"""The fleet benchmark runs end to end in its small mode (a bootstrapped controller, simulated
nodes joining and streaming through the agent's client code over mTLS, jobs through the API,
nodes killed, a rolling update, a restart), and on a tiny etcd cluster; it reports its keys
and leaves nothing behind. No timing is asserted."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest

from bench import fleet as bench
from tests.etcd_server import etcd_binary


def _keys(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    out = capsys.readouterr().out.strip().splitlines()
    result: dict[str, object] = json.loads(out[-1])
    return result


def _figure(result: dict[str, object], key: str) -> float:
    value = result[key]
    assert isinstance(value, (int, float)), key
    assert math.isfinite(value), key
    assert value >= 0, key
    return float(value)


@pytest.mark.timeout(240)
def test_the_quick_run_reports_every_key_and_leaves_nothing_behind(
        capsys: pytest.CaptureFixture[str]) -> None:
    tmp = Path(tempfile.gettempdir())
    before = {p.name for p in tmp.glob("orch-fleet-*")}
    assert bench.main(["--quick", "--json"]) == 0
    result = _keys(capsys)
    assert result["nodes"] == 20
    assert result["allocations"] == 40
    for key in ("alloc_running_40_s", "placements_per_s_e2e", "idle_cpu_pct",
                "controller_rss_mb_per_100k_allocs", "reschedule_2_nodes_s",
                "rolling_update_2_jobs_s", "commit_p99_ms_at_40", "restart_load_40_s",
                "spread_placements_per_s_200", "controller_cpu_us_per_alloc"):
        _figure(result, key)
    assert result["nodes_streaming"] == 20
    assert result["nodes_killed"] == 2
    assert result["restart_allocations_loaded"] >= 40  # type: ignore[operator]
    sim = result["nodesim"]
    assert isinstance(sim, dict)
    assert sim["connected"] == 20
    # every node got its whole set once, then only changes (DesiredChanges)
    assert sim["full_sets"] == 20
    assert sim["messages"] > sim["full_sets"]
    assert {p.name for p in tmp.glob("orch-fleet-*")} == before


@pytest.mark.etcd
@pytest.mark.timeout(240)
def test_the_etcd_failover_part_runs_on_a_tiny_cluster(
        capsys: pytest.CaptureFixture[str]) -> None:
    etcd_binary()  # skip, or fail under CI=true, before starting anything
    assert bench.main(["--skip", "sqlite", "--skip", "spread", "--etcd-allocs", "200",
                       "--etcd-nodes", "10", "--allocs-per-job", "100", "--processes", "1",
                       "--leader-ttl", "2", "--settle", "1", "--run-delay", "0.2",
                       "--json"]) == 0
    result = _keys(capsys)
    assert _figure(result, "etcd_failover_200_s") > 0
    assert result["etcd_state_loaded_allocations"] == 200
    assert result["etcd_leader_ttl_s"] == 2
