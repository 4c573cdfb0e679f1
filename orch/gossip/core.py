"""The gossip membership state machine: SWIM with Lifeguard, sans-IO.

``Membership`` holds no socket and reads no clock: it is fed the time and what
arrived, and returns *effects* for the caller to carry out::

    core = Membership(cfg, name="a", addr=("127.0.0.2", 7946), rng=random.Random(1), now=0.0)
    effects = core.join([("127.0.0.3", 7946)], now)      # Stream: push-pull with a seed
    effects = core.receive_packet(src, payload, now)     # Send: datagrams to send
    effects = core.tick(now)                             # at core.next_deadline()

Effects are ``Send`` (a UDP payload), ``Stream`` (a TCP state exchange whose
outcome goes back through ``stream_done``) and ``MemberEvent``. The same core
runs on real sockets (``transport``) and in the simulator (``sim``).
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
import zlib
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple

from orch.errors import ProtocolError
from orch.gossip import broadcast as bq
from orch.gossip import codec
from orch.gossip.config import GossipConfig
from orch.gossip.coordinate import Coordinate, VivaldiClient, VivaldiConfig
from orch.gossip.messages import (
    Ack,
    Addr,
    Alive,
    Code,
    Dead,
    IndirectPing,
    MemberRecord,
    Nack,
    Ping,
    PushPull,
    StateDelta,
    Status,
    Suspect,
    UserEvent,
)
from orch.gossip.suspicion import (
    Awareness,
    Suspicion,
    min_suspicion_timeout,
    retransmit_limit,
)
from orch.gossip.timers import Timer, Timers
from orch.gossip.user_events import UserEvents
from orch.ratelimit import TokenBucket

ALIVE, SUSPECT, DEAD, LEFT = Status.ALIVE, Status.SUSPECT, Status.DEAD, Status.LEFT
_LIVE = (ALIVE, SUSPECT)
_GONE = (DEAD, LEFT)
_MAX_PENDING_DELTAS = 32
ASK_RATE = 4.0
"""Exchanges per second (and in a burst) opened to ask suspected members for their own
record (``Membership._ask_owner``)."""


class EventKind(Enum):
    JOIN = "join"
    """A member appeared, or came back after being dead or gone."""
    UPDATE = "update"
    """A member's node state changed."""
    SUSPECT = "suspect"
    ALIVE = "alive"
    """A suspected member refuted the suspicion."""
    DEAD = "dead"
    LEFT = "left"
    CONFLICT = "conflict"
    """Another address claims a live member's name (it is ignored)."""


# --- effects -------------------------------------------------------------------------------


class Send(NamedTuple):
    addr: Addr
    payload: bytes
    """A msgpack array of messages; the transport seals it in the envelope."""


class Stream(NamedTuple):
    addr: Addr
    message: PushPull
    purpose: str
    """join, sync (periodic anti-entropy, digest first), sync-full (after a sync showed the
    peer behind us), reconnect (a dead member) or repair (a lagging node state)."""


class MemberEvent(NamedTuple):
    kind: EventKind
    name: str
    addr: Addr
    incarnation: int
    time: float


Effect = Send | Stream | MemberEvent | UserEvent


@dataclass(slots=True)
class Member:
    """What this member knows of one member (itself included)."""

    name: str
    addr: Addr
    incarnation: int
    status: Status
    since: float
    state: dict[str, Any] = field(default_factory=dict)
    state_version: int = 0
    """Every delta up to this version has been applied."""
    announced_version: int = 0
    """Highest state version seen announced (alive messages, deltas)."""
    pending: list[StateDelta] | None = None
    """Deltas that arrived ahead of a missing one."""
    suspicion: Suspicion | None = None
    reap_timer: Timer | None = None
    repair_at: float = -math.inf
    asked_at: float = -math.inf
    """When this member last asked it for its own record (a counter past the window)."""
    state_bytes: int = 1
    """Encoded size of ``state`` (for the push-pull frame's budget)."""


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """A read-only snapshot of a member for callers outside the core."""

    name: str
    addr: Addr
    status: Status
    incarnation: int
    state: Mapping[str, Any]
    state_version: int
    since: float


RTT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
"""Upper bounds (seconds) of the probe round-trip histogram buckets."""


@dataclass(slots=True)
class Stats:
    """Counters for metrics (messages by code are indexed by ``Code``)."""

    sent: list[int] = field(default_factory=lambda: [0] * (max(Code) + 1))
    received: list[int] = field(default_factory=lambda: [0] * (max(Code) + 1))
    dropped: dict[str, int] = field(default_factory=dict)
    probes: int = 0
    probe_failures: int = 0
    indirect_probes: int = 0
    suspicions: int = 0
    """Suspicions this member raised from its own failed probes."""
    refutations: int = 0
    """Times this member refuted a suspicion (or death notice) about itself."""
    syncs_in_step: int = 0
    """Digest-first syncs from peers whose view matched ours (answered with nothing)."""
    merged: int = 0
    """Push-pull member records taken in (``merge_batch`` at most per call)."""
    repairs: int = 0
    """State repairs started (full exchanges with a state's owner)."""
    repairs_delayed: int = 0
    """State repairs put off by ``state_repair_rate``."""
    sent_bytes: list[int] = field(default_factory=lambda: [0] * (max(Code) + 1))
    """Encoded bytes of the messages sent, by code (envelopes not included)."""
    rtt_samples: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    """The latest direct probe round-trip times (seconds)."""
    rtt_counts: list[int] = field(default_factory=lambda: [0] * (len(RTT_BUCKETS) + 1))
    """Direct probe round-trip times, counted per bucket of RTT_BUCKETS (last: above)."""
    rtt_sum: float = 0.0

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def observe_rtt(self, seconds: float) -> None:
        self.rtt_samples.append(seconds)
        self.rtt_sum += seconds
        self.rtt_counts[bisect.bisect_left(RTT_BUCKETS, seconds)] += 1




@dataclass(slots=True)
class _Probe:
    seq: int
    target: str
    sent: float
    acked: bool = False
    nacks: int = 0
    expected_nacks: int = 0
    check: bool = False
    """A check of an accused member, beside the probe of our turn."""


@dataclass(slots=True)
class _Relay:
    seq: int
    requester: Addr
    nack: bool
    timer: Timer | None = None


ACCUSED_SOURCES = 3
"""Addresses an accusation above the incarnation held is counted from, per member, at most:
enough to tell the word of many peers from one member's (``_accused_above``)."""
ACCUSED_BY = 8
"""Accusers remembered per member accused above the incarnation held (they confirm the
suspicion a failed probe of it starts)."""


@dataclass(slots=True)
class _Accused:
    """A live member accused above the incarnation held: our view of it may be stale (it
    refuted while we missed it, then failed), or the accuser lies. It is checked with a
    probe beside our turns; a failed probe starts our own suspicion, which the accusers
    confirm."""

    sources: set[Addr]
    """The peers the accusations came through (their number orders the probes first)."""
    accusers: set[str]
    """Who accused (their number orders the probes next: a crash is accused by each of
    its probers in turn, a liar's word by the liar)."""
    start: float
    """The earliest start the accusations claimed (the shared suspicion clock)."""
    heard: float
    """When the first accusation came (the earliest heard is probed first among equals)."""
    probing: bool = False


@dataclass(slots=True)
class _Candidate:
    """A member heard of from others, not yet confirmed by a ping it answered."""

    alive: Alive
    seq: int = 0
    """The sequence number of the ping sent to confirm it (0: not sent yet)."""
    attempts: int = 0


class Membership:
    """One member's view of the cluster, and the protocol that keeps it true."""

    def __init__(self, cfg: GossipConfig, *, name: str, addr: Addr, rng: random.Random,
                 now: float, state: Mapping[str, Any] | None = None,
                 incarnation: int = 0) -> None:
        if not name or len(name) > codec.MAX_NAME:
            raise ValueError("member name must be 1..256 characters")
        self.cfg = cfg
        self.name = name
        self.addr = addr
        self.rng = rng
        self.stats = Stats()
        self.awareness = Awareness(cfg.awareness_max_multiplier)
        self.clock_offset = 0.0
        """Added to ``now`` to get the shared round clock of the coordinated probe schedule
        (the transport sets it to wall time minus monotonic time)."""
        self.members: dict[str, Member] = {}
        self.me = Member(name, addr, incarnation, ALIVE, now)
        self.members[name] = self.me
        self._n_live = 1
        self._peers: list[Member] = []  # everyone but me, for random choices
        self._peer_index: dict[str, int] = {}
        self._timers = Timers()
        self._queue = bq.BroadcastQueue()
        self._out: list[Effect] = []
        self._seq = 0
        self._probes: dict[int, _Probe] = {}
        """Probes in flight by sequence number: our turn's, and at most one check."""
        self._relays: dict[int, _Relay] = {}
        self._budget = cfg.packet_size - codec.envelope_overhead(cfg.label, name) - codec.ARRAY_HEADER_MAX
        self._leaving = False
        self._stopped = False
        # probe schedule state
        self._probe_list: list[Member] = []
        self._probe_index = 0
        self._accused: dict[str, _Accused] = {}
        """Live members accused above the incarnation held, to check beside our turns (those
        accused through the most peers first), one at a time; bounded by the members we
        hold."""
        self._ring: list[str] | None = None
        self._ring_index: dict[str, int] = {}
        self._perm_key: tuple[int, int] | None = None
        self._perm: list[int] = []
        self._label_seed = zlib.crc32(cfg.label.encode())
        # joining
        self._join_seeds: list[Addr] = []
        self._join_pending = 0
        self._join_backoff = cfg.join_retry_min
        self.joined = False
        # gossip rounds run only while something is queued, on a fixed phase
        self._gossip_phase = now + rng.random() * cfg.gossip_interval
        self._gossip_timer: Timer | None = None
        self.vivaldi = VivaldiClient(VivaldiConfig(), random.Random(rng.random())) \
            if cfg.coordinates else None
        self.coordinates: dict[str, Coordinate] = {}
        """The last coordinate each probed member sent in its ack."""
        self._ack_payload: bytes | None = None
        self.user_events = UserEvents(limit=cfg.counter_limit, window=cfg.counter_window)
        # bounds on what arrives
        self.limits = codec.Limits.of(cfg)
        self._gone: dict[str, None] = {}
        """Dead and left members, the oldest first (the first to give way when full)."""
        self._by_addr: dict[Addr, str] = {addr: name}
        """Who is known at each address (for reports about a source)."""
        self._candidates: dict[str, _Candidate] = {}
        self._waiting: deque[str] = deque()
        """Candidates waiting for a confirmation ping (names; forgotten ones are skipped)."""
        self._verifying: dict[int, str] = {}
        """Sequence numbers of confirmation pings in flight -> the candidate's name."""
        self._verify_bucket = TokenBucket(cfg.verify_rate, max(1.0, cfg.verify_rate), now)
        self._repair_bucket = TokenBucket(cfg.state_repair_rate, 2 * cfg.state_repair_rate, now)
        self._verify_timer: Timer | None = None
        self._merging: deque[tuple[deque[MemberRecord], str, bool, Addr | None]] = deque()
        self._merge_backlog = 0
        self._merge_timer: Timer | None = None
        self._replied: dict[Addr, float] = {}
        """When a reply to each address last carried broadcasts."""
        self._refuted_at = -math.inf
        self._ask_bucket = TokenBucket(ASK_RATE, ASK_RATE, now)
        self._to_ask: dict[str, None] = {}
        """Suspected members to ask for their own record (``_ask_owner``): bounded by the
        members held."""
        self._ask_timer: Timer | None = None

        self._timers.at(now + rng.random() * cfg.probe_interval, self._probe_start)
        self._timers.at(now + self._push_pull_interval() * (0.5 + rng.random()), self._push_pull)
        self._timers.at(now + cfg.reconnect_interval * (0.5 + rng.random()), self._reconnect)
        if state:
            self._set_local_state(dict(state), now, full=True)
        self._announce_alive(now)  # queued last, so sent first: receivers know us before our state

    # --- the caller's interface ---------------------------------------------------------------

    def tick(self, now: float) -> list[Effect]:
        """Run the timers that are due; call at ``next_deadline()``."""
        self._timers.run(now)
        return self._flush()

    def next_deadline(self) -> float:
        return self._timers.next_deadline()

    def receive_packet(self, src: Addr, payload: bytes, now: float) -> list[Effect]:
        """Handle one datagram payload (envelope already opened). Bad input is counted."""
        limit = self.cfg.max_packet_messages
        try:
            items = codec.decode_payload(payload, limit)
        except ProtocolError as e:
            self.stats.drop(e.reason)
            return []
        if len(items) > limit:
            self.stats.drop("too_many")
            items = items[:limit]
        lim = self.limits
        for raw in items:
            try:
                msg = codec.decode_message(raw, lim)
            except ProtocolError as e:
                self.stats.drop(e.reason)
                continue
            self._dispatch(src, msg, now)
        return self._flush()

    def receive(self, src: Addr, msg: object, now: float) -> list[Effect]:
        """Handle one decoded message."""
        self._dispatch(src, msg, now)
        return self._flush()

    def _dispatch(self, src: Addr, msg: object, now: float) -> None:
        if self._stopped:
            return
        t = type(msg)
        if t is Ping:
            self._on_ping(src, msg, now)  # type: ignore[arg-type]
        elif t is Ack:
            self._on_ack(src, msg, now)  # type: ignore[arg-type]
        elif t is Alive:
            self._on_alive(msg, now, src=src)  # type: ignore[arg-type]
        elif t is Suspect:
            self._on_suspect(msg, now, src=src)  # type: ignore[arg-type]
        elif t is Dead:
            self._on_dead(msg, now, src=src)  # type: ignore[arg-type]
        elif t is IndirectPing:
            self._on_indirect_ping(src, msg, now)  # type: ignore[arg-type]
        elif t is Nack:
            self._on_nack(msg)  # type: ignore[arg-type]
        elif t is StateDelta:
            self._on_state(msg, now)  # type: ignore[arg-type]
        elif t is UserEvent:
            self._on_user_event(msg, now)  # type: ignore[arg-type]
        self.stats.received[_CODE_OF[t]] += 1

    def join(self, seeds: Iterable[Addr], now: float) -> list[Effect]:
        """Exchange state with every seed; retry with backoff until one answers."""
        self._join_seeds = [s for s in dict.fromkeys(seeds) if s != self.addr]
        self._join_backoff = self.cfg.join_retry_min
        self._join_attempt(None, now)
        return self._flush()

    def leave(self, now: float) -> list[Effect]:
        """Announce a graceful leave; keep calling ``tick`` for ``leave_propagate_time``."""
        if not self._leaving:
            self._leaving = True
            me = self.me
            self._set_status(me, LEFT, now)
            self._enqueue_member(Dead(me.incarnation, me.name, me.name), now)
            for m in self._random_peers(self.cfg.gossip_nodes * 2, _LIVE):
                self._send(m.addr, [], now)
        return self._flush()

    def stop(self) -> None:
        """Stop all activity (after a leave, or to simulate a crash)."""
        self._stopped = True
        self._timers = Timers()

    def set_state(self, changes: Mapping[str, Any], now: float) -> list[Effect]:
        """Change this member's node state (None deletes a key) and spread the change."""
        new = dict(self.me.state)
        for k, v in changes.items():
            if v is None:
                new.pop(k, None)
            else:
                new[k] = v
        if new != self.me.state:
            self._set_local_state(new, now)
        return self._flush()

    def fire_event(self, name: str, payload: bytes, now: float, *, coalesce: bool = True
                   ) -> list[Effect]:
        """Send a user event to every member (this one included: it is among the effects).
        ValueError when the name or payload is unfit."""
        ev = self.user_events.fire(name, payload, coalesce=coalesce, origin=self.name)
        data = codec.encode(ev)
        if len(data) > self._budget // 2:
            raise ValueError("event too large for a datagram")
        self._spread_event(ev, data, now)
        return self._flush()

    def _on_user_event(self, msg: UserEvent, now: float) -> None:
        if self.user_events.receive(msg):
            self._spread_event(msg, codec.encode(msg), now)

    def _spread_event(self, ev: UserEvent, data: bytes, now: float) -> None:
        self._queue.enqueue(_EVENTS, bq.USER, data, sub=(ev.ltime, ev.name, ev.payload))
        self._arm_gossip(now)
        self._out.append(ev)

    def stream_request(self, src: Addr, msg: PushPull, now: float) -> tuple[PushPull, list[Effect]]:
        """Answer a push-pull from ``src``: our state goes back, theirs is merged. A
        digest-first request gets an empty answer when our views match, else our members
        without node states."""
        if msg.digest:
            self._merge(msg, now, src=src)
            mine = self.digest()
            if msg.digest == mine:
                self.stats.syncs_in_step += 1
                return PushPull(False, self.name, [], mine, self.user_events.clock), self._flush()
            return self._push_pull_message(join=False, states=False), self._flush()
        reply = self._push_pull_message(join=False)
        self._merge(msg, now, src=src)
        return reply, self._flush()

    def stream_done(self, stream: Stream, reply: PushPull | None, now: float) -> list[Effect]:
        """The outcome of a ``Stream`` effect: the peer's state, or None when it failed."""
        if reply is not None:
            # the members we join through are the operator's choice: their view is taken as
            # it is (a member that restarted learns its own earlier incarnation from it)
            self._merge(reply, now, src=stream.addr, trusted=stream.purpose == "join")
            if stream.purpose == "sync" and reply.members and self._ahead_of(reply):
                # the peer lacks what we know: a full exchange brings it up to date
                self._out.append(Stream(stream.addr, self._push_pull_message(join=False),
                                        "sync-full"))
        if stream.purpose == "join":
            if reply is not None:  # what happened before we came is not replayed to us
                self.user_events.ignore_before(reply.event_clock)
            self._join_result(reply is not None, now)
        return self._flush()

    def digest(self) -> bytes:
        """A hash of this member's view (every member's name, address, incarnation, status
        and node-state version): equal views, equal digests."""
        h = hashlib.blake2b(digest_size=16)
        for name in sorted(self.members):
            m = self.members[name]
            h.update(f"{name}\0{m.addr[0]}:{m.addr[1]}\0{m.incarnation}\0{int(m.status)}\0"
                     f"{m.state_version}\n".encode())
        return h.digest()

    def _ahead_of(self, reply: PushPull) -> bool:
        """Whether we know something the peer's view (its records) does not."""
        theirs = {r.name: r for r in reply.members}
        for m in self.members.values():
            r = theirs.get(m.name)
            if r is None or m.incarnation > r.incarnation or m.state_version > r.state_version \
                    or (m.incarnation == r.incarnation and int(m.status) > r.status):
                return True
        return False

    def preload(self, members: Iterable[tuple[str, Addr]], now: float) -> None:
        """Know these members as alive at incarnation 0 without gossip (simulated clusters
        that start converged)."""
        for name, addr in members:
            if name not in self.members:
                self._add_member(Member(name, addr, 0, ALIVE, now), now)

    # queries

    def name_at(self, addr: Addr) -> str:
        """The member known at ``addr`` ("" when none)."""
        return self._by_addr.get(addr, "")

    def member(self, name: str) -> MemberInfo | None:
        m = self.members.get(name)
        return None if m is None else _info(m)

    def snapshot(self) -> list[MemberInfo]:
        return [_info(m) for m in self.members.values()]

    @property
    def num_live(self) -> int:
        """Members alive or suspect, this one included."""
        return self._n_live

    def coordinate(self, name: str) -> Coordinate | None:
        """This member's coordinate, or the last one ``name`` sent us (None: not probed yet)."""
        if name == self.name:
            return self.vivaldi.coord if self.vivaldi is not None else None
        return self.coordinates.get(name)

    @property
    def incarnation(self) -> int:
        return self.me.incarnation

    @property
    def queued_broadcasts(self) -> int:
        return len(self._queue)

    @property
    def candidates(self) -> int:
        """Members heard of from others, not confirmed yet (``verify_rate``)."""
        return len(self._candidates)

    # --- probing ------------------------------------------------------------------------------

    def _probe_start(self, _arg: object, now: float) -> None:
        cfg = self.cfg
        lifeguard = cfg.lifeguard
        interval = self.awareness.scale(cfg.probe_interval) if lifeguard else cfg.probe_interval
        if self._leaving:
            return
        target = self._next_target(now)
        if target is None:
            self._timers.at(now + interval, self._probe_start)
        else:
            accused = self._accused.get(target.name)
            if accused is not None and not accused.probing:
                accused.probing = True  # our turn checks it: its failure is our verdict
            self._send_probe(target, now, interval, check=False)
        if not any(p.check for p in self._probes.values()):
            checked = self._next_check(target)
            if checked is not None:
                self._send_probe(checked, now, interval, check=True)

    def _send_probe(self, target: Member, now: float, interval: float, *, check: bool) -> None:
        cfg = self.cfg
        self._seq += 1
        seq = self._seq
        self._probes[seq] = _Probe(seq, target.name, now, check=check)
        self.stats.probes += 1
        first = [codec.encode(Ping(seq, target.name, self.name))]
        if cfg.lifeguard and target.status is SUSPECT and target.suspicion is not None:
            # buddy system: tell the suspect at once, so it can refute
            s = target.suspicion
            first.append(codec.encode(Suspect(
                target.incarnation, target.name, self.name, _age_ms(s.start, now))))
        self._send(target.addr, first, now)
        timeout = self.awareness.scale(cfg.probe_timeout) if cfg.lifeguard else cfg.probe_timeout
        self._timers.at(now + timeout, self._probe_timeout, seq)
        self._timers.at(now + interval, self._probe_end, seq)

    def _probe_timeout(self, seq: int, now: float) -> None:
        p = self._probes.get(seq)
        if p is None or p.acked:
            return
        target = self.members.get(p.target)
        if target is None:
            return
        nack = self.cfg.lifeguard
        host, port = target.addr
        ind = codec.encode(IndirectPing(seq, target.name, host, port, nack, self.name))
        peers = self._random_peers(self.cfg.indirect_checks, (ALIVE,), exclude=target.name)
        for m in peers:
            self._send(m.addr, [ind], now)
        self.stats.indirect_probes += len(peers)
        p.expected_nacks = len(peers) if nack else 0

    def _probe_end(self, seq: int, now: float) -> None:
        p = self._probes.pop(seq, None)
        if p is None:
            return
        if p.acked:
            self.awareness.apply(-1)
        else:
            self.stats.probe_failures += 1
            if self.cfg.lifeguard:
                # Missing nacks mean the fault is likely ours (Lifeguard's local health).
                self.awareness.apply(p.expected_nacks - p.nacks if p.expected_nacks else 1)
            target = self.members.get(p.target)
            if target is not None and target.status in _LIVE:
                self.stats.suspicions += 1
                self._on_suspect(Suspect(target.incarnation, target.name, self.name, 0), now)
                accused = self._accused.get(p.target)
                s = target.suspicion
                if accused is not None and accused.probing and s is not None:
                    # our own verdict now: those who accused it above what we held confirm it
                    for accuser in accused.accusers:
                        self._confirm_suspicion(target, s, accuser, now - accused.start, now)
        accused = self._accused.get(p.target)
        if accused is not None and accused.probing:
            del self._accused[p.target]
        if not p.check:
            self._probe_start(None, now)

    def _next_target(self, now: float) -> Member | None:
        """The member our turn probes."""
        if self.cfg.probe_schedule == "coordinated":
            return self._coordinated_target(now)
        return self._shuffled_target()

    def _next_check(self, turn: Member | None) -> Member | None:
        """The accused member to check beside our turn: those accused through the most peers
        first, then by the most accusers, then the earliest heard (None: none waits)."""
        while True:
            waiting = [(len(a.sources), len(a.accusers), -a.heard, name)
                       for name, a in self._accused.items() if not a.probing]
            if not waiting:
                return None
            name = max(waiting)[-1]
            m = self.members.get(name)
            if m is not None and m.status is ALIVE and m is not turn:
                self._accused[name].probing = True
                return m
            del self._accused[name]

    def _shuffled_target(self) -> Member | None:
        """memberlist's walk: a shuffled list, reshuffled (and reaped) on each wrap."""
        members = self.members
        for _ in range(len(self._probe_list) + 1):
            if self._probe_index >= len(self._probe_list):
                self._probe_list = [m for m in self._probe_list if members.get(m.name) is m]
                self.rng.shuffle(self._probe_list)
                self._probe_index = 0
                if not self._probe_list:
                    return None
            m = self._probe_list[self._probe_index]
            self._probe_index += 1
            if m.status in _LIVE and members.get(m.name) is m:
                return m
        return None

    def _coordinated_target(self, now: float) -> Member | None:
        """The member at a shared shuffled offset from us on the ring of live members."""
        ring = self._ring
        if ring is None:
            ring = self._ring = sorted(n for n, m in self.members.items() if m.status in _LIVE)
            self._ring_index = {n: i for i, n in enumerate(ring)}
        size = len(ring)
        i = self._ring_index.get(self.name)
        if size < 2 or i is None:
            return None
        rnd = math.floor((now + self.clock_offset) / self.cfg.probe_interval)
        epoch, pos = divmod(rnd, size - 1)
        if self._perm_key != (epoch, size):
            seed = (self._label_seed << 40) ^ (epoch << 20) ^ size
            perm = list(range(1, size))
            random.Random(seed).shuffle(perm)
            self._perm, self._perm_key = perm, (epoch, size)
        return self.members[ring[(i + self._perm[pos]) % size]]

    def _on_ping(self, src: Addr, msg: Ping, now: float) -> None:
        if msg.target != self.name:
            self.stats.drop("misdirected")
            return
        c = self._candidates.get(msg.sender)
        if c is not None and (c.alive.host, c.alive.port) == src:
            self._confirm(msg.sender, now)  # it probes us from its own address: it exists
        self._send(src, [codec.encode(Ack(msg.seq, self._coordinate_payload()))], now, reply=True)

    def _coordinate_payload(self) -> bytes | None:
        if self.vivaldi is None:
            return None
        if self._ack_payload is None:
            self._ack_payload = codec.pack_value(self.vivaldi.coord.to_wire())
        return self._ack_payload

    def _on_ack(self, src: Addr, msg: Ack, now: float) -> None:
        name = self._verifying.get(msg.seq)
        if name is not None:
            c = self._candidates.get(name)
            if c is not None and c.seq == msg.seq and (c.alive.host, c.alive.port) == src:
                del self._verifying[msg.seq]
                self._confirm(name, now)
            return
        p = self._probes.get(msg.seq)
        if p is not None:
            if not p.acked:
                p.acked = True
                rtt = now - p.sent
                self.stats.observe_rtt(rtt)
                if self.vivaldi is not None and msg.payload:
                    other = Coordinate.from_wire(codec.unpack_value(msg.payload))
                    if other is not None:
                        self.coordinates[p.target] = other
                        self.vivaldi.update(p.target, other, rtt)
                        self._ack_payload = None
            return
        relay = self._relays.pop(msg.seq, None)
        if relay is not None:
            Timers.cancel(relay.timer)
            self._send(relay.requester, [codec.encode(Ack(relay.seq))], now, reply=True)

    def _on_nack(self, msg: Nack) -> None:
        p = self._probes.get(msg.seq)
        if p is not None:
            p.nacks += 1

    def _on_indirect_ping(self, src: Addr, msg: IndirectPing, now: float) -> None:
        if len(self._relays) >= self.cfg.max_relays:
            self.stats.drop("relays")
            return
        self._seq += 1
        seq = self._seq
        relay = self._relays[seq] = _Relay(msg.seq, src, msg.nack)
        self._send((msg.host, msg.port), [codec.encode(Ping(seq, msg.target, self.name))], now)
        timeout = self.cfg.probe_timeout
        if msg.nack:
            relay.timer = self._timers.at(now + timeout * self.cfg.nack_fraction, self._relay_nack, seq)
        self._timers.at(now + timeout, self._relay_expire, seq)

    def _relay_nack(self, seq: int, now: float) -> None:
        relay = self._relays.get(seq)
        if relay is not None:
            self._send(relay.requester, [codec.encode(Nack(relay.seq))], now, reply=True)

    def _relay_expire(self, seq: int, _now: float) -> None:
        self._relays.pop(seq, None)

    # --- membership updates ---------------------------------------------------------------------

    def _held(self, m: Member, value: int, held: int, *, accusation: bool = False,
              trusted: bool = False, now: float = 0.0) -> bool:
        """Whether a counter about ``m`` may be taken, given the value held (counted as
        dropped when not).

        Another member's incarnation, node-state version or event clock may move up by
        ``counter_window`` at most: members move their own one step at a time, and a
        member that lagged catches up in steps. An accusation about another member is taken
        only at the incarnation held: only its owner moves an incarnation up (by refuting),
        so an accusation above it is a liar's, and one a refutation could not answer within
        the window. This member takes what is said of itself up to one step short of
        ``counter_window`` (a hostile member may have raised others' view of it that much
        before it heard) and refutes it one step above, within the window of every peer
        that holds its incarnation. Past the window, while ``m`` is suspected here, this
        member asks ``m`` itself (``_ask_owner``): what a member says of itself over TCP is
        taken whatever the window, so a refutation is not lost on a member that lagged."""
        window = self.cfg.counter_window
        if accusation:
            # about another member: only at the incarnation held. About us: one step short
            # of the window, so that our refutation (one above) is within every window that
            # holds our incarnation (at the window's edge it was refused everywhere, and
            # our peers kept suspecting an incarnation we had left behind)
            window = 0 if m is not self.me else window - 1
        if trusted or value <= held + window:
            return True
        self.stats.drop("counter")
        if m.status is SUSPECT and m is not self.me:
            self._ask_owner(m, now)
        return False

    def _accused_above(self, m: Member, msg: Suspect | Dead, now: float,
                       src: Addr | None) -> None:
        """Another member accused above the incarnation we hold: a liar, or our view of it
        is stale (it refuted while we missed it; then it may have failed, and our peers
        accuse it at the incarnation we missed). The incarnation is never taken from an
        accusation (a liar would push it up by the window, over and over, past members'
        windows); the word that it fails is. Suspected here: it confirms our suspicion and
        its owner is asked for its own record. Alive here: it is checked beside our turns
        (those accused through the most peers first); a failed probe is our own suspicion, which no
        window refuses, and these accusations confirm it."""
        self.stats.drop("counter")
        age = msg.age_ms / 1000 if isinstance(msg, Suspect) else 0.0
        s = m.suspicion
        if m.status is SUSPECT and s is not None:
            self._confirm_suspicion(m, s, msg.sender, age, now)
            self._ask_owner(m, now)
        elif m.status is ALIVE:
            a = self._accused.get(m.name)
            if a is None:
                a = self._accused[m.name] = _Accused(set(), set(), now, now)
            if src is not None and len(a.sources) < ACCUSED_SOURCES:
                a.sources.add(src)
            if len(a.accusers) < ACCUSED_BY:
                a.accusers.add(msg.sender)
            a.start = min(a.start, now - age)

    def _confirm_suspicion(self, m: Member, s: Suspicion, sender: str, age: float,
                           now: float) -> bool:
        """Count ``sender``'s accusation of suspected ``m`` (``age``: seconds it claims the
        suspicion has lasted, for the shared suspicion clock, up to ``s.hi``) and move the
        suspicion's deadline to match; whether the confirmation was new."""
        rearm = confirmed = s.confirm(sender)
        if self.cfg.shared_suspicion_clock and now - min(age, s.hi) < s.start - 0.001:
            s.start, rearm = now - min(age, s.hi), True
        if rearm:
            self._arm_suspicion(m)
        return confirmed

    def _ask_owner(self, m: Member, now: float) -> None:
        """Exchange state with suspected ``m`` itself: its answer holds its own record, which
        is taken first-hand (its refutation may be the counter past the window: it must
        arrive before the suspicion ends). Once per probe interval per member, and
        ``ASK_RATE`` a second in all, so that no one can make this member open exchanges at
        will; when asks wait for the rate, the suspicion that ends first is asked first (in
        the order heard, a hostile member's stream of accusations of others took every ask
        while one member's suspicion ran out)."""
        if self._leaving:
            return
        self._to_ask[m.name] = None
        if self._ask_timer is None:
            self._ask(None, now)

    def _ask(self, _arg: object, now: float) -> None:
        """Ask the owners waiting for it, as the token bucket allows."""
        self._ask_timer = None
        bucket = self._ask_bucket
        bucket.fill(now)
        interval = self.cfg.probe_interval
        due = math.inf
        while self._to_ask and bucket.tokens >= 1:
            first, at = None, math.inf
            for name in list(self._to_ask):
                m = self.members.get(name)
                if m is None or m.status is not SUSPECT or m.suspicion is None:
                    del self._to_ask[name]  # refuted (or gone) meanwhile: nothing to ask
                elif now < m.asked_at + interval:
                    due = min(due, m.asked_at + interval)  # asked lately: its answer comes
                elif m.suspicion.deadline() < at:
                    first, at = m, m.suspicion.deadline()
            if first is None:
                break
            del self._to_ask[first.name]
            bucket.tokens -= 1
            first.asked_at = now
            self._out.append(Stream(first.addr, self._own_push_pull(), "repair"))
        if self._to_ask and not self._stopped:
            if bucket.tokens < 1:
                due = min(due, now + 1 / ASK_RATE)
            self._ask_timer = self._timers.at(due, self._ask)

    def _on_alive(self, msg: Alive, now: float, *, src: Addr | None = None,
                  trusted: bool = False) -> None:
        addr = (msg.host, msg.port)
        m = self.members.get(msg.name)
        if m is self.me:
            # an older life of ours, or someone using our name: assert ourselves
            if (msg.incarnation > self.me.incarnation or addr != self.addr) and not self._leaving \
                    and self._held(m, msg.incarnation, m.incarnation, trusted=trusted, now=now):
                self._refute(msg.incarnation, now)
            return
        if m is None or (m.status in _GONE and addr != m.addr):
            if not trusted and src != addr:
                # heard of from someone else: it counts once it answers a ping
                self._candidate(msg, now)
                return
            if m is None:
                self._admit(msg, now)
                return
        if not self._held(m, msg.incarnation, m.incarnation, trusted=trusted, now=now) or \
                not self._held(m, msg.state_version, max(m.state_version, m.announced_version),
                               trusted=trusted, now=now):
            return
        if addr != m.addr:
            if m.status in _LIVE:
                self.stats.drop("conflict")
                self._emit(EventKind.CONFLICT, Member(msg.name, addr, msg.incarnation, ALIVE, now), now)
                return
            if self._by_addr.get(m.addr) == m.name:
                del self._by_addr[m.addr]
            m.addr = addr  # a dead or gone member came back on a new address
            self._by_addr[addr] = m.name
        elif msg.incarnation <= m.incarnation:
            return
        old = m.status
        m.incarnation = msg.incarnation
        m.announced_version = max(m.announced_version, msg.state_version)
        self._enqueue_member(msg, now)
        if old is not ALIVE:
            self._set_status(m, ALIVE, now)
            self._emit(EventKind.ALIVE if old is SUSPECT else EventKind.JOIN, m, now)
        self._check_state_lag(m, now)

    def _admit(self, msg: Alive, now: float) -> None:
        """A new member: it joins our view (and is passed on)."""
        if not self._room():
            return
        m = Member(msg.name, (msg.host, msg.port), msg.incarnation, ALIVE, now)
        self._add_member(m, now)
        m.announced_version = msg.state_version
        self._enqueue_member(msg, now)
        self._emit(EventKind.JOIN, m, now)
        self._check_state_lag(m, now)

    # members heard of from others: confirmed by a ping first

    def _candidate(self, msg: Alive, now: float) -> None:
        c = self._candidates.get(msg.name)
        if c is not None:
            if msg.incarnation > c.alive.incarnation:
                c.alive = msg
            return
        if len(self._candidates) >= self.cfg.max_candidates:
            oldest = next(iter(self._candidates))
            self._forget_candidate(oldest)
            self.stats.drop("candidates")
        self._candidates[msg.name] = _Candidate(msg)
        self._waiting.append(msg.name)
        if self._verify_timer is None and not self._stopped:
            self._verify_timer = self._timers.at(now, self._verify)

    def _forget_candidate(self, name: str) -> None:
        c = self._candidates.pop(name, None)
        if c is not None and c.seq:
            self._verifying.pop(c.seq, None)

    def _verify(self, _arg: object, now: float) -> None:
        """Ping the candidates waiting for it, as the token bucket allows."""
        self._verify_timer = None
        bucket = self._verify_bucket
        bucket.fill(now)
        waiting = self._waiting
        while waiting and bucket.tokens >= 1:
            c = self._candidates.get(waiting.popleft())
            if c is None or c.seq:
                continue
            bucket.tokens -= 1
            self._seq += 1
            c.seq = self._seq
            c.attempts += 1
            self._verifying[c.seq] = c.alive.name
            a = c.alive
            self._send((a.host, a.port), [codec.encode(Ping(c.seq, a.name, self.name))], now)
            self._timers.at(now + self.cfg.probe_interval, self._verify_expired, c.seq)
        while len(waiting) > 2 * self.cfg.max_candidates:  # names forgotten meanwhile
            waiting.popleft()
        if waiting:
            self._verify_timer = self._timers.at(now + 1 / bucket.rate, self._verify)

    def _verify_expired(self, seq: int, now: float) -> None:
        name = self._verifying.pop(seq, None)
        c = self._candidates.get(name) if name is not None else None
        if c is None or c.seq != seq:
            return
        if c.attempts >= 2:  # two pings unanswered: forget it (gossip may tell us again)
            del self._candidates[c.alive.name]
            self.stats.drop("unconfirmed")
            return
        c.seq = 0
        self._waiting.append(c.alive.name)
        if self._verify_timer is None:
            self._verify_timer = self._timers.at(now, self._verify)

    def _confirm(self, name: str, now: float) -> None:
        c = self._candidates.pop(name, None)
        if c is not None:
            if c.seq:
                self._verifying.pop(c.seq, None)
            self._on_alive(c.alive, now, trusted=False, src=(c.alive.host, c.alive.port))

    # accusations

    def _on_suspect(self, msg: Suspect, now: float, *, trusted: bool = False,
                    src: Addr | None = None) -> None:
        m = self.members.get(msg.name)
        if m is not None and m is not self.me and not trusted \
                and m.incarnation < msg.incarnation <= self.cfg.counter_limit:
            self._accused_above(m, msg, now, src)
            return
        if m is None or msg.incarnation < m.incarnation or \
                not self._held(m, msg.incarnation, m.incarnation, accusation=True,
                               trusted=trusted, now=now):
            return
        if m is self.me:
            if not self._leaving:
                self._refute(msg.incarnation, now)
            return
        cfg = self.cfg
        s = m.suspicion
        if m.status is SUSPECT and s is not None and msg.incarnation == s.incarnation:
            if self._confirm_suspicion(m, s, msg.sender, msg.age_ms / 1000, now):
                self._enqueue_suspect(m, msg.sender, now)
            return
        if m.status not in _LIVE:
            return
        if s is not None:  # a suspicion of an older incarnation: start over
            Timers.cancel(s.timer)
            self._queue.drop_member(m.name, (bq.SUSPECT,))
        n = self._n_live
        k = cfg.suspicion_mult - 2 if cfg.lifeguard else 0
        if n - 2 < k:
            k = 0
        lo = min_suspicion_timeout(cfg.suspicion_mult, n, cfg.probe_interval)
        hi = cfg.suspicion_max_timeout_mult * lo if cfg.lifeguard else lo
        start = now - min(msg.age_ms / 1000, hi) if cfg.shared_suspicion_clock else now
        m.incarnation = msg.incarnation
        m.suspicion = Suspicion(start=start, sender=msg.sender, incarnation=msg.incarnation,
                                k=k, lo=lo, hi=hi, heard=now, floor=cfg.suspicion_floor * lo)
        self._set_status(m, SUSPECT, now)
        self._enqueue_suspect(m, msg.sender, now)
        self._arm_suspicion(m)
        self._emit(EventKind.SUSPECT, m, now)

    def _arm_suspicion(self, m: Member) -> None:
        s = m.suspicion
        assert s is not None
        Timers.cancel(s.timer)
        s.timer = self._timers.at(s.deadline(), self._suspicion_expired, m)

    def _suspicion_expired(self, m: Member, now: float) -> None:
        if m.status is SUSPECT and m.suspicion is not None and self.members.get(m.name) is m:
            self._declare(m, DEAD, self.name, now)

    def _on_dead(self, msg: Dead, now: float, *, trusted: bool = False,
                 src: Addr | None = None) -> None:
        """A death or leave notice. A leave is believed at once (from anyone, as memberlist
        and Serf do: the member refutes a false one at once). A death is believed once this
        member has suspected the member for its floor (``suspicion_floor``); before that it
        counts as a suspicion: one member cannot declare another dead alone, and the
        suspect has the time to refute."""
        m = self.members.get(msg.name)
        if m is not None and m is not self.me and not trusted and msg.sender != msg.name \
                and m.status not in _GONE \
                and m.incarnation < msg.incarnation <= self.cfg.counter_limit:
            self._accused_above(m, msg, now, src)
            return
        if m is None or msg.incarnation < m.incarnation or m.status in _GONE or \
                not self._held(m, msg.incarnation, m.incarnation, accusation=True,
                               trusted=trusted, now=now):
            return
        if m is self.me:
            if not self._leaving:
                self._refute(msg.incarnation, now)
            return
        leave = msg.sender == msg.name
        s = m.suspicion
        settled = m.status is SUSPECT and s is not None and s.incarnation == msg.incarnation \
            and s.settled(now)
        if leave or settled:
            m.incarnation = msg.incarnation
            self._declare(m, LEFT if leave else DEAD, msg.sender, now)
            return
        self._on_suspect(Suspect(msg.incarnation, msg.name, msg.sender, 0), now,
                         trusted=trusted, src=src)

    def _declare(self, m: Member, status: Status, sender: str, now: float) -> None:
        """``m`` is dead (or left), as this member's own verdict: tell everyone."""
        self._set_status(m, status, now)
        self._enqueue_member(Dead(m.incarnation, m.name, sender), now)
        self._emit(EventKind.LEFT if status is LEFT else EventKind.DEAD, m, now)

    def _refute(self, incarnation: int, now: float) -> None:
        me = self.me
        # never past the limit, which every member accepts (an accusation at the limit
        # cannot be refuted, but the windows keep one from getting there: counter_window)
        me.incarnation = min(max(me.incarnation, incarnation) + 1, self.cfg.counter_limit)
        self.stats.refutations += 1
        if self.cfg.lifeguard and \
                now >= self._refuted_at + self.awareness.scale(self.cfg.probe_interval):
            # at most once per probe of ours (a successful one takes it back): accusations
            # by the dozen, which any member can send, do not slow us down
            self._refuted_at = now
            self.awareness.apply(1)
        self._announce_alive(now)

    def _announce_alive(self, now: float) -> None:
        me = self.me
        self._enqueue_member(Alive(me.incarnation, me.name, me.addr[0], me.addr[1],
                                   me.state_version), now)

    def _set_status(self, m: Member, status: Status, now: float) -> None:
        old = m.status
        if old is status:
            return
        m.status = status
        m.since = now
        if (old in _LIVE) != (status in _LIVE):
            self._n_live += 1 if status in _LIVE else -1
            self._ring = None
        self._gone.pop(m.name, None)
        if status in _GONE and m is not self.me:
            self._gone[m.name] = None
        if status is not SUSPECT and m.suspicion is not None:
            Timers.cancel(m.suspicion.timer)
            m.suspicion = None
            self._queue.drop_member(m.name, (bq.SUSPECT,))
        Timers.cancel(m.reap_timer)
        m.reap_timer = None
        if status in _GONE and m is not self.me:
            after = self.cfg.tombstone_timeout if status is LEFT else self.cfg.reconnect_timeout
            m.reap_timer = self._timers.at(now + after, self._reap, m)

    def _room(self) -> bool:
        """Whether one more member fits (making room by forgetting the oldest dead or left
        member when the table is full); False (counted) when it does not."""
        if len(self.members) < self.cfg.max_members:
            return True
        for name in self._gone:
            self._reap(self.members[name], 0.0)
            return True
        self.stats.drop("members")
        return False

    def _add_member(self, m: Member, now: float) -> None:
        self.members[m.name] = m
        self._by_addr[m.addr] = m.name
        self._candidates.pop(m.name, None)
        self._peer_index[m.name] = len(self._peers)
        self._peers.append(m)
        # insert at a random place so that new members are not all probed last
        self._probe_list.insert(self.rng.randint(0, len(self._probe_list)), m)
        if m.status in _LIVE:
            self._n_live += 1
            self._ring = None

    def _reap(self, m: Member, now: float) -> None:
        if self.members.get(m.name) is not m or m.status not in _GONE:
            return
        del self.members[m.name]
        self._gone.pop(m.name, None)
        if self._by_addr.get(m.addr) == m.name:
            del self._by_addr[m.addr]
        self.coordinates.pop(m.name, None)
        if self.vivaldi is not None:
            self.vivaldi.forget(m.name)
        i = self._peer_index.pop(m.name)
        last = self._peers.pop()
        if last is not m:
            self._peers[i] = last
            self._peer_index[last.name] = i
        self._queue.drop_member(m.name, (bq.MEMBER, bq.SUSPECT, bq.STATE))

    # --- node state --------------------------------------------------------------------------

    def _set_local_state(self, new: dict[str, Any], now: float, *, full: bool = False) -> None:
        size = codec.state_size(new)
        if size > self.cfg.max_state_bytes:
            raise ValueError(f"node state is {size} bytes, the limit is {self.cfg.max_state_bytes}")
        if codec.depth(new, self.cfg.max_state_depth) > self.cfg.max_state_depth:
            raise ValueError(f"node state nests deeper than {self.cfg.max_state_depth}")
        me = self.me
        old = me.state
        changes = {k: v for k, v in new.items() if old.get(k, _MISSING) != v}
        changes.update({k: None for k in old if k not in new})
        me.state = new
        me.state_bytes = size
        self._publish_changes(new if full else changes, now, full=full)
        self._emit(EventKind.UPDATE, me, now)

    def _publish_changes(self, changes: dict[str, Any], now: float, *, full: bool = False) -> None:
        """Spread ``changes`` as deltas small enough for one packet each."""
        me = self.me
        limit = self._budget // 2
        batch: dict[str, Any] = {}
        batches: list[dict[str, Any]] = []
        used = 0
        for k, v in changes.items():
            cost = codec.state_size({k: v})
            if batch and used + cost > limit:
                batches.append(batch)
                batch, used = {}, 0
            batch[k] = v
            used += cost
        if batch or not batches:
            batches.append(batch)
        for i, b in enumerate(batches):
            prev = -1 if full and i == 0 else me.state_version
            me.state_version += 1
            delta = StateDelta(me.name, prev, me.state_version, b)
            data = codec.encode(delta)
            if len(data) > self._budget:
                # A single value too large for a datagram: push-pull and repair carry it.
                continue
            self._queue.enqueue(me.name, bq.STATE, data, sub=me.state_version, full=prev == -1)
            self._arm_gossip(now)
        me.announced_version = me.state_version

    def _on_state(self, msg: StateDelta, now: float) -> None:
        m = self.members.get(msg.name)
        if m is None or not self._held(m, msg.version, max(m.state_version, m.announced_version),
                                       now=now):
            return
        if m is self.me:
            me = self.me
            # a newer version of our state (from an earlier life), or another at our version:
            # ours wins; our own latest delta, coming back through others, is not news
            if not self._leaving and (msg.version > me.state_version or (
                    msg.version == me.state_version and not self._is_ours(msg))):
                self._reassert_state(msg.version, now)
            return
        if msg.version <= m.state_version:
            return
        m.announced_version = max(m.announced_version, msg.version)
        if msg.prev_version == -1 or msg.prev_version == m.state_version:
            self._apply_delta(m, msg, now)
            pending = m.pending
            while pending:
                nxt = next((d for d in pending if d.prev_version == m.state_version), None)
                if nxt is None:
                    break
                pending.remove(nxt)
                self._apply_delta(m, nxt, now)
            if pending is not None:
                pending[:] = [d for d in pending if d.version > m.state_version]
        else:
            if m.pending is None:
                m.pending = []
            if len(m.pending) < _MAX_PENDING_DELTAS:
                m.pending.append(msg)
            self._check_state_lag(m, now)

    def _apply_delta(self, m: Member, msg: StateDelta, now: float) -> None:
        if msg.prev_version == -1:
            new = {k: v for k, v in msg.changes.items() if v is not None}
        else:
            new = dict(m.state)
            for k, v in msg.changes.items():
                if v is None:
                    new.pop(k, None)
                else:
                    new[k] = v
        size = codec.state_size(new)
        if size > self.cfg.max_state_bytes:
            # no member publishes that much (set_state refuses it): left at the version
            # before, the owner's own state is asked for (state_repair_delay)
            self.stats.drop("state_size")
            m.pending = None
            self._check_state_lag(m, now)
            return
        m.state = new
        m.state_bytes = size
        m.state_version = msg.version
        self._queue.enqueue(m.name, bq.STATE, codec.encode(msg), sub=msg.version,
                            full=msg.prev_version == -1)
        self._arm_gossip(now)
        self._emit(EventKind.UPDATE, m, now)

    def _is_ours(self, msg: StateDelta) -> bool:
        """Whether a delta of our own state says what our state says."""
        state = self.me.state
        if msg.prev_version == -1 and msg.changes.keys() - state.keys():
            return False
        return all(state.get(k, None) == v for k, v in msg.changes.items())

    def _reassert_state(self, seen: int, now: float) -> None:
        """Others hold a newer version of our state (from an earlier life): overwrite it."""
        top = self.cfg.counter_limit - self.cfg.max_state_bytes  # room for its deltas
        self.me.state_version = max(self.me.state_version, min(seen, top))
        self._publish_changes(dict(self.me.state), now, full=True)

    def _check_state_lag(self, m: Member, now: float) -> None:
        """Ask the owner for its state if we still lag after ``state_repair_delay``."""
        if m.announced_version > m.state_version and m.status in _LIVE and now >= m.repair_at:
            m.repair_at = now + self.cfg.state_repair_delay
            self._timers.at(m.repair_at, self._repair_state, m)

    def _repair_state(self, m: Member, now: float) -> None:
        if (self.members.get(m.name) is not m or m.announced_version <= m.state_version
                or m.status not in _LIVE):
            return
        bucket = self._repair_bucket
        if not bucket.take(now):  # repairs are coming faster than they are allowed
            self.stats.repairs_delayed += 1
            m.repair_at = now + bucket.wait() + self.rng.random() / bucket.rate
            self._timers.at(m.repair_at, self._repair_state, m)
            return
        self.stats.repairs += 1
        m.repair_at = now + self.cfg.state_repair_delay * 4
        self._out.append(Stream(m.addr, self._push_pull_message(join=False), "repair"))

    # --- anti-entropy and joining ------------------------------------------------------------

    def _push_pull_interval(self) -> float:
        n = self._n_live
        base = self.cfg.push_pull_interval
        if n <= 32:
            return base
        return base * (math.ceil(math.log2(n) - math.log2(32)) + 1)

    def _own_push_pull(self) -> PushPull:
        """A digest-first exchange: our own record (first) and a digest of our view."""
        me = self.me
        own = MemberRecord(me.name, me.addr[0], me.addr[1], me.incarnation, int(me.status),
                           me.state_version, me.state)
        return PushPull(False, self.name, [own], self.digest(), self.user_events.clock)

    def _push_pull(self, _arg: object, now: float) -> None:
        peers = self._random_peers(1, (ALIVE,))
        if peers and not self._leaving:
            self._out.append(Stream(peers[0].addr, self._own_push_pull(), "sync"))
        self._timers.at(now + self._push_pull_interval(), self._push_pull)

    def _reconnect(self, _arg: object, now: float) -> None:
        peers = self._random_peers(1, (DEAD,))
        if peers and not self._leaving:
            self._out.append(Stream(peers[0].addr, self._push_pull_message(join=False), "reconnect"))
        self._timers.at(now + self.cfg.reconnect_interval, self._reconnect)

    def _push_pull_message(self, *, join: bool, states: bool = True) -> PushPull:
        """Every member; with their node states, or (``states=False``) only our own, and a
        digest of our view. Node states are left out (but ours) when they would make the
        frame larger than ``max_stream_frame``: their owners send them."""
        if states:
            size = sum(m.state_bytes + len(m.name) + len(m.addr[0]) + 40
                       for m in self.members.values())
            states = size <= self.cfg.max_stream_frame * 0.9
        recs = [MemberRecord(m.name, m.addr[0], m.addr[1], m.incarnation, int(m.status),
                             m.state_version, m.state if states or m is self.me else None)
                for m in self.members.values()]
        return PushPull(join, self.name, recs, b"" if states else self.digest(),
                        self.user_events.clock)

    def _merge(self, msg: PushPull, now: float, *, src: Addr | None = None,
               trusted: bool = False) -> None:
        """Take in a peer's view: ``merge_batch`` members now, the rest on later ticks (at
        the same time), so that a large exchange never holds the caller for long."""
        first_hand = src is not None and any(r.name == msg.sender and r.host == src[0]
                                             for r in msg.members[:1])
        if not self.user_events.witness(msg.event_clock, trusted=trusted or first_hand):
            self.stats.drop("counter")
        records = deque(msg.members)
        if self._merge_backlog + len(records) > self.cfg.max_members:
            self.stats.drop("busy")  # exchanges arrive faster than they are taken in
            return
        self._merge_backlog += len(records)
        self._merging.append((records, msg.sender, trusted, src))
        self._merge_some(None, now)

    def _merge_some(self, _arg: object, now: float) -> None:
        self._merge_timer = None
        budget = self.cfg.merge_batch
        while self._merging and budget > 0:
            records, sender, trusted, src = self._merging[0]
            while records and budget > 0:
                r = records.popleft()
                budget -= 1
                self._merge_backlog -= 1
                self._merge_record(r, sender, trusted, src, now)
            if not records:
                self._merging.popleft()
        if self._merging and not self._stopped:
            # the next tick, not this one: the caller's other work runs in between
            self._merge_timer = self._timers.at(math.nextafter(now, math.inf), self._merge_some)

    def _merge_record(self, r: MemberRecord, sender: str, trusted: bool, src: Addr | None,
                      now: float) -> None:
        self.stats.merged += 1
        m = self.members.get(r.name)
        # the peer's own record, over a connection from its own host, is first-hand: taken
        # whatever the windows (a member that lagged behind catches up with it)
        own = r.name == sender and src is not None and src[0] == r.host
        trusted = trusted or own
        if m is not self.me and m is not None and r.status == m.status \
                and r.incarnation <= m.incarnation:
            pass  # we agree on the status
        elif r.status == ALIVE:
            self._on_alive(Alive(r.incarnation, r.name, r.host, r.port, r.state_version), now,
                           src=(r.host, r.port) if own else None, trusted=trusted)
        elif r.status == LEFT:
            self._on_dead(Dead(r.incarnation, r.name, r.name), now, trusted=trusted, src=src)
        else:
            # another member's "dead" makes us suspect, not declare (memberlist)
            self._on_suspect(Suspect(r.incarnation, r.name, sender, 0), now, trusted=trusted,
                             src=src)
        m = self.members.get(r.name)
        if m is None:
            return
        if m is self.me:
            if r.state_version > self.me.state_version and not self._leaving and \
                    self._held(m, r.state_version, m.state_version, trusted=trusted, now=now):
                self._reassert_state(r.state_version, now)
            return
        if r.state_version <= m.state_version or not self._held(
                m, r.state_version, max(m.state_version, m.announced_version), trusted=trusted,
                now=now):
            return
        size = codec.state_size(r.state) if r.state is not None else 0
        if r.state is None or size > self.cfg.max_state_bytes:
            if r.state is not None:
                self.stats.drop("state_size")
            m.announced_version = max(m.announced_version, r.state_version)
            self._check_state_lag(m, now)  # its owner will tell us
        else:
            m.state = dict(r.state)
            m.state_bytes = size
            m.state_version = r.state_version
            m.announced_version = max(m.announced_version, r.state_version)
            m.pending = None
            self._emit(EventKind.UPDATE, m, now)

    def _join_attempt(self, _arg: object, now: float) -> None:
        if self.joined or not self._join_seeds or self._stopped:
            return
        msg = self._push_pull_message(join=True)
        self._join_pending = len(self._join_seeds)
        for seed in self._join_seeds:
            self._out.append(Stream(seed, msg, "join"))

    def _join_result(self, ok: bool, now: float) -> None:
        if ok:
            self.joined = True
            return
        self._join_pending -= 1
        if self._join_pending <= 0 and not self.joined:
            self._timers.at(now + self._join_backoff, self._join_attempt)
            self._join_backoff = min(self._join_backoff * 2, self.cfg.join_retry_max)

    # --- dissemination -----------------------------------------------------------------------

    def _enqueue_member(self, msg: Alive | Dead, now: float) -> None:
        self._queue.enqueue(msg.name, bq.MEMBER, codec.encode(msg))
        self._arm_gossip(now)

    def _arm_gossip(self, now: float) -> None:
        """Schedule a gossip round on our fixed phase, and keep the queue bounded."""
        if self._queue.size > self.cfg.max_queue:
            self._queue.prune(self.cfg.max_queue)
        if self._gossip_timer is None and not self._stopped:
            iv = self.cfg.gossip_interval
            when = self._gossip_phase + math.ceil((now - self._gossip_phase) / iv) * iv
            self._gossip_timer = self._timers.at(max(when, now), self._gossip)

    def _enqueue_suspect(self, m: Member, sender: str, now: float) -> None:
        inc = m.incarnation
        s = m.suspicion

        def render(t: float) -> bytes:
            start = s.start if s is not None else t
            return codec.encode(Suspect(inc, m.name, sender, _age_ms(start, t)))

        refresh = render if self.cfg.shared_suspicion_clock else None
        self._queue.enqueue(m.name, bq.SUSPECT, render(now), sub=sender, refresh=refresh)
        self._arm_gossip(now)

    def _gossip(self, _arg: object, now: float) -> None:
        self._gossip_timer = None
        if not self._queue.size:
            return
        cfg = self.cfg
        peers = self._random_peers(cfg.gossip_nodes, _LIVE, dead_since=now - cfg.gossip_to_the_dead_time)
        for m in peers:
            if not self._send(m.addr, [], now):
                break
        if self._queue.size:
            self._arm_gossip(now + cfg.gossip_interval / 2)

    def _send(self, addr: Addr, first: list[bytes], now: float, *, reply: bool = False) -> bool:
        """Send ``first`` plus as many queued broadcasts as fit; False if nothing to send.

        Broadcasts go only to members (each transmission counts against the update's
        retransmit limit: a packet to an address that is no member's, a relayed ping or a
        confirmation ping, would waste them), and on replies (``reply``: acks and nacks,
        which whoever pings us decides) to one member at most once per probe interval, so
        that no member can drain our updates by pinging us often."""
        extra: list[bytes] = []
        if self._by_addr.get(addr) is not None and (not reply or self._may_piggyback(addr, now)):
            budget = self._budget - sum(len(b) for b in first)
            extra = self._queue.take(budget, 0, retransmit_limit(self.cfg.retransmit_mult,
                                                                 self._n_live), now)
        if not first and not extra:
            return False
        items = first + extra if extra else first
        for data in items:
            # the message code is the second byte of every encoded message array
            self.stats.sent[data[1]] += 1
            self.stats.sent_bytes[data[1]] += len(data)
        self._out.append(Send(addr, codec.pack(items)))
        return True

    def _may_piggyback(self, addr: Addr, now: float) -> bool:
        """Whether a reply to ``addr`` may carry broadcasts now (once per probe interval)."""
        last = self._replied.get(addr)
        if last is not None and now - last < self.cfg.probe_interval:
            return False
        if len(self._replied) >= self.cfg.max_members:
            self._replied.clear()
        self._replied[addr] = now
        return True

    def _random_peers(self, k: int, statuses: tuple[Status, ...], *, exclude: str = "",
                      dead_since: float | None = None) -> list[Member]:
        """Up to ``k`` distinct random members with one of ``statuses`` (memberlist's
        kRandomNodes: 3n random draws at most)."""
        peers = self._peers
        n = len(peers)
        out: list[Member] = []
        if not n:
            return out
        rand = self.rng.random
        for _ in range(3 * n):
            m = peers[int(rand() * n)]
            if m.name == exclude or m in out:
                continue
            if m.status in statuses or (dead_since is not None and m.status is DEAD
                                        and m.since >= dead_since):
                out.append(m)
                if len(out) >= k:
                    break
        return out

    def _emit(self, kind: EventKind, m: Member, now: float) -> None:
        self._out.append(MemberEvent(kind, m.name, m.addr, m.incarnation, now))

    def _flush(self) -> list[Effect]:
        out = self._out
        self._out = []
        return out


_MISSING = object()
_CODE_OF: dict[type, int] = {Ping: Code.PING, IndirectPing: Code.INDIRECT_PING, Ack: Code.ACK,
                             Nack: Code.NACK, Suspect: Code.SUSPECT, Alive: Code.ALIVE,
                             Dead: Code.DEAD, StateDelta: Code.STATE,
                             UserEvent: Code.USER_EVENT}
_EVENTS = "\0events"
"""The broadcast queue's key for user events (no member has this name)."""


def _age_ms(start: float, now: float) -> int:
    return max(0, min(int((now - start) * 1000), (1 << 32) - 1))


def _info(m: Member) -> MemberInfo:
    return MemberInfo(m.name, m.addr, m.status, m.incarnation, dict(m.state),
                      m.state_version, m.since)
