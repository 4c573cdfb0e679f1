"""The soak benchmark's quick mode still runs end to end on SQLite and reports the agreed keys
(a real controller process, simulated agents over mTLS; no figure is asserted, except that
the restore round trip, a matter of correctness, holds)."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
from pathlib import Path

import pytest

from bench import soak
from controller.store import Changes, EtcdStore
from tests.components import require
from tests.etcd_server import EtcdCluster, etcd_binary
from tests.unit.store.records import event, node

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


@pytest.mark.etcd
@pytest.mark.timeout(120)
async def test_the_paired_measurement_runs_on_etcd_members_restored_from_snapshots(
        tmp_path: Path) -> None:
    """An etcd snapshot restored with etcdctl gives a member that holds what was saved, and
    the paired commit measurement takes commits on two such members."""
    etcd_binary()
    require("etcdctl", shutil.which("etcdctl") is not None, "apt-get install etcd-client")
    payload = tmp_path / "payload"
    with EtcdCluster(1, first_host=79) as cluster:
        store = EtcdStore(cluster.endpoints, prefix=soak.ETCD_PREFIX)
        await store.open()
        await store.load()
        await store.commit(Changes(put_nodes=[node("n1")], events=[event("saved")]))
        await store.backup(payload)
        await store.close()
    with contextlib.closing(EtcdCluster(1, first_host=79, dir=tmp_path / "restored")) as again:
        (tmp_path / "restored").mkdir()
        again.restore(payload)
        again.start()
        store = EtcdStore(again.endpoints, prefix=soak.ETCD_PREFIX)
        await store.open()
        try:
            snap = await store.load()
        finally:
            await store.close()
    assert set(snap.nodes) == {"n1"}
    for name in ("start", "end"):  # snapshot files: a header line, then the payload
        (tmp_path / f"{name}.snap").write_bytes(b"header\n" + payload.read_bytes())
    start, end = await soak.paired_commit_p99(tmp_path / "start.snap", tmp_path / "end.snap",
                                              tmp_path, "etcd", rounds=2)
    assert 0 < start < 5
    assert 0 < end < 5
