"""How the etcd store keeps a transaction's events under one key (pure: no etcd)."""

from __future__ import annotations

import zlib

import pytest

from controller.store import etcd
from controller.store.etcd import BATCH_TAG, _decode_events, _encode_events
from orch.errors import StoreError
from tests.unit.store.records import event


def test_a_batch_reads_back_as_its_events_in_order() -> None:
    events = [event(f"e{i}", index=i + 1) for i in range(20)]
    value = _encode_events(events)
    assert value.startswith(BATCH_TAG)
    assert _decode_events(value) == events
    assert len(value) < sum(e.ByteSize() for e in events) / 3  # names and payloads repeat


def test_a_single_event_of_the_older_layout_reads_as_a_batch_of_one() -> None:
    ev = event("old", index=7)
    assert _decode_events(ev.SerializeToString()) == [ev]


@pytest.mark.parametrize("value", [
    BATCH_TAG + b"not zlib",
    _encode_events([event("cut")])[:-3],
    BATCH_TAG + zlib.compress(b"\xff\xff\xff"),  # zlib, but not an EventBatch
    b"\xff\xff",                                   # neither a batch nor an event
])
def test_a_damaged_batch_is_a_store_error(value: bytes) -> None:
    with pytest.raises(StoreError, match=r"an event batch in the store"):
        _decode_events(value)


def test_a_batch_that_would_inflate_past_the_limit_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert etcd.MAX_BATCH_BYTES >= 10 * 2**20  # above any commit etcd takes
    monkeypatch.setattr(etcd, "MAX_BATCH_BYTES", 10_000)
    bomb = BATCH_TAG + zlib.compress(b"\0" * 10_001, 9)
    assert len(bomb) < 100
    with pytest.raises(StoreError, match="larger than 10,000 bytes"):
        _decode_events(bomb)
