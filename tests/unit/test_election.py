"""The pure parts of the election and of the etcd client: settings, the leader key's value, when a
leader must give up its lease, and how a failed etcd call is classified. No etcd, no sleeping."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.election import ElectionConfig, Leader, RenewalClock, decode_leader, encode_leader
from controller.store.etcd_client import (
    Compare,
    Delete,
    Get,
    KeyValue,
    Put,
    Txn,
    classify,
    parse_endpoint,
    prefix_end,
)
from orch.errors import ConfigError


def test_the_defaults_follow_the_ttl() -> None:
    cfg = ElectionConfig()
    assert (cfg.ttl, cfg.interval, cfg.deadline) == (5, 5 / 3, 10 / 3)
    short = ElectionConfig(ttl=2, keepalive_interval=0.5)
    assert (short.interval, short.deadline) == (0.5, 4 / 3)


@pytest.mark.parametrize(("kw", "match"), [
    ({"ttl": 0}, "whole number of seconds"),
    ({"ttl": 3, "renew_deadline": 3.0}, "renew_deadline .* < ttl"),
    ({"ttl": 3, "keepalive_interval": 2.5}, "keepalive_interval .* < renew_deadline"),
    ({"retry_interval": 0}, "retry_interval"),
])
def test_bad_settings_are_configuration_errors(kw: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ElectionConfig(**kw)  # type: ignore[arg-type]


def kv(value: bytes, create_revision: int = 7) -> KeyValue:
    return KeyValue(b"/orch/leader", value, create_revision, create_revision, 1, 42)


@given(st.text(), st.text())
def test_the_leader_value_round_trips(name: str, address: str) -> None:
    assert decode_leader(kv(encode_leader(name, address))) == Leader(name, address, 7)


@pytest.mark.parametrize("value", [b"", b"not json", b"[1, 2]", b'{"address": "x"}'])
def test_a_foreign_leader_value_still_names_someone(value: bytes) -> None:
    assert decode_leader(kv(value, 9)) == Leader("?", "", 9)


def test_a_leader_gives_up_renew_deadline_after_its_last_answered_keepalive() -> None:
    clock = RenewalClock(renew_deadline=10 / 3, last_ok=100.0)
    assert not clock.lost(103.3)
    assert clock.lost(100 + 10 / 3)
    clock.renewed(101.0)
    clock.renewed(100.5)  # an answer to an older keepalive does not move it back
    assert clock.last_ok == 101.0
    assert not clock.lost(104.3)
    assert clock.lost(104.34)


def test_keepalives_are_spaced_by_the_interval_but_never_past_the_deadline() -> None:
    clock = RenewalClock(renew_deadline=4 / 3, last_ok=10.0)
    assert clock.budget(10.0, 2 / 3) == pytest.approx(2 / 3)
    assert clock.budget(11.0, 2 / 3) == pytest.approx(1 / 3)  # the deadline is nearer
    assert clock.budget(11.4, 2 / 3) == 0.05  # at least a short try
    assert clock.next_wait(10.1, sent_at=10.0, interval=2 / 3) == pytest.approx(2 / 3 - 0.1)
    assert clock.next_wait(11.2, sent_at=11.0, interval=2 / 3) == pytest.approx(4 / 3 - 1.2)
    assert clock.next_wait(12.0, sent_at=11.0, interval=2 / 3) == 0.0


@pytest.mark.parametrize(("code", "details", "outcome"), [
    (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: "
     "UNKNOWN: ipv4:127.0.0.1:1: Failed to connect to remote host: Connection refused", "unsent"),
    (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader", "unsent"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: too many requests", "unsent"),
    (grpc.StatusCode.UNAVAILABLE, "etcdserver: request timed out", "indoubt"),
    (grpc.StatusCode.UNAVAILABLE, "etcdserver: leader changed", "indoubt"),
    (grpc.StatusCode.UNAVAILABLE, "Socket closed", "indoubt"),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", "indoubt"),
    (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: too many operations in txn request",
     "rejected"),
    (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: request is too large", "rejected"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded", "rejected"),
    (grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted",
     "rejected"),
    (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found", "rejected"),
])
def test_failed_calls_are_told_apart_by_whether_they_may_have_applied(
        code: grpc.StatusCode, details: str, outcome: str) -> None:
    assert classify(code, details) == outcome


def test_endpoints_and_prefix_ranges() -> None:
    assert parse_endpoint("http://10.0.0.1:2379/") == "10.0.0.1:2379"
    assert parse_endpoint("etcd-1:2379") == "etcd-1:2379"
    for bad in ("10.0.0.1", "https://10.0.0.1:2379", ":2379", "host:99999"):
        with pytest.raises(ConfigError):
            parse_endpoint(bad)
    assert prefix_end(b"/orch/") == b"/orch0"
    assert prefix_end(b"a\xff\xff") == b"b"
    assert prefix_end(b"\xff") == b"\0"


def test_a_transaction_counts_its_operations_as_etcd_does() -> None:
    txn = Txn([Compare(b"k", "mod", "==", 3), Compare(b"l", "create", "==", 9)],
              [Put(b"a", b"1"), Delete(b"b"), Delete(b"c", b"d")], [Get(b"k")])
    assert txn.ops == 3  # the longest of compare, success and failure
    msg = txn.message()
    assert (len(msg.compare), len(msg.success), len(msg.failure)) == (2, 3, 1)
    assert msg.compare[1].create_revision == 9
    assert msg.success[2].request_delete_range.range_end == b"d"
