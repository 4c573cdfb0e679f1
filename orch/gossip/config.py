"""Gossip settings: every default written once, beside its meaning and formula.

The defaults are memberlist's ``DefaultLANConfig`` (``memberlist()``) except the
probe interval and timeout, 0.7 s and 0.35 s instead of 1 s and 0.5 s: with the
coordinated probe schedule and the shared suspicion clock this detects a crash at
N = 100 in 6.53 s (p50) / 7.10 s (p99) where memberlist's timings take 9.78 / 12.50 s,
with no live member declared dead at 5 % or 10 % loss or with 10 % of members slowed,
and 2 of 100 at 20 % loss (the simulator, ``python -m bench.gossip``; docs/benchmarks.md),
for 1.4x the probe traffic (about 20 B/member/s). ``fast()`` shortens every timing for
in-process tests on one machine (as Nomad's test server does).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

PROTOCOL_VERSION = 1
"""Wire protocol version carried in every packet and stream frame."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GossipConfig:
    # --- failure detection (SWIM) -------------------------------------------------------
    probe_interval: float = 0.7
    """Seconds between probes of one member (scaled up by local health, see awareness)."""
    probe_timeout: float = 0.35
    """Seconds to wait for a direct ack before asking ``indirect_checks`` members to probe."""
    indirect_checks: int = 3
    """Members asked to probe a target that missed its direct ack (ping-req)."""
    probe_schedule: Literal["coordinated", "shuffled"] = "coordinated"
    """How each member walks the others, one per probe interval, round-robin.

    shuffled: memberlist's walk over a locally shuffled list; a crashed member is
    first probed after an exponentially distributed wait (mean one interval,
    p99 4.6 intervals). coordinated: every member walks the same ring, sorted by
    name, with a shared shuffled sequence of offsets per epoch (seeded by the
    cluster label), so that in each interval every member is probed exactly once
    when views agree and clocks are within a fraction of an interval: the first
    probe of a crashed member comes within one interval. With differing views or
    clocks it degrades to a random walk, never below ``shuffled``'s guarantees.
    """

    # --- suspicion (Lifeguard) ----------------------------------------------------------
    suspicion_mult: int = 4
    """Minimum suspicion timeout = suspicion_mult * max(1, log10(N)) * probe_interval."""
    suspicion_max_timeout_mult: int = 6
    """Maximum suspicion timeout = suspicion_max_timeout_mult * minimum."""
    lifeguard: bool = True
    """Lifeguard: local health awareness, nacks, confirmations that shrink the suspicion
    timeout from its maximum towards its minimum (k = suspicion_mult - 2 confirmations),
    and the buddy system (a suspect learns it is suspected from its prober). False gives
    plain SWIM: a fixed timeout equal to the minimum, no nacks, no health scaling."""
    shared_suspicion_clock: bool = True
    """Suspect messages carry how long the suspicion has lasted, so every member's
    timer ends when the first suspector's does instead of a gossip delay later."""
    awareness_max_multiplier: int = 8
    """Local health score runs 0..max-1; probe interval and timeout scale by score+1."""
    nack_fraction: float = 0.8
    """An intermediary sends a nack when the target is silent for this fraction of its
    probe timeout, so the nack reaches the prober before its probe ends (Lifeguard)."""

    # --- dissemination ------------------------------------------------------------------
    gossip_interval: float = 0.2
    """Seconds between gossip rounds (only when something is queued)."""
    gossip_nodes: int = 3
    """Members each gossip round sends to (fan-out)."""
    retransmit_mult: int = 4
    """Each update is sent retransmit_mult * ceil(log10(N + 1)) times."""
    gossip_to_the_dead_time: float = 30.0
    """Dead members still receive gossip for this long, so that they can refute."""
    max_queue: int = 4096
    """Most updates waiting to be gossiped; beyond it the most-sent, oldest are dropped
    (push-pull repairs what they carried)."""
    packet_size: int = 1400
    """Largest UDP datagram sent, envelope and encryption included."""

    # --- anti-entropy and joining -------------------------------------------------------
    push_pull_interval: float = 30.0
    """Seconds between full state exchanges with one random member over TCP
    (scaled by ceil(log2(N) - log2(32)) + 1 above 32 members, as memberlist does)."""
    join_retry_min: float = 1.0
    """First wait before retrying the seeds when none answered; doubles each time."""
    join_retry_max: float = 30.0
    """Longest wait between join retries."""
    reconnect_interval: float = 30.0
    """Seconds between attempts to exchange state with one random member marked dead
    (not left), as Serf does, so that a partition heals by itself once the network does."""
    stream_timeout: float = 10.0
    """Seconds a TCP state exchange may take."""
    state_repair_delay: float = 1.0
    """Seconds a member's node state may lag behind what it announced before this member
    asks the owner for a full exchange."""
    state_repair_rate: float = 2.0
    """Repairs (a full exchange with the owner of a state this member lags behind) started
    per second, with a burst of twice as many. One repair brings the owner's whole view, so
    a member that lags many states catches up in a few; a hostile member announcing newer
    versions of every member's state cannot make this member exchange its whole view more
    often than this (at N = 100 such forgeries made members run 900 exchanges a second)."""

    # --- membership lifetime ------------------------------------------------------------
    reconnect_timeout: float = 24 * 3600.0
    """Seconds a dead member stays in the table, retried every ``reconnect_interval`` (so a
    long partition heals by itself), before it is forgotten (Serf's reconnect_timeout)."""
    tombstone_timeout: float = 24 * 3600.0
    """Seconds a member that left stays in the table as a tombstone (so that an old message
    cannot revive it) before it is forgotten (Serf's tombstone_timeout). Either kind comes
    back at any time with a higher incarnation."""
    leave_propagate_time: float = 1.0
    """Seconds a leaving member keeps gossiping its leave before it stops."""

    # --- network coordinates ----------------------------------------------------------------
    coordinates: bool = True
    """Vivaldi network coordinates from the probes' round-trip times (acks carry the prober's
    target's coordinate, ~30 bytes); each member keeps those of the members it probed."""

    # --- node state -----------------------------------------------------------------------
    max_state_bytes: int = 64 * 1024
    """Largest encoded node state a member may publish."""

    label: str = ""
    """Cluster label: packets with another label are dropped (several clusters, one network)."""

    # --- bounds on what arrives -------------------------------------------------------------
    # Every member, and anyone holding the gossip key, can send anything. What arrives is
    # bounded here so that one faulty or hostile member can neither break the protocol for
    # the others nor hold this member's event loop, memory or disk. Input past a bound is
    # dropped and counted by reason (``orch_gossip_dropped_total``), never fatal.
    counter_limit: int = 2**62
    """Largest incarnation, node-state version or user-event clock accepted; nothing larger
    is ever sent (a refutation stops at it). Every decoder takes values up to 2^63 - 1, so a
    counter at this limit plus one step is still decodable everywhere; a member that honestly
    counts one step per second reaches it in 10^11 years."""
    counter_window: int = 2**16
    """How far above the value this member holds another member's incarnation, node-state
    version or event clock may move in one message; past it, refused. Members move their
    own counters one step at a time, so a member that missed steps (days of refutations)
    catches up in steps, or first-hand: a suspected member whose refutation is past the
    window is asked for its own record over TCP. An accusation is taken only at the
    incarnation held (only its owner moves an incarnation up), and a member takes what is
    said of itself up to one step short of the window and refutes it one step above, which
    every peer holding its incarnation then takes. A hostile member has to send
    counter_limit / counter_window (2^46) messages to walk a counter to the limit."""
    max_members: int = 16_384
    """Members kept, tombstones included; a new member beyond it takes the place of the
    oldest dead or left one, or is refused when there is none. orch is sized for clusters
    of 10,000 members."""
    max_candidates: int = 1024
    """Members heard of from others and not yet confirmed by a ping (see
    ``verify_rate``); beyond it the oldest candidate is forgotten."""
    verify_rate: float = 200.0
    """Pings per second sent to confirm members heard of from others before they count (a
    member joining through a seed takes the seed's view as it is). A member joins the
    view of each other member once it answered one ping, so a hostile member cannot fill
    the probe ring with members that do not exist, and cannot make this member ping more
    than this many arbitrary addresses a second."""
    max_packet_messages: int = 128
    """Messages handled from one datagram; the rest are never decoded. A full 1400-byte
    packet carries at most about 100; a 64 KiB datagram from a hostile member is then
    handled in about a millisecond, however many messages it holds."""
    max_stream_frame: int = 8 * 1024 * 1024
    """Largest push-pull frame sent or accepted: a full exchange of 10,000 members with
    about 800 bytes of node state each. A full exchange that would be larger leaves node
    states out (their owners send them: see ``state_repair_delay``)."""
    max_streams_in: int = 8
    """Push-pull exchanges answered at once; a peer beyond them is closed at once (it
    retries later). Bounds the memory held by frames being read to 8 x max_stream_frame."""
    merge_batch: int = 256
    """Members of a push-pull merged per turn of the event loop (the rest on the next
    turns), so that no exchange holds the loop for long: a 10,000-member exchange takes
    40 turns of a few milliseconds each."""
    max_state_depth: int = 8
    """Deepest nesting of lists and maps inside a node state (the endpoints orch publishes
    use 2); a deeper one is refused, so that no reader of a state recurses without bound."""
    inbox_per_source: int = 16
    """Datagrams from one source waiting to be handled; beyond it the source's oldest is
    dropped. A member sends another a few datagrams per probe interval, so only a flood
    fills it, and sources are served one datagram each in turn: a flooding member cannot
    delay the pings and acks of the others (``orch.gossip.inbox``)."""
    inbox_size: int = 512
    """Datagrams waiting to be handled in all (at most 32 MiB of 64 KiB datagrams); beyond
    it the source with the most waiting loses its oldest."""
    max_relays: int = 256
    """Indirect probes relayed for others at once; more are refused. A member relays about
    ``indirect_checks`` for each failed probe in the cluster."""
    suspicion_floor: float = 0.75
    """Share of the minimum suspicion timeout that a suspicion lasts on this member after
    it first heard of it, whatever age its notices claim (shared suspicion clock) and
    whoever sends a death notice: a suspect always has that long to refute, however its
    accusers lie (a hostile member can also fake confirmations, which shorten a suspicion
    to the minimum itself). Below 1, members that heard of a suspicion a gossip delay late
    still end it together with the first suspector (N = 100: 4.2 s of the 5.6 s minimum,
    where a refutation spreads in about 1 s). A death notice from another member before
    then counts as a suspicion."""

    def __post_init__(self) -> None:
        problems = []
        if self.probe_interval <= 0:
            problems.append("probe_interval must be > 0")
        if not 0 < self.probe_timeout <= self.probe_interval:
            problems.append("probe_timeout must be > 0 and <= probe_interval")
        if self.suspicion_mult < 1 or self.suspicion_max_timeout_mult < 1:
            problems.append("suspicion multipliers must be >= 1")
        if self.gossip_interval <= 0 or self.gossip_nodes < 1:
            problems.append("gossip_interval must be > 0 and gossip_nodes >= 1")
        if not 512 <= self.packet_size <= 65000:
            problems.append("packet_size must be within 512..65000")
        if self.probe_schedule not in ("coordinated", "shuffled"):
            problems.append("probe_schedule must be coordinated or shuffled")
        if len(self.label.encode()) > 255:
            problems.append("label must be at most 255 bytes")
        if not 1 <= self.counter_window < self.counter_limit < 2**63 - 1:
            problems.append("counters need 1 <= counter_window < counter_limit < 2^63 - 1")
        for name in ("max_members", "max_candidates", "max_packet_messages", "max_streams_in",
                     "merge_batch", "max_state_depth", "max_relays", "inbox_per_source"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if self.inbox_size < self.inbox_per_source:
            problems.append("inbox_size must be >= inbox_per_source")
        for name in ("verify_rate", "state_repair_rate"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0")
        if self.max_stream_frame < 64 * 1024:
            problems.append("max_stream_frame must be >= 64 KiB")
        if not 0 <= self.suspicion_floor <= 1:
            problems.append("suspicion_floor must be within 0..1")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def lan(cls, **overrides: Any) -> GossipConfig:
        """orch's LAN timings: the defaults."""
        return cls(**overrides)

    @classmethod
    def memberlist(cls, **overrides: Any) -> GossipConfig:
        """memberlist's DefaultLANConfig timings (probe every 1 s, timeout 0.5 s)."""
        return cls(**{"probe_interval": 1.0, "probe_timeout": 0.5, **overrides})

    @classmethod
    def fast(cls, **overrides: Any) -> GossipConfig:
        """Short timings for tests with every member on one machine."""
        base: dict[str, Any] = dict(
            probe_interval=0.2, probe_timeout=0.1, suspicion_mult=3, gossip_interval=0.05,
            push_pull_interval=2.0, reconnect_interval=1.0, join_retry_min=0.1, join_retry_max=1.0,
            gossip_to_the_dead_time=5.0, stream_timeout=2.0, state_repair_delay=0.3,
            leave_propagate_time=0.3, reconnect_timeout=60.0, tombstone_timeout=60.0,
        )
        base.update(overrides)
        return cls(**base)

    def replace(self, **changes: Any) -> GossipConfig:
        return dataclasses.replace(self, **changes)
