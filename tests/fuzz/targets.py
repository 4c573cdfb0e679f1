"""Fuzz targets: untrusted bytes in, only the documented error out.

* ``gossip_packet``: a datagram or stream frame as a member receives it (envelope,
  decryption, msgpack, message schema, then the membership state machine). Only
  ProtocolError may escape, and the member must still work afterwards.
* ``job_file``: a job file as ``orchctl job run`` reads it (YAML or JSON, then the schema
  and validation). Only JobSpecError may escape.
* ``job_message``: a Job message as the controller's API receives it (protobuf, then
  validation). Only DecodeError, or validation problems, may come out.

The same functions serve hypothesis (tests/unit/test_fuzz.py) and atheris
(``python -m tests.fuzz.run``; the fuzz tier, tests/fuzz/test_fuzz.py, runs each within a
fixed time budget).
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

from google.protobuf.message import DecodeError

from orch.errors import JobSpecError, ProtocolError
from orch.gossip import codec
from orch.gossip.config import GossipConfig
from orch.gossip.core import Membership
from orch.gossip.crypto import Keyring
from orch.gossip.messages import (
    Alive,
    MemberRecord,
    Message,
    Ping,
    PushPull,
    StateDelta,
    Suspect,
)
from orch.jobspec import parse_job
from orch.jobspec.validate import validate_job
from orch.v1 import job_pb2

KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
LABEL = "orch"
EXAMPLES = Path(__file__).parents[2] / "deploy" / "examples"


def _member() -> Membership:
    core = Membership(GossipConfig.lan(), name="me", addr=("10.0.0.1", 7946),
                      rng=random.Random(1), now=0.0, state={"role": "agent"})
    core.preload([(f"p{i}", (f"10.0.0.{i + 2}", 7946)) for i in range(4)], 0.0)
    core.tick(0.0)
    return core


_CORE = _member()
_KEYRING = Keyring([KEY])
_NOW = [1.0]


def gossip_packet(data: bytes) -> None:
    """One input to a member; raises only ProtocolError."""
    _NOW[0] += 0.01
    for keyring in (None, _KEYRING):
        try:
            payload = codec.open_envelope(data, LABEL, keyring)
        except ProtocolError:
            payload = data  # the decoders must also survive what the envelope would stop
        for parse in (lambda p: _CORE.receive_packet(("10.0.0.9", 7946), p, _NOW[0]),
                      lambda p: _CORE.stream_request(("10.0.0.9", 7946),
                                                     codec.decode_push_pull(p), _NOW[0])):
            with contextlib.suppress(ProtocolError):
                parse(payload)
    _CORE.tick(_NOW[0])
    assert _CORE.member("me") is not None


def gossip_seeds() -> list[bytes]:
    """Well-formed inputs to start from (plain and sealed)."""
    msgs: list[Message] = [Ping(1, "me", "p0"), Alive(2, "p9", "10.0.0.11", 7946, 1), Suspect(3, "p1", "p0"),
            StateDelta("p2", -1, 2, {"rpc": "10.0.0.4:4648"})]
    payload = codec.pack([codec.encode(m) for m in msgs])
    pp = codec.encode(PushPull(True, "p3", [MemberRecord("p3", "10.0.0.5", 7946, 1, 0, 1,
                                                         {"role": "agent"})]))
    return [codec.seal(p, LABEL, k) for p in (payload, pp) for k in (None, _KEYRING)]


def job_file(data: bytes) -> None:
    """A job file's bytes; raises only JobSpecError."""
    text = data.decode("utf-8", errors="replace")
    for source in ("fuzz.yaml", "fuzz.json"):
        with contextlib.suppress(JobSpecError):
            parse_job(text, source=source)


def job_seeds() -> list[bytes]:
    return [p.read_bytes() for p in sorted(EXAMPLES.glob("*.yaml"))]


def job_message(data: bytes) -> None:
    """A Job message off the wire; raises nothing (bad bytes and bad jobs are reported)."""
    try:
        job = job_pb2.Job.FromString(data)
    except DecodeError:
        return
    validate_job(job)


def job_message_seeds() -> list[bytes]:
    return [parse_job(s.decode(), source="x.yaml").SerializeToString() for s in job_seeds()]
