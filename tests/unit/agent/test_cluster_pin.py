"""Which controllers an agent obeys: its own cluster's, at the newest store epoch (pure, and the
pin file)."""

from __future__ import annotations

import json
from pathlib import Path

from agent.cluster_pin import Pin, PinFile, judge


def test_a_set_of_another_cluster_is_refused() -> None:
    v = judge(Pin("c1", 5), "c2", 9)
    assert not v.apply
    assert v.reason == "cluster"
    assert "c2" in v.detail
    assert "c1" in v.detail


def test_the_first_cluster_seen_is_pinned_and_may_remove_strays() -> None:
    v = judge(Pin(), "c1", 7)
    assert v.apply
    assert v.remove_strays
    assert v.pin == Pin("c1", 7)


def test_a_set_that_names_no_cluster_never_removes_anything() -> None:
    assert judge(Pin(), "", 0).remove_strays is False
    assert judge(Pin(), "", 0).apply
    refused = judge(Pin("c1", 1), "", 0)
    assert not refused.apply
    assert refused.reason == "cluster"


def test_a_newer_epoch_is_followed_and_an_older_one_refused() -> None:
    assert judge(Pin("c1", 5), "c1", 6).pin == Pin("c1", 6)
    assert judge(Pin("c1", 5), "c1", 5).apply
    old = judge(Pin("c1", 5), "c1", 4)
    assert not old.apply
    assert old.reason == "epoch"


def test_the_pin_file_starts_from_the_join_and_survives_a_restart(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "cluster-id").write_text("c1\n")
    pins = PinFile(tmp_path)
    assert pins.pin == Pin("c1", 0)
    assert not pins.judge("c2", 3).apply
    assert pins.refused["cluster"] == 1
    assert pins.judge("c1", 3).apply
    assert json.loads((tmp_path / "cluster.json").read_text()) == {"cluster_id": "c1",
                                                                  "epoch": 3}
    again = PinFile(tmp_path)
    assert again.pin == Pin("c1", 3)
    assert not again.judge("c1", 2).apply


def test_a_damaged_pin_file_falls_back_to_the_join(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "cluster-id").write_text("c1\n")
    (tmp_path / "cluster.json").write_text("{not json")
    assert PinFile(tmp_path).pin == Pin("c1", 0)
