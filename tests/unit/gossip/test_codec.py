"""The wire format: every message round-trips; anything else is a ProtocolError."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orch.errors import DecryptError, LabelError, ProtocolError, VersionError
from orch.gossip import codec
from orch.gossip.crypto import Keyring, new_key
from orch.gossip.messages import (
    Ack,
    Alive,
    Dead,
    IndirectPing,
    MemberRecord,
    Nack,
    Ping,
    PushPull,
    StateDelta,
    Status,
    Suspect,
)

MESSAGES = [
    Ping(1, "a", "b"),
    IndirectPing(2, "a", "127.0.0.2", 7946, True, "b"),
    Ack(3),
    Ack(4, b"payload"),
    Nack(5),
    Suspect(6, "a", "b", 1500),
    Alive(7, "a", "127.0.0.2", 7946, 3),
    Dead(8, "a", "a"),
    StateDelta("a", 2, 3, {"role": "agent", "gone": None, "cap": {"cpu": 4000}}),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(msg: object) -> None:
    payload = codec.pack([codec.encode(msg)])  # type: ignore[arg-type]
    (raw,) = codec.decode_payload(payload)
    assert codec.decode_message(raw) == msg


def test_compound_payload_keeps_order() -> None:
    payload = codec.pack([codec.encode(m) for m in MESSAGES])  # type: ignore[arg-type]
    assert [codec.decode_message(r) for r in codec.decode_payload(payload)] == MESSAGES


def test_newer_peers_may_append_fields() -> None:
    raw = msgpack.packb([[1, 9, "a", "b", "a field from the future"]])
    (item,) = codec.decode_payload(raw)
    assert codec.decode_message(item) == Ping(9, "a", "b")


@pytest.mark.parametrize(("raw", "why"), [
    ([1, 9, "a"], "missing field"),
    ([1, True, "a", "b"], "bool is not a sequence number"),
    ([1, -1, "a", "b"], "negative sequence number"),
    ([2, 1, "a", "127.0.0.1", 70000, True, "b"], "port out of range"),
    ([6, 1, "", "127.0.0.1", 1], "empty name"),
    ([6, 1, "x" * 300, "127.0.0.1", 1], "name too long"),
    ([8, "a", 1, 2, ["not", "a", "map"]], "state is not a map"),
    ([99, 1], "unknown code"),
    ("ping", "not an array"),
    ([], "empty array"),
])
def test_malformed_messages_are_protocol_errors(raw: object, why: str) -> None:
    with pytest.raises(ProtocolError):
        codec.decode_message(raw)


def test_push_pull_round_trips() -> None:
    msg = PushPull(True, "a", [MemberRecord("a", "127.0.0.2", 7946, 3, Status.SUSPECT, 2, {"k": "v"})])
    assert codec.decode_push_pull(codec.encode(msg)) == msg


def test_envelope_plaintext_and_label() -> None:
    sealed = codec.seal(b"\x90", "prod", None)
    assert codec.open_envelope(sealed, "prod", None) == b"\x90"
    with pytest.raises(LabelError):
        codec.open_envelope(sealed, "staging", None)


def test_envelope_rejects_other_versions_and_truncation() -> None:
    sealed = bytearray(codec.seal(b"\x90", "", None))
    sealed[0] = 99
    with pytest.raises(VersionError):
        codec.open_envelope(bytes(sealed), "", None)
    with pytest.raises(ProtocolError):
        codec.open_envelope(b"\x01", "", None)
    with pytest.raises(ProtocolError):
        codec.open_envelope(bytes([1, 0, 10]) + b"abc", "", None)


def test_envelope_encryption() -> None:
    ring = Keyring([new_key()])
    sealed = codec.seal(b"secret payload", "c1", ring)
    assert b"secret payload" not in sealed
    assert codec.open_envelope(sealed, "c1", ring) == b"secret payload"
    assert len(sealed) == len(b"secret payload") + codec.envelope_overhead("c1")
    with pytest.raises(DecryptError):
        codec.open_envelope(sealed, "c1", Keyring([new_key()]))  # another key
    with pytest.raises(DecryptError):
        codec.open_envelope(sealed, "c1", None)  # we have no key
    with pytest.raises(DecryptError):
        codec.open_envelope(codec.seal(b"x", "c1", None), "c1", ring)  # plaintext refused
    tampered = bytearray(sealed)
    tampered[-1] ^= 1
    with pytest.raises(DecryptError):
        codec.open_envelope(bytes(tampered), "c1", ring)
    relabeled = codec.seal(b"x", "c1", ring).replace(b"c1", b"c2", 1)
    with pytest.raises(LabelError):
        codec.open_envelope(relabeled, "c1", ring)


@given(st.binary(max_size=2000))
def test_random_bytes_only_ever_raise_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        payload = codec.open_envelope(data, "", None)
        for raw in codec.decode_payload(payload):
            codec.decode_message(raw)


_SCALARS = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20)
            | st.binary(max_size=20))


_VALUES = st.recursive(
    _SCALARS, lambda c: st.lists(c, max_size=6) | st.dictionaries(st.text(max_size=5), c, max_size=5),
    max_leaves=30)


@given(_VALUES)
def test_random_msgpack_values_only_ever_raise_protocol_errors(value: object) -> None:
    for wrapped in (value, [value], [[1, value, value, value]], [[6, 1, value, value, value]]):
        with contextlib.suppress(ProtocolError):
            for raw in codec.decode_payload(msgpack.packb(wrapped)):
                codec.decode_message(raw)
    with contextlib.suppress(ProtocolError):
        codec.decode_push_pull(msgpack.packb([9, True, "a", [value]]))


def test_the_sender_name_travels_in_the_header_and_is_authenticated() -> None:
    ring = Keyring([new_key()])
    sealed = codec.seal(b"payload", "c1", ring, "agent-7")
    assert codec.open_envelope(sealed, "c1", ring) == b"payload"
    assert codec.envelope_sender(sealed) == "agent-7"
    assert len(sealed) == len(b"payload") + codec.envelope_overhead("c1", "agent-7")
    with pytest.raises(DecryptError):  # the wrong key: the name still says who sent it
        codec.open_envelope(sealed, "c1", Keyring([new_key()]))
    forged = sealed.replace(b"agent-7", b"agent-8", 1)  # the name is part of the AAD
    with pytest.raises(DecryptError):
        codec.open_envelope(forged, "c1", ring)
    assert codec.envelope_sender(b"\x01\x02\x00\x09ab") == ""  # truncated: no name
    with pytest.raises(ProtocolError, match="truncated sender name"):
        codec.open_envelope(b"\x01\x02\x00\x09ab", "", None)
