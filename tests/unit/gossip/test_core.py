"""The membership state machine, driven by hand: no sockets, no sleeping."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from orch.gossip import codec
from orch.gossip.config import GossipConfig
from orch.gossip.core import Effect, EventKind, MemberEvent, Membership, Send, Stream
from orch.gossip.messages import (
    Ack,
    Addr,
    Alive,
    Dead,
    IndirectPing,
    Nack,
    Ping,
    StateDelta,
    Status,
    Suspect,
)

ML = GossipConfig.memberlist()  # the numbers below are worked out at memberlist's timings


def addr(i: int) -> Addr:
    return (f"10.0.0.{i}", 7946)


def make(n_peers: int = 0, cfg: GossipConfig = ML, name: str = "me", seed: int = 1,
         state: dict[str, Any] | None = None) -> Membership:
    core = Membership(cfg, name=name, addr=addr(1), rng=random.Random(seed), now=0.0, state=state)
    core.preload([(f"p{i}", addr(i + 2)) for i in range(n_peers)], 0.0)
    core.tick(0.0)
    return core


def sent(effects: list[Effect]) -> list[tuple[Addr, Any]]:
    """Every message in every Send effect, decoded, with its destination."""
    out = []
    for e in effects:
        if isinstance(e, Send):
            for raw in codec.decode_payload(e.payload):
                out.append((e.addr, codec.decode_message(raw)))
    return out


def of_type(effects: list[Effect], cls: type) -> list[tuple[Addr, Any]]:
    return [(a, m) for a, m in sent(effects) if isinstance(m, cls)]


def events(effects: list[Effect], kind: EventKind | None = None) -> list[MemberEvent]:
    return [e for e in effects if isinstance(e, MemberEvent) and (kind is None or e.kind is kind)]


def run_until(core: Membership, t: float, *, answer: bool = True) -> list[Effect]:
    """Run the core's timers up to ``t``; with ``answer``, every peer acks its pings."""
    out: list[Effect] = []
    while core.next_deadline() <= t:
        now = core.next_deadline()
        effects = core.tick(now)
        out += effects
        if answer:
            for _, m in of_type(effects, Ping):
                out += core.receive(addr(99), Ack(m.seq), now)
    return out


def test_ping_is_acked_with_its_sequence_number() -> None:
    core = make()
    effects = core.receive(addr(9), Ping(7, "me", "x"), 0.0)
    assert [(a, m.seq) for a, m in of_type(effects, Ack)] == [(addr(9), 7)]


def test_ping_for_someone_else_is_ignored() -> None:
    core = make()
    assert of_type(core.receive(addr(9), Ping(7, "other", "x"), 0.0), Ack) == []
    assert core.stats.dropped == {"misdirected": 1}


def test_failed_probe_goes_indirect_then_suspects_and_lowers_health() -> None:
    core = make(n_peers=5)
    effects: list[Effect] = []
    while not of_type(effects, Ping):
        effects = core.tick(core.next_deadline())
    ((target_addr, ping),) = of_type(effects, Ping)
    t0 = core.next_deadline() - ML.probe_timeout  # the probe timeout is the next timer
    indirect = of_type(run_until(core, t0 + ML.probe_timeout, answer=False), IndirectPing)
    assert len(indirect) == ML.indirect_checks
    assert all(m.target == ping.target and m.nack and a != target_addr for a, m in indirect)
    # one of the three intermediaries answers with a nack, the others stay silent
    core.receive(indirect[0][0], Nack(ping.seq), t0 + 0.8)
    effects = run_until(core, t0 + ML.probe_interval, answer=False)
    (ev,) = events(effects, EventKind.SUSPECT)
    assert ev.name == ping.target
    assert core.member(ping.target).status is Status.SUSPECT  # type: ignore[union-attr]
    assert core.awareness.score == 2  # two missing nacks: the fault may be ours
    assert core.stats.probe_failures == 1


def test_acked_probe_keeps_the_target_alive_and_improves_health() -> None:
    core = make(n_peers=3)
    core.awareness.apply(3)
    effects: list[Effect] = []
    while not of_type(effects, Ping):
        effects = core.tick(core.next_deadline())
    ((_, ping),) = of_type(effects, Ping)
    started = core.next_deadline() - ML.probe_timeout * 4  # timeouts are scaled by health
    core.receive(addr(99), Ack(ping.seq), started + 0.01)
    effects = run_until(core, started + ML.probe_interval * 4, answer=False)  # this probe's end
    assert events(effects, EventKind.SUSPECT) == []
    assert of_type(effects, IndirectPing) == []
    assert core.awareness.score == 2
    assert list(core.stats.rtt_samples) == [pytest.approx(0.01)]


def test_relay_forwards_acks_and_nacks_silence() -> None:
    core = make(n_peers=2)
    effects = core.receive(addr(5), IndirectPing(41, "p0", *addr(2), True, "x"), 0.0)
    ((dest, ping),) = of_type(effects, Ping)
    assert dest == addr(2)
    assert ping.target == "p0"
    # the target answers: the requester gets an ack carrying its own sequence number
    acks = of_type(core.receive(addr(2), Ack(ping.seq), 0.1), Ack)
    assert acks == [(addr(5), Ack(41))]
    # a second request to a silent target: a nack before the requester's probe ends
    effects = core.receive(addr(5), IndirectPing(42, "p1", *addr(3), True, "x"), 1.0)
    nacks = of_type(run_until(core, 1.0 + ML.probe_timeout, answer=False), Nack)
    assert nacks == [(addr(5), Nack(42))]


def test_suspicion_without_confirmations_lasts_the_maximum() -> None:
    core = make(n_peers=9)  # N = 10: min = 4 * 1 * 1 s, max = 6 * min, k = 2
    core.receive(addr(5), Suspect(0, "p1", "p2"), 0.0)
    assert events(run_until(core, 23.9), EventKind.DEAD) == []
    (dead,) = events(run_until(core, 24.1), EventKind.DEAD)
    assert dead.name == "p1"
    assert dead.time == pytest.approx(24.0)


def test_confirmations_shrink_the_timeout_to_the_minimum() -> None:
    core = make(n_peers=9)
    core.receive(addr(5), Suspect(0, "p1", "p2"), 0.0)
    core.receive(addr(6), Suspect(0, "p1", "p3"), 1.0)
    core.receive(addr(7), Suspect(0, "p1", "p4"), 2.0)
    gossiped = run_until(core, 3.0)
    (dead,) = events(gossiped + run_until(core, 10), EventKind.DEAD)
    assert dead.time == pytest.approx(4.0)
    # every accusation was passed on: one notice per accuser
    assert {m.sender for _, m in of_type(gossiped, Suspect) if m.name == "p1"} == {"p2", "p3", "p4"}


def test_shared_suspicion_clock_ends_every_timer_together() -> None:
    core = make(n_peers=9)
    # the first accuser has suspected p1 for 0.8 s already; two confirmations follow
    core.receive(addr(5), Suspect(0, "p1", "p2", 800), 10.0)
    core.receive(addr(6), Suspect(0, "p1", "p3", 800), 10.0)
    core.receive(addr(7), Suspect(0, "p1", "p4", 800), 10.0)
    (dead,) = events(run_until(core, 20), EventKind.DEAD)
    assert dead.time == pytest.approx(13.2)  # started at 9.2, minimum 4 s


@pytest.mark.parametrize("age_ms", [3000, 2**32 - 1])
def test_a_suspicion_lasts_its_floor_whatever_age_it_claims(age_ms: int) -> None:
    """A notice claiming its suspicion is old (or older than any timeout) cannot end it
    before the suspect had suspicion_floor x the minimum timeout to refute."""
    core = make(n_peers=9)
    for accuser in ("p2", "p3", "p4"):
        core.receive(addr(5), Suspect(0, "p1", accuser, age_ms), 10.0)
    (dead,) = events(run_until(core, 20), EventKind.DEAD)
    assert dead.time == pytest.approx(10.0 + ML.suspicion_floor * 4.0)


def test_plain_swim_has_a_fixed_timeout() -> None:
    core = make(n_peers=9, cfg=ML.replace(lifeguard=False, shared_suspicion_clock=False))
    core.receive(addr(5), Suspect(0, "p1", "p2", 3000), 0.0)
    (dead,) = events(run_until(core, 30), EventKind.DEAD)
    assert dead.time == pytest.approx(4.0)


def test_a_suspect_that_refutes_is_alive_again() -> None:
    core = make(n_peers=9)
    core.receive(addr(5), Suspect(0, "p1", "p2"), 0.0)
    effects = core.receive(addr(3), Alive(1, "p1", *addr(3)), 1.0)
    assert [e.name for e in events(effects, EventKind.ALIVE)] == ["p1"]
    assert events(run_until(core, 100), EventKind.DEAD) == []


@pytest.mark.parametrize("accusation", [Suspect(0, "me", "p1"), Dead(0, "me", "p1")])
def test_a_member_refutes_accusations_about_itself(accusation: Suspect | Dead) -> None:
    core = make(n_peers=3)
    core.receive(addr(2), accusation, 0.0)
    assert core.incarnation == 1
    assert core.stats.refutations == 1
    effects = run_until(core, 1.0)
    assert any(m.name == "me" and m.incarnation == 1 for _, m in of_type(effects, Alive))
    assert core.member("me").status is Status.ALIVE  # type: ignore[union-attr]


def test_stale_accusations_are_ignored() -> None:
    core = make(n_peers=3)
    core.receive(addr(2), Suspect(0, "me", "p1"), 0.0)
    core.receive(addr(2), Suspect(0, "me", "p1"), 0.1)  # incarnation 0 < 1 now
    assert core.incarnation == 1


def test_dead_member_comes_back_with_a_higher_incarnation() -> None:
    core = make(n_peers=3)
    core.receive(addr(3), Alive(3, "p0", *addr(2)), 0.0)
    core.receive(addr(3), Dead(3, "p0", "p1"), 0.0)  # another's verdict: a suspicion here
    assert core.member("p0").status is Status.SUSPECT  # type: ignore[union-attr]
    (dead,) = events(run_until(core, 30.0), EventKind.DEAD)
    assert dead.name == "p0"
    assert events(core.receive(addr(2), Alive(3, "p0", *addr(2)), 31.0)) == []
    (join,) = events(core.receive(addr(2), Alive(4, "p0", *addr(2)), 32.0), EventKind.JOIN)
    assert join.incarnation == 4


def test_an_accusation_above_the_incarnation_held_is_refused() -> None:
    """Only a member itself moves its incarnation up: an accusation above the one held is
    a liar's (its refutation could be past the window)."""
    core = make(n_peers=3)
    core.receive(addr(3), Suspect(1, "p0", "p1"), 0.0)
    assert core.member("p0").status is Status.ALIVE  # type: ignore[union-attr]
    assert core.stats.dropped["counter"] == 1


def test_a_death_notice_from_another_member_is_a_suspicion_until_its_floor() -> None:
    """One member cannot declare another dead alone: its notice starts (or confirms) a
    suspicion here, which the suspect can refute; once this member has suspected for its
    floor, others' verdicts are taken at once."""
    core = make(n_peers=9)
    effects = core.receive(addr(3), Dead(0, "p0", "p1"), 0.0)
    assert [e.kind for e in events(effects)] == [EventKind.SUSPECT]
    assert events(core.receive(addr(3), Alive(1, "p0", *addr(2)), 0.5), EventKind.ALIVE)
    core.receive(addr(4), Suspect(1, "p0", "p2"), 1.0)
    assert events(core.receive(addr(5), Dead(1, "p0", "p3"), 1.1)) == []  # too early
    (dead,) = events(core.receive(addr(5), Dead(1, "p0", "p3"),
                                  1.0 + ML.suspicion_floor * 4.0), EventKind.DEAD)
    assert dead.name == "p0"


def test_graceful_leave_is_left_not_dead() -> None:
    leaver = make(n_peers=3, name="me")
    effects = leaver.leave(0.0)
    notices = of_type(effects, Dead)
    assert notices
    assert all(m.name == m.sender == "me" for _, m in notices)
    other = make(n_peers=0, name="other")
    other.receive(addr(1), Alive(0, "me", *addr(1)), 0.0)
    (ev,) = events(other.receive(addr(1), notices[0][1], 0.1), EventKind.LEFT)
    assert ev.name == "me"
    assert other.member("me").status is Status.LEFT  # type: ignore[union-attr]


def test_another_address_cannot_take_a_live_members_name() -> None:
    core = make(n_peers=2)
    (ev,) = events(core.receive(addr(9), Alive(5, "p0", *addr(9)), 0.0))
    assert ev.kind is EventKind.CONFLICT
    assert core.member("p0").addr == addr(2)  # type: ignore[union-attr]


def test_dead_and_left_members_are_reaped_after_their_own_timeouts() -> None:
    core = make(n_peers=2, cfg=ML.replace(reconnect_timeout=60.0, tombstone_timeout=120.0))
    core.receive(addr(2), Dead(0, "p0", "p1"), 0.0)  # p0 is accused: dead 4 s later
    core.receive(addr(3), Dead(0, "p1", "p1"), 0.0)  # p1 left
    run_until(core, 63.0)
    assert core.member("p0").status is Status.DEAD  # type: ignore[union-attr]
    run_until(core, 65.0)
    assert core.member("p0") is None
    assert core.member("p1") is not None  # a tombstone lasts longer
    run_until(core, 121.0)
    assert core.member("p1") is None


def test_join_exchanges_state_and_both_sides_learn_each_other() -> None:
    a = make(name="a", state={"role": "agent"})
    b = Membership(ML, name="b", addr=addr(2), rng=random.Random(2), now=0.0, state={"role": "controller"})
    (stream,) = [e for e in a.join([addr(2)], 0.0) if isinstance(e, Stream)]
    assert stream.purpose == "join"
    assert stream.message.join
    reply, b_effects = b.stream_request(addr(1), stream.message, 0.01)
    a_effects = a.stream_done(stream, reply, 0.02)
    assert [e.name for e in events(a_effects, EventKind.JOIN)] == ["b"]
    assert [e.name for e in events(b_effects, EventKind.JOIN)] == ["a"]
    assert a.member("b").state == {"role": "controller"}  # type: ignore[union-attr]
    assert b.member("a").state == {"role": "agent"}  # type: ignore[union-attr]
    assert a.joined


def test_join_retries_with_backoff_until_a_seed_answers() -> None:
    cfg = ML.replace(join_retry_min=1.0, join_retry_max=4.0)
    a = make(name="a", cfg=cfg)
    attempts = []
    effects = a.join([addr(2), addr(3)], 0.0)
    now = 0.0
    for _ in range(5):
        streams = [e for e in effects if isinstance(e, Stream)]
        assert len(streams) == 2
        attempts.append(now)
        for s in streams:
            a.stream_done(s, None, now)
        effects = []
        while not any(isinstance(e, Stream) and e.purpose == "join" for e in effects):
            now = a.next_deadline()
            effects = a.tick(now)
    gaps = [round(b - a_, 3) for a_, b in itertools.pairwise(attempts)]
    assert gaps == [1.0, 2.0, 4.0, 4.0]


def test_state_deltas_apply_in_order_and_repair_gaps() -> None:
    core = make(n_peers=2)
    core.receive(addr(2), StateDelta("p0", 0, 1, {"a": 1}), 0.0)
    (ev,) = events(core.receive(addr(2), StateDelta("p0", 1, 2, {"b": 2, "a": None}), 0.1))
    assert ev.kind is EventKind.UPDATE
    assert core.member("p0").state == {"b": 2}  # type: ignore[union-attr]
    # version 3 is lost; 4 arrives and waits
    core.receive(addr(2), StateDelta("p0", 3, 4, {"d": 4}), 1.0)
    assert core.member("p0").state == {"b": 2}  # type: ignore[union-attr]
    # if 3 never comes, we ask the owner for a full exchange
    repairs = [e for e in run_until(core, 1.0 + ML.state_repair_delay)
               if isinstance(e, Stream) and e.purpose == "repair"]
    assert [r.addr for r in repairs] == [addr(2)]
    # when 3 arrives late, 3 and 4 both apply
    core.receive(addr(2), StateDelta("p0", 2, 3, {"c": 3}), 2.0)
    info = core.member("p0")
    assert info is not None
    assert info.state == {"b": 2, "c": 3, "d": 4}
    assert info.state_version == 4


def test_own_state_spreads_as_deltas_that_fit_in_packets() -> None:
    core = make(n_peers=5)
    big = {f"key{i:03d}": "v" * 100 for i in range(60)}  # ~6 KB: many packets
    core.set_state(big, 0.0)
    receiver = make(n_peers=0, name="r")
    receiver.receive(addr(1), Alive(0, "me", *addr(1)), 0.0)
    now = 0.0
    for _ in range(200):
        now = core.next_deadline()
        for e in core.tick(now):
            if isinstance(e, Send):
                assert len(e.payload) + codec.envelope_overhead("") <= ML.packet_size
                receiver.receive_packet(addr(1), e.payload, now)
    assert receiver.member("me").state == big  # type: ignore[union-attr]


def test_a_member_overrides_state_left_by_an_earlier_life() -> None:
    core = make(n_peers=2, state={"v": "new"})
    # a peer still spreads our state version 7 from before a restart
    core.receive(addr(2), StateDelta("me", 6, 7, {"v": "old"}), 0.0)
    assert core.member("me").state_version > 7  # type: ignore[union-attr]
    fulls = [m for _, m in of_type(run_until(core, 1.0), StateDelta) if m.prev_version == -1]
    assert fulls
    assert fulls[-1].changes == {"v": "new"}


def test_malformed_input_is_counted_not_raised() -> None:
    core = make(n_peers=2)
    assert core.receive_packet(addr(2), b"\xc1garbage", 0.0) == []
    bad_then_good = codec.pack([b"\x92\x01\xc3", codec.encode(Ping(5, "me", "x"))])
    acks = of_type(core.receive_packet(addr(2), bad_then_good, 0.0), Ack)
    assert [m.seq for _, m in acks] == [5]
    assert sum(core.stats.dropped.values()) == 2


def _joined_pair() -> tuple[Membership, Membership]:
    a = make(name="a", state={"role": "agent"})
    b = Membership(ML, name="b", addr=addr(2), rng=random.Random(2), now=0.0,
                   state={"role": "controller"})
    (stream,) = [e for e in a.join([addr(2)], 0.0) if isinstance(e, Stream)]
    reply, _ = b.stream_request(addr(1), stream.message, 0.01)
    a.stream_done(stream, reply, 0.02)
    return a, b


def _sync(core: Membership, t: float) -> Stream:
    """Run ``core`` (its peers ack every ping) until it starts a periodic sync."""
    while True:
        now = core.next_deadline()
        assert now <= t, "no sync before the deadline"
        effects = core.tick(now)
        for _, m in of_type(effects, Ping):
            core.receive(addr(99), Ack(m.seq), now)
        syncs = [e for e in effects if isinstance(e, Stream) and e.purpose == "sync"]
        if syncs:
            return syncs[0]


def test_periodic_sync_sends_a_digest_and_an_empty_answer_when_views_match() -> None:
    a, b = _joined_pair()
    assert a.digest() == b.digest()
    s = _sync(a, 100.0)
    assert [r.name for r in s.message.members] == ["a"]  # only itself, and its digest
    assert s.message.digest == a.digest()
    reply, _ = b.stream_request(addr(1), s.message, 40.0)
    assert reply.members == []
    assert reply.digest == b.digest()
    assert b.stats.syncs_in_step == 1
    assert not [e for e in a.stream_done(s, reply, 40.0) if isinstance(e, Stream)]


def test_sync_with_differing_views_sends_members_without_states_and_owners_fill_in() -> None:
    a, b = _joined_pair()
    b.set_state({"rack": "r1"}, 1.0)  # b's state moves on; a has not heard (no gossip here)
    s = _sync(a, 100.0)
    reply, _ = b.stream_request(addr(1), s.message, 40.0)
    assert {r.name: r.state is None for r in reply.members} == {"a": True, "b": False}
    a.stream_done(s, reply, 40.0)
    assert a.member("b").state == {"role": "controller", "rack": "r1"}  # type: ignore[union-attr]
    assert a.digest() == b.digest()


def test_sync_that_finds_the_peer_behind_follows_with_a_full_exchange() -> None:
    a, b = _joined_pair()
    a.receive(addr(3), Alive(1, "c", "10.0.0.3", 7946), 1.0)  # only a knows c
    s = _sync(a, 100.0)
    reply, _ = b.stream_request(addr(1), s.message, 40.0)
    follow = [e for e in a.stream_done(s, reply, 40.0) if isinstance(e, Stream)]
    assert [f.purpose for f in follow] == ["sync-full"]
    assert all(r.state is not None for r in follow[0].message.members)
    b.stream_request(addr(1), follow[0].message, 40.1)
    # b heard of c from a: c counts once it answers b's ping
    assert b.member("c") is None
    assert b.candidates == 1
    ((to, ping),) = [(t, m) for t, m in of_type(run_until(b, 40.2, answer=False), Ping)
                     if m.target == "c"]
    assert to == ("10.0.0.3", 7946)
    (join,) = events(b.receive(to, Ack(ping.seq), 40.3), EventKind.JOIN)
    assert join.name == "c"
    assert b.member("c") is not None
