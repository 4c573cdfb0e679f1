"""The gossip wire format: msgpack messages, compound packets and the envelope.

A UDP datagram is an *envelope* around a *payload*::

    version (1 byte) | flags (1 byte) | label length (1 byte) | label
        | [name length (1 byte) | name]             (flags & NAMED: the sender's name)
        | body
    body = payload                                  (flags & ENCRYPTED == 0)
    body = nonce (12) | AES-GCM(payload) | tag (16) (flags & ENCRYPTED), AAD = header

The sender's name travels in the clear (and authenticated, as part of the AAD) so that
a member whose packets no installed key opens can be reported by name.

and the payload is one msgpack array of messages, each itself an array
``[code, ...]``. Messages that are queued for gossip are encoded once and
spliced into payloads as bytes. TCP streams carry frames: a 4-byte big-endian
length and an envelope around one encoded PushPull.

Everything that arrives from the network goes through ``open_envelope`` and
``decode_payload``/``decode_push_pull``, which raise ProtocolError (with a
``reason`` used by the drop counters) and never anything else.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Generator, Sequence
from typing import Any, NamedTuple

import msgpack

from orch.errors import DecryptError, LabelError, ProtocolError, VersionError
from orch.gossip.config import PROTOCOL_VERSION, GossipConfig
from orch.gossip.crypto import NONCE_SIZE, TAG_SIZE, Keyring
from orch.gossip.messages import (
    Ack,
    Alive,
    Code,
    Dead,
    IndirectPing,
    MemberRecord,
    Message,
    Nack,
    Ping,
    PushPull,
    StateDelta,
    Status,
    Suspect,
    UserEvent,
)

ENCRYPTED = 0x01
NAMED = 0x02
HEADER_SIZE = 3
MAX_NAME = 256
ARRAY_HEADER_MAX = 3
"""Bytes a msgpack array header may take for up to 65,535 items."""
_U64 = 1 << 64
_I64 = 1 << 63

_packb = msgpack.Packer(use_bin_type=True).pack


class Limits(NamedTuple):
    """The bounds decoders hold what arrives to (from ``GossipConfig``; see its fields)."""

    counter_limit: int
    max_state_depth: int
    max_members: int
    max_packet_messages: int
    max_stream_frame: int

    @classmethod
    def of(cls, cfg: GossipConfig) -> Limits:
        return cls(cfg.counter_limit, cfg.max_state_depth, cfg.max_members,
                   cfg.max_packet_messages, cfg.max_stream_frame)


DEFAULT_LIMITS = Limits.of(GossipConfig())


def encode(msg: Message | PushPull) -> bytes:
    """One message as msgpack bytes."""
    code = _CODES[type(msg)]
    if type(msg) is PushPull:
        return _packb([code, msg.join, msg.sender, [list(r) for r in msg.members], msg.digest,
                       msg.event_clock])
    if type(msg) is UserEvent and not msg.origin:
        return _packb([code, *msg[:4]])  # as members before the origin field sent it
    return _packb([code, *msg])


def pack_value(value: Any) -> bytes:
    """An opaque value (an ack's payload) as msgpack bytes."""
    return _packb(value)


def unpack_value(data: bytes) -> Any:
    """The value of ``pack_value``; None when the bytes are not msgpack (never raises)."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception:
        return None


def array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    raise ValueError("too many messages for one packet")


def pack(items: Sequence[bytes]) -> bytes:
    """A payload (msgpack array) made of already-encoded messages."""
    return array_header(len(items)) + b"".join(items)


def envelope_overhead(label: str, sender: str = "") -> int:
    """Bytes the envelope adds to a payload, encryption and the sender's name included."""
    named = 1 + len(_name_bytes(sender)) if sender else 0
    return HEADER_SIZE + len(label.encode()) + named + NONCE_SIZE + TAG_SIZE


# --- envelope ----------------------------------------------------------------------------


def _name_bytes(name: str) -> bytes:
    return name.encode()[:255]


def seal(payload: bytes, label: str, keyring: Keyring | None, sender: str = "") -> bytes:
    lb = label.encode()
    flags = (ENCRYPTED if keyring else 0) | (NAMED if sender else 0)
    header = bytes((PROTOCOL_VERSION, flags, len(lb))) + lb
    if sender:
        name = _name_bytes(sender)
        header += bytes((len(name),)) + name
    if keyring is None:
        return header + payload
    return header + keyring.encrypt(payload, header)


def envelope_sender(data: bytes) -> str:
    """The sender's name in an envelope's header ("" when absent or unreadable): for
    reporting a packet that could not be opened."""
    if len(data) < HEADER_SIZE or not data[1] & NAMED:
        return ""
    at = HEADER_SIZE + data[2]
    if len(data) <= at or len(data) < at + 1 + data[at]:
        return ""
    return data[at + 1:at + 1 + data[at]].decode(errors="replace")


def open_envelope(data: bytes, label: str, keyring: Keyring | None) -> bytes:
    """The payload inside a datagram or frame; ProtocolError when it is not for us."""
    if len(data) < HEADER_SIZE:
        raise ProtocolError("packet shorter than the envelope header")
    version, flags, n = data[0], data[1], data[2]
    if version != PROTOCOL_VERSION:
        raise VersionError(f"protocol version {version}, this member speaks {PROTOCOL_VERSION}")
    end = HEADER_SIZE + n
    if len(data) < end:
        raise ProtocolError("truncated label")
    if data[HEADER_SIZE:end] != label.encode():
        raise LabelError(f"cluster label {data[HEADER_SIZE:end]!r}, expected {label!r}")
    if flags & NAMED:
        if len(data) <= end or len(data) < end + 1 + data[end]:
            raise ProtocolError("truncated sender name")
        end += 1 + data[end]
    if flags & ENCRYPTED:
        if keyring is None:
            raise DecryptError("encrypted packet, but no gossip key is installed")
        return keyring.decrypt(data[end:], data[:end])
    if keyring is not None:
        raise DecryptError("plaintext packet, but this cluster requires encryption")
    return data[end:]


def frame(envelope: bytes) -> bytes:
    return struct.pack(">I", len(envelope)) + envelope


def frame_length(head: bytes, limit: int) -> int:
    """The length a stream frame's 4-byte header announces; ProtocolError past ``limit``."""
    if len(head) != 4:
        raise ProtocolError("truncated frame header")
    n = int.from_bytes(head, "big")
    if n > limit:
        raise ProtocolError(f"stream frame of {n} bytes is over the limit of {limit}",
                            reason="too_large")
    return n


# --- decoding ------------------------------------------------------------------------------


def _unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as e:  # msgpack raises several unrelated types; all mean "bad input"
        raise ProtocolError(f"not msgpack: {type(e).__name__}: {e}") from None


def _str(v: Any, lim: Limits) -> str:
    if type(v) is not str or not v or len(v) > MAX_NAME:
        raise ProtocolError(f"expected a name, got {v!r:.40}")
    return v


def _opt_str(v: Any, lim: Limits) -> str:
    return "" if v == "" else _str(v, lim)


def _uint(v: Any, bound: int = _I64) -> int:
    if type(v) is not int or not 0 <= v < bound:
        raise ProtocolError(f"expected an unsigned integer, got {v!r:.40}")
    return v


def _seq(v: Any, lim: Limits) -> int:
    return _uint(v)


def _counter(v: Any, lim: Limits) -> int:
    """An incarnation, node-state version or event clock: at most ``counter_limit``."""
    if type(v) is not int or not 0 <= v <= lim.counter_limit:
        raise ProtocolError(f"expected a counter up to {lim.counter_limit}, got {v!r:.40}",
                            reason="counter")
    return v


def _port(v: Any, lim: Limits) -> int:
    if type(v) is not int or not 0 < v < 65536:
        raise ProtocolError(f"expected a port, got {v!r:.40}")
    return v


def _bool(v: Any, lim: Limits) -> bool:
    if type(v) is not bool:
        raise ProtocolError(f"expected a boolean, got {v!r:.40}")
    return v


def _host(v: Any, lim: Limits) -> str:
    if type(v) is not str or not 0 < len(v) <= 255:
        raise ProtocolError(f"expected a host, got {v!r:.40}")
    return v


def _state_map(v: Any, lim: Limits) -> dict[str, Any]:
    """A node state: a map whose values nest lists and maps at most ``max_state_depth``
    deep, with str keys at every depth (unpackb's strict_map_key lets bytes keys through,
    and every reader of a state compares its keys with str)."""
    if type(v) is not dict:
        raise ProtocolError(f"expected a map, got {v!r:.40}")
    if depth(v, lim.max_state_depth) > lim.max_state_depth:
        raise ProtocolError(f"node state nested deeper than {lim.max_state_depth}",
                            reason="depth")
    if not str_keys(v):
        raise ProtocolError("node state with a map key that is not a string")
    return v


def str_keys(v: Any) -> bool:
    """Whether every map in ``v``, at any depth, has only str keys (without recursion)."""
    stack = [v]
    while stack:
        item = stack.pop()
        t = type(item)
        if t is dict:
            if any(type(k) is not str for k in item):
                return False
            children: Any = item.values()
        elif t is list or t is tuple:
            children = item
        else:
            continue
        stack.extend(c for c in children if type(c) in (dict, list, tuple))
    return True


def depth(v: Any, stop: int) -> int:
    """How deep lists and maps nest in ``v`` (a scalar: 0), counted up to ``stop`` + 1 at
    most, without recursion (so that any value, however deep, is measured safely)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(v, 1)]
    while stack:
        item, d = stack.pop()
        t = type(item)
        if t is dict:
            children: Any = item.values()
        elif t is list or t is tuple:
            children = item
        else:
            continue
        if d > deepest:
            deepest = d
            if deepest > stop:
                return deepest
        stack.extend((c, d + 1) for c in children if type(c) in (dict, list, tuple))
    return deepest


def _prev_version(v: Any, lim: Limits) -> int:
    return -1 if v == -1 and type(v) is int else _counter(v, lim)


def _payload(v: Any, lim: Limits) -> bytes | None:
    if v is not None and type(v) is not bytes:
        raise ProtocolError(f"expected bytes, got {v!r:.40}")
    return v


def _bytes(v: Any, lim: Limits) -> bytes:
    if type(v) is not bytes or len(v) > 1024:
        raise ProtocolError(f"expected at most 1 KiB of bytes, got {v!r:.40}")
    return v


def _age(v: Any, lim: Limits) -> int:
    return _uint(v, 1 << 32)


_Field = Callable[[Any, Limits], Any]
_SCHEMA: dict[int, tuple[type, tuple[_Field, ...], int]] = {
    # code: (type, field checkers, how many fields are required)
    Code.PING: (Ping, (_seq, _str, _str), 3),
    Code.INDIRECT_PING: (IndirectPing, (_seq, _str, _host, _port, _bool, _str), 6),
    Code.ACK: (Ack, (_seq, _payload), 1),
    Code.NACK: (Nack, (_seq,), 1),
    Code.SUSPECT: (Suspect, (_counter, _str, _str, _age), 3),
    Code.ALIVE: (Alive, (_counter, _str, _host, _port, _counter), 4),
    Code.DEAD: (Dead, (_counter, _str, _str), 3),
    Code.STATE: (StateDelta, (_str, _prev_version, _counter, _state_map), 4),
    Code.USER_EVENT: (UserEvent, (_counter, _str, _bytes, _bool, _opt_str), 3),
}
_CODES: dict[type, int] = {t: code for code, (t, _, _) in _SCHEMA.items()}
_CODES[PushPull] = Code.PUSH_PULL


def decode_message(raw: Any, lim: Limits = DEFAULT_LIMITS) -> Message:
    """One message from its decoded msgpack array; ProtocolError when malformed."""
    if type(raw) is not list or not raw or type(raw[0]) is not int:
        raise ProtocolError(f"expected a message array, got {raw!r:.40}")
    spec = _SCHEMA.get(raw[0])
    if spec is None:
        raise ProtocolError(f"unknown message code {raw[0]}")
    cls, checks, required = spec
    fields = raw[1 : 1 + len(checks)]
    if len(fields) < required:
        raise ProtocolError(f"{cls.__name__} needs {required} fields, got {len(fields)}")
    msg: Message = cls(*[check(v, lim) for check, v in zip(checks, fields, strict=False)])
    return msg


def decode_payload(payload: bytes, limit: int | None = None) -> list[Any]:
    """The raw message arrays of a payload; decode each with ``decode_message``. With
    ``limit``, at most ``limit + 1`` are read (the rest is never parsed): a caller that
    gets more than ``limit`` knows there were too many."""
    if limit is None:
        items = _unpack(payload)
        if type(items) is not list:
            raise ProtocolError("payload is not an array of messages")
        return items
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, use_list=True,
                                max_buffer_size=max(len(payload), 1))
    try:
        unpacker.feed(payload)
        n = unpacker.read_array_header()
        return [unpacker.unpack() for _ in range(min(n, limit + 1))]
    except Exception as e:  # msgpack's errors; a header where an array should be
        raise ProtocolError(f"not a payload of messages: {type(e).__name__}: {e}") from None


def member_record(raw: Any, lim: Limits = DEFAULT_LIMITS) -> MemberRecord:
    if type(raw) is not list or len(raw) < 7:
        raise ProtocolError(f"expected a member record, got {raw!r:.40}")
    status = _uint(raw[4], 4)
    return MemberRecord(_str(raw[0], lim), _host(raw[1], lim), _port(raw[2], lim),
                        _counter(raw[3], lim), Status(status), _counter(raw[5], lim),
                        None if raw[6] is None else _state_map(raw[6], lim))


def decode_push_pull(payload: bytes, lim: Limits = DEFAULT_LIMITS) -> PushPull:
    """A push-pull message; ProtocolError when malformed or over the limits."""
    steps = push_pull_steps(payload, lim)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: PushPull = done.value
            return result


def push_pull_steps(payload: bytes, lim: Limits = DEFAULT_LIMITS,
                    batch: int = 256) -> Generator[None, None, PushPull]:
    """``decode_push_pull`` in steps: yields after every ``batch`` member records, so that a
    caller on an event loop can let others run between them; returns the message."""
    if len(payload) > lim.max_stream_frame:
        raise ProtocolError(f"push-pull of {len(payload)} bytes is over the limit",
                            reason="too_large")
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, use_list=True,
                                max_buffer_size=max(len(payload), 1))
    try:
        unpacker.feed(payload)
        n = unpacker.read_array_header()
        if n < 4 or unpacker.unpack() != Code.PUSH_PULL:
            raise ProtocolError("expected a push-pull message")
        join = _bool(unpacker.unpack(), lim)
        sender = _str(unpacker.unpack(), lim)
        count = unpacker.read_array_header()
        if count > lim.max_members:
            raise ProtocolError(f"push-pull of {count} members; at most {lim.max_members}",
                                reason="too_many")
        members = []
        for i in range(count):
            members.append(member_record(unpacker.unpack(), lim))
            if (i + 1) % batch == 0:
                yield
        rest = [unpacker.unpack() for _ in range(min(n - 4, 2))]
    except ProtocolError:
        raise
    except Exception as e:  # msgpack's errors (and a header where a value should be)
        raise ProtocolError(f"not a push-pull message: {type(e).__name__}: {e}") from None
    digest = rest[0] if rest else b""
    if type(digest) is not bytes or len(digest) > 64:
        raise ProtocolError("push-pull digest is not a short byte string")
    clock = _counter(rest[1], lim) if len(rest) > 1 else 0
    return PushPull(join, sender, members, digest, clock)


def state_size(state: dict[str, Any]) -> int:
    """Encoded size of a node state map."""
    return len(_packb(state))
