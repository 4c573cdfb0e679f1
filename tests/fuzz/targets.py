"""Fuzz targets: untrusted bytes in; only the documented error out, and the invariants hold.

* ``gossip_packet``: a datagram or push-pull as a member receives it (envelope, decryption,
  msgpack, message schema, then the membership state machine), under tight bounds so that
  they are reached often. Only ProtocolError may escape; afterwards the member's tables are
  within their bounds, everything it would send decodes at a peer, and no call did more
  than a bounded amount of work (``check_member``).
* ``stream_frame``: bytes as a TCP push-pull connection carries them (the 4-byte length,
  the envelope, the push-pull decoded in steps): only ProtocolError, and the frame limit.
* ``endpoints``: a member's node state (msgpack) and the controller's expected endpoints
  (protobuf) through the endpoint table: nothing raises, and every endpoint in the table
  is one the controller placed, on the member that publishes it, at its own address.
* ``snapshot``: a member snapshot file as a restart reads it: nothing raises, and what it
  keeps is well-formed and bounded.
* ``grpc_message``: any message of the gRPC services (``ControllerService``,
  ``NodeService``, ``AgentService``: requests and answers, as whoever receives them
  parses them), then what the receiver does with it first (validation, conversion to the
  scheduler's, the agent's or the load balancer's types): only DecodeError or the
  documented errors.
* ``job_file``: a job file as ``orchctl job run`` reads it (YAML or JSON, then the schema
  and validation). Only JobSpecError may escape.
* ``job_message``: a Job message as the controller's API receives it (protobuf, then
  validation). Only DecodeError, or validation problems, may come out.
* ``dns_query``: a packet as an agent's DNS server receives it (over UDP and TCP):
  nothing raises; an answer is a response to that very query within the client's size;
  what does not parse is dropped.

The same functions serve hypothesis (tests/unit/test_fuzz.py) and atheris
(``python -m tests.fuzz.run``; the fuzz tier, tests/fuzz/test_fuzz.py, runs each within a
fixed time budget).
"""

from __future__ import annotations

import contextlib
import random
import tempfile
from pathlib import Path
from typing import Any

import msgpack
from google.protobuf.message import DecodeError, Message

from agent.lb import discovery
from agent.runtime import convert
from controller.scheduler import alloc_info_from_proto, node_info_from_proto
from orch.errors import JobSpecError, OrchError, ProtocolError
from orch.gossip import codec
from orch.gossip.config import GossipConfig
from orch.gossip.core import MemberInfo, Membership
from orch.gossip.crypto import Keyring, parse_key
from orch.gossip.messages import (
    Alive,
    Dead,
    MemberRecord,
    Ping,
    PushPull,
    StateDelta,
    Status,
    Suspect,
    UserEvent,
)
from orch.gossip.messages import (
    Message as GossipMessage,
)
from orch.gossip.snapshot import MAX_LINE, Snapshot
from orch.jobspec import parse_job
from orch.jobspec.validate import validate_job
from orch.v1 import controller_pb2, job_pb2, node_pb2

KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
LABEL = "orch"
EXAMPLES = Path(__file__).parents[2] / "deploy" / "examples"
TIGHT = GossipConfig.lan(max_members=64, max_candidates=16, merge_batch=8, max_state_bytes=4096,
                         max_packet_messages=32, max_stream_frame=64 * 1024, max_relays=8,
                         counter_limit=2**40, counter_window=1000, verify_rate=20.0)
"""Small bounds, so that fuzzing reaches them often."""


def _member() -> Membership:
    core = Membership(TIGHT, name="me", addr=("10.0.0.1", 7946),
                      rng=random.Random(1), now=0.0, state={"role": "agent"})
    core.preload([(f"p{i}", (f"10.0.0.{i + 2}", 7946)) for i in range(4)], 0.0)
    core.tick(0.0)
    return core


_CORE = _member()
_KEYRING = Keyring([KEY])
_NOW = [1.0]


def check_member(core: Membership, work_before: int) -> None:
    """The invariants of a member, whatever it was sent: its tables within their bounds,
    its counters within the limit, what it sends decodable, bounded work per call."""
    cfg = core.cfg
    assert core.member(core.name) is not None
    assert len(core.members) <= cfg.max_members
    assert core.candidates <= cfg.max_candidates
    assert len(core._relays) <= cfg.max_relays
    assert core.queued_broadcasts <= cfg.max_queue + 1
    assert core.stats.merged - work_before <= cfg.merge_batch
    assert core.user_events.clock <= cfg.counter_limit + 1
    for m in core.members.values():
        assert m.incarnation <= cfg.counter_limit
        assert max(m.state_version, m.announced_version) <= cfg.counter_limit
        assert len(m.pending or ()) <= 32
        if m is not core.me:
            assert codec.state_size(m.state) <= cfg.max_state_bytes
            assert codec.depth(m.state, cfg.max_state_depth) <= cfg.max_state_depth
    for states in (True, False):  # what it would send decodes at any peer
        msg = core._push_pull_message(join=False, states=states)
        data = codec.encode(msg)
        assert len(data) <= cfg.max_stream_frame
        assert codec.decode_push_pull(data, core.limits) == msg


def gossip_packet(data: bytes) -> None:
    """One input to a member; raises only ProtocolError; the member's invariants hold."""
    _NOW[0] += 0.01
    for keyring in (None, _KEYRING):
        try:
            payload = codec.open_envelope(data, LABEL, keyring)
        except ProtocolError:
            payload = data  # the decoders must also survive what the envelope would stop
        for parse in (lambda p: _CORE.receive_packet(("10.0.0.9", 7946), p, _NOW[0]),
                      lambda p: _CORE.stream_request(("10.0.0.9", 7946),
                                                     codec.decode_push_pull(p, _CORE.limits),
                                                     _NOW[0])):
            before = _CORE.stats.merged
            with contextlib.suppress(ProtocolError):
                parse(payload)
            check_member(_CORE, before)
    before = _CORE.stats.merged
    _CORE.tick(_NOW[0])
    check_member(_CORE, before)


def gossip_seeds() -> list[bytes]:
    """Well-formed inputs to start from (plain and sealed), hostile ones among them."""
    top = 2**63 - 1
    msgs: list[GossipMessage] = [
        Ping(1, "me", "p0"), Alive(2, "p9", "10.0.0.11", 7946, 1), Suspect(3, "p1", "p0"),
        StateDelta("p2", -1, 2, {"rpc": "10.0.0.4:4648"}), Suspect(top, "me", "p0"),
        Dead(top, "p1", "p0"), StateDelta("p3", -1, top, {"role": "x"}),
        UserEvent(top, "boom", b""), Suspect(0, "p2", "p0", 2**32 - 1)]
    payload = codec.pack([codec.encode(m) for m in msgs])
    flood = codec.pack([codec.encode(Alive(0, f"fake{i}", "10.9.9.9", 1000 + i))
                        for i in range(40)])
    pp = codec.encode(PushPull(True, "p3", [MemberRecord("p3", "10.0.0.5", 7946, 1, 0, 1,
                                                         {"role": "agent"})]))
    big = codec.encode(PushPull(False, "p3", [
        MemberRecord(f"m{i}", "10.0.1.1", 1000 + i, 0, 0, 1, {"a": [[["b"]]]})
        for i in range(100)]))
    return [codec.seal(p, LABEL, k) for p in (payload, flood, pp, big)
            for k in (None, _KEYRING)]


# --- the stream framing ------------------------------------------------------------------------

_STREAM_CORE = _member()


def stream_frame(data: bytes) -> None:
    """Bytes as a push-pull connection carries them: length, envelope, push-pull."""
    _NOW[0] += 0.01
    core = _STREAM_CORE
    try:
        n = codec.frame_length(data[:4], TIGHT.max_stream_frame)
        frame = data[4:4 + n]
        if len(frame) < n:
            return  # the connection ended mid-frame: the transport drops it
        for keyring in (None, _KEYRING):
            with contextlib.suppress(ProtocolError):
                steps = codec.push_pull_steps(codec.open_envelope(frame, LABEL, keyring),
                                              core.limits, TIGHT.merge_batch)
                records = 0
                while True:
                    try:
                        next(steps)
                    except StopIteration as done:
                        msg: PushPull = done.value
                        break
                    records += TIGHT.merge_batch
                assert records <= TIGHT.max_members
                before = core.stats.merged
                core.stream_request(("10.0.0.9", 7946), msg, _NOW[0])
                check_member(core, before)
    except ProtocolError:
        pass
    assert codec.frame_length((TIGHT.max_stream_frame + 1).to_bytes(4, "big"), 2**32) > \
        TIGHT.max_stream_frame


def stream_seeds() -> list[bytes]:
    return [codec.frame(s) for s in gossip_seeds()]


# --- endpoints in node states ------------------------------------------------------------------

_PLACED = controller_pb2.ExpectedEndpoints(version=1, services=[controller_pb2.ExpectedService(
    namespace="default", job="shop", group="g", name="web", published_port=8080,
    protocol="tcp", lb_policy="round_robin", endpoints=[
        controller_pb2.ExpectedEndpoint(alloc_id="a1", node="n1", port=21000),
        controller_pb2.ExpectedEndpoint(alloc_id="a2", node="n2", port=0)])])


def endpoints(data: bytes) -> None:
    """A member's node state (msgpack) and, after a 0xff byte, the controller's expected
    endpoints (protobuf); the table holds only what the controller placed."""
    state_bytes, _, placed_bytes = data.partition(b"\xff")
    state = codec.unpack_value(state_bytes)
    if not isinstance(state, dict) or not codec.str_keys(state):
        state = {}  # what the wire refuses (codec's node-state check)
    try:
        expected = discovery.Expected.from_proto(
            controller_pb2.ExpectedEndpoints.FromString(placed_bytes)) if placed_bytes \
            else discovery.Expected.from_proto(_PLACED)
    except DecodeError:
        expected = discovery.Expected.from_proto(_PLACED)
    members = [MemberInfo(name, (f"10.0.0.{i + 2}", 7946), Status.ALIVE, 0, state, 1, 0.0)
               for i, name in enumerate(("n1", "n2", "evil"))]
    for exp in (expected, None):
        table = discovery.endpoint_table(members, "n1", exp)
        for key, spec in table.services.items():
            assert 0 < spec.published_port < 65536
            for e in spec.endpoints:
                m = next(m for m in members if m.name == e.node)
                assert e.host == m.addr[0]
                if exp is None:
                    assert e.node == "n1"
                else:
                    placed = exp.placed[(e.alloc_id, spec.name)]
                    assert (placed.service, placed.node) == (key, e.node)
                    assert placed.port in (0, e.port)


def endpoint_seeds() -> list[bytes]:
    good = {"ep:web:a1": ["10.0.0.2", 21000, 8080, "tcp", "round_robin", 1, False, "default",
                          "shop", "g"],
            "ep:web:a2": ["10.0.0.9", 1, 8080, "tcp", "maglev", 1, True],
            "ep:evil:zz": ["1.2.3.4", 9, 80, "udp", "p2c", 5, False]}
    return [msgpack.packb(good), msgpack.packb(good) + b"\xff" + _PLACED.SerializeToString()]


# --- DNS queries ---------------------------------------------------------------------------------

def _dns_answerer() -> Any:
    from agent.dns import zone as zones
    from agent.dns.answer import Answerer
    from agent.dns.config import DnsConfig
    from agent.lb.model import Endpoint, ServiceSpec

    cfg = DnsConfig()
    catalog = {"default/j/g/web": ServiceSpec(name="web", published_port=8080, job="j",
                                              group="g", endpoints=tuple(
        Endpoint(alloc_id=f"a{i}", node="n1", host=f"10.0.0.{i + 1}", port=2000 + i)
        for i in range(40)))}
    return Answerer(cfg, zones.build(cfg.origin, catalog, [("n1", "10.0.0.1")], me="n1",
                                     mesh_host="10.0.0.1", service_ttl=0, node_ttl=5),
                    random.Random(0))


_ANSWERER: Any = None


def dns_query(data: bytes) -> None:
    """A datagram (or TCP message) as the agent's DNS server receives it: nothing raises;
    what is answered is a response to that very query (its id, QR set), within the size
    the client can take; whatever does not parse is dropped."""
    import dns.flags
    import dns.message

    global _ANSWERER
    if _ANSWERER is None:
        _ANSWERER = _dns_answerer()
    for udp in (True, False):
        r = _ANSWERER.respond(data, udp=udp)
        if r.wire is None:
            assert r.outcome in ("malformed", "forward")
            continue
        m = dns.message.from_wire(r.wire)
        assert m.id == int.from_bytes(data[:2], "big")
        assert m.flags & dns.flags.QR
        assert len(r.wire) <= (4096 if udp else 65535)
        if udp and m.edns < 0:
            assert len(r.wire) <= 512


def dns_seeds() -> list[bytes]:
    import dns.message

    return [dns.message.make_query(n, t, use_edns=e).to_wire()
            for n, t, e in (("web.service.default.orch.", "A", False),
                            ("web.service.orch.", "SRV", True), ("n1.node.orch.", "AAAA", False),
                            ("nope.orch.", "A", False), ("example.com.", "MX", True))]


# --- the member snapshot -----------------------------------------------------------------------

_SNAPSHOT_DIR = Path(tempfile.mkdtemp(prefix="fuzz-snapshot-"))


def snapshot(data: bytes) -> None:
    """A member snapshot file's bytes as a restarted daemon reads them."""
    path = _SNAPSHOT_DIR / "members.snapshot"
    path.write_bytes(data)
    got = Snapshot(path, me="me", max_members=20).load()
    assert len(got) <= 20
    assert "me" not in got
    for name, (host, port) in got.items():
        assert name
        assert not any(c.isspace() for c in name)
        assert 0 < len(host) <= 255
        assert 0 < port < 65536
        assert len(f"alive {name} {host}:{port}") <= MAX_LINE


def snapshot_seeds() -> list[bytes]:
    return [b"alive a 10.0.0.1:7946\ngone a\nalive b [::1]:7946\n",
            b"alive x 10.0.0.1:99999\n" + b"alive " + b"y" * 700 + b" 1.2.3.4:5\n"]


# --- gRPC messages -----------------------------------------------------------------------------


def _service_messages() -> list[type[Message]]:
    """Every message type a gRPC service of orch receives or sends, in a stable order."""
    found: dict[str, type[Message]] = {}
    for service in controller_pb2.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            for desc in (method.input_type, method.output_type):
                module = controller_pb2 if desc.file is controller_pb2.DESCRIPTOR else \
                    node_pb2 if desc.file is node_pb2.DESCRIPTOR else job_pb2
                found[desc.full_name] = getattr(module, desc.name)
    return [found[k] for k in sorted(found)]


MESSAGES = _service_messages()


def grpc_message(data: bytes) -> None:
    """The first byte picks a message type; the rest is its bytes, parsed and then handled
    as its receiver does first. Only DecodeError and orch's own errors may come out."""
    if not data:
        return
    cls = MESSAGES[data[0] % len(MESSAGES)]
    try:
        msg = cls.FromString(data[1:])
    except DecodeError:
        return
    assert cls.FromString(msg.SerializeToString()) == msg
    with contextlib.suppress(OrchError):
        _handle(msg)


def _handle(msg: Message) -> None:
    """What the receiving side does with a message before anything else."""
    if isinstance(msg, controller_pb2.RegisterJobRequest | controller_pb2.PlanJobRequest):
        validate_job(msg.job)
    elif isinstance(msg, controller_pb2.NodeMessage):
        if msg.HasField("register"):
            node_info_from_proto(msg.register)
        for a in msg.allocations.allocations:
            alloc_info_from_proto(a)
    elif isinstance(msg, controller_pb2.ControllerMessage):
        for a in msg.desired.allocations:
            convert.alloc_spec_from_proto(a)
        held = discovery.ExpectedSet()
        held.replace(msg.endpoints)
        with contextlib.suppress(ProtocolError):  # changes of another version: refused
            held.change(msg.endpoint_changes)
    elif isinstance(msg, controller_pb2.AgentStatus):
        node_info_from_proto(msg.node)
    elif isinstance(msg, controller_pb2.KeyringRequest) and msg.key:
        parse_key(msg.key)


def grpc_seeds() -> list[bytes]:
    job = parse_job((EXAMPLES / "hello.yaml").read_text(), source="hello.yaml")
    alloc = node_pb2.Allocation(id="a", job="hello", spec=job.groups[0])
    samples: list[Message] = [
        controller_pb2.RegisterJobRequest(job=job),
        controller_pb2.NodeMessage(register=node_pb2.Node(id="n", reserved_ports=[80])),
        controller_pb2.NodeMessage(allocations=controller_pb2.AllocationUpdates(
            allocations=[alloc])),
        controller_pb2.ControllerMessage(desired=controller_pb2.DesiredAllocations(
            allocations=[alloc])),
        controller_pb2.ControllerMessage(endpoints=_PLACED),
        controller_pb2.ControllerMessage(endpoint_changes=controller_pb2.ExpectedEndpointChanges(
            version=2, services=_PLACED.services, removed=[controller_pb2.ExpectedService(
                namespace="default", job="gone", group="g", name="gone")]))]
    return [bytes([MESSAGES.index(type(m))]) + m.SerializeToString() for m in samples]


# --- job files and messages --------------------------------------------------------------------


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
