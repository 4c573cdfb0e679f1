"""A cluster of honest members (the real core, in the simulator) fed arbitrary and
adversarial messages by one hostile member, as hypothesis chooses them: saturated counters
and counters at the edges of the windows, accusations, forged node states, floods of
members, deep and large states, user events, push-pulls, raw bytes.

After every step, every honest member's tables are within their bounds, its counters
within the limit, what it would send decodes at a peer, and no call did more than a
bounded amount of work; no honest member is ever declared dead by another; and once the
hostile member stops, every honest member sees every other alive."""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from orch.errors import ProtocolError
from orch.gossip import codec
from orch.gossip.config import GossipConfig
from orch.gossip.core import EventKind, MemberEvent
from orch.gossip.messages import (
    Alive,
    Dead,
    IndirectPing,
    MemberRecord,
    Ping,
    PushPull,
    StateDelta,
    Status,
    Suspect,
    UserEvent,
)
from orch.gossip.sim import SimNode, Simulator
from tests.fuzz.targets import check_member

CFG = GossipConfig.fast(max_members=48, max_candidates=12, merge_batch=8,
                        max_state_bytes=2048, max_packet_messages=24, max_relays=8,
                        counter_limit=2**40, counter_window=500, verify_rate=50.0)
HONEST = ["n0", "n1", "n2", "n3", "n4"]
EVIL = ("10.66.0.1", 7946)
TOP = 2**63 - 1

counters = st.one_of(st.integers(0, 4), st.integers(CFG.counter_window - 3,
                                                    CFG.counter_window + 3),
                     st.sampled_from([CFG.counter_limit, CFG.counter_limit + 1, TOP]),
                     st.integers(0, TOP))
names = st.one_of(st.sampled_from([*HONEST, "evil"]),
                  st.text("abcdefxyz0123456789-", min_size=1, max_size=12))
hosts = st.one_of(st.sampled_from(["10.0.0.1", "10.0.0.3", "10.66.0.1", "10.9.9.9"]),
                  st.text("0123456789.", min_size=1, max_size=15))
ports = st.integers(1, 65535)
leaves = st.one_of(st.text(max_size=20), st.integers(-(2**63), 2**64 - 1), st.booleans(),
                 st.binary(max_size=20))


def nested(depth: int) -> st.SearchStrategy[Any]:
    return st.one_of(leaves, st.lists(leaves, max_size=3)) if depth <= 0 else \
        st.lists(nested(depth - 1), min_size=1, max_size=2)


values = st.one_of(leaves, st.integers(0, 14).flatmap(nested),
                   st.integers(0, 4000).map(lambda n: "x" * n))
states = st.dictionaries(st.text(max_size=10), st.one_of(st.none(), values), max_size=4)
messages = st.one_of(
    st.builds(Alive, counters, names, hosts, ports, counters),
    st.builds(Suspect, counters, names, names, st.integers(0, 2**32 - 1)),
    st.builds(Dead, counters, names, names),
    st.builds(StateDelta, names, st.one_of(st.just(-1), counters), counters, states),
    st.builds(UserEvent, counters, names, st.binary(max_size=64), st.booleans(), names),
    st.builds(Ping, st.integers(0, 2**20), names, names),
    st.builds(IndirectPing, st.integers(0, 2**20), names, hosts, ports, st.booleans(), names),
)
records = st.builds(MemberRecord, names, hosts, ports, counters, st.integers(0, 3), counters,
                    st.one_of(st.none(), states))


class HostileMember(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sim = Simulator(CFG, seed=7)
        self.sim.start_cluster(len(HONEST))
        self.sim.run_for(1.0)
        self.declared_dead: list[tuple[str, str]] = []
        self.sim.on_event = self._event

    def _event(self, node: SimNode, ev: MemberEvent) -> None:
        if ev.kind is EventKind.DEAD and ev.name in HONEST:
            self.declared_dead.append((node.name, ev.name))

    def _bounded(self, target: str, call: Any) -> None:
        core = self.sim.nodes[target].core
        before = core.stats.merged
        call()
        assert core.stats.merged - before <= CFG.merge_batch

    @rule(to=st.sampled_from(HONEST), msgs=st.lists(messages, min_size=1, max_size=30))
    def send(self, to: str, msgs: list[Any]) -> None:
        payload = codec.pack([codec.encode(m) for m in msgs])
        self._bounded(to, lambda: self.sim.deliver(to, EVIL, payload))

    @rule(to=st.sampled_from(HONEST), data=st.binary(max_size=300))
    def send_bytes(self, to: str, data: bytes) -> None:
        self._bounded(to, lambda: self.sim.deliver(to, EVIL, data))

    @rule(to=st.sampled_from(HONEST), recs=st.lists(records, max_size=40),
          join=st.booleans(), clock=counters)
    def push_pull(self, to: str, recs: list[MemberRecord], join: bool, clock: int) -> None:
        msg = PushPull(join, "evil", recs, b"", clock)
        try:  # what does not decode never reaches the member
            msg = codec.decode_push_pull(codec.encode(msg), self.sim.nodes[to].core.limits)
        except ProtocolError:
            return
        self._bounded(to, lambda: self.sim.exchange(to, EVIL, msg))

    @rule(seconds=st.floats(0.01, 1.0))
    def wait(self, seconds: float) -> None:
        self.sim.run_for(seconds)

    @invariant()
    def members_hold_their_bounds(self) -> None:
        for name in HONEST:
            core = self.sim.nodes[name].core
            check_member(core, core.stats.merged)

    @invariant()
    def no_honest_member_is_declared_dead(self) -> None:
        assert self.declared_dead == []

    def teardown(self) -> None:
        self.sim.run_for(10.0)  # the hostile member is silent now
        for name in HONEST:
            view = self.sim.nodes[name].core
            for other in HONEST:
                m = view.member(other)
                assert m is not None
                assert m.status is Status.ALIVE, (name, other, m.status)
        assert self.declared_dead == []


HostileMember.TestCase.settings = settings(max_examples=40, stateful_step_count=12,
                                           deadline=None)
test_a_hostile_member_cannot_break_the_honest_ones = HostileMember.TestCase


def test_an_accusation_at_the_window_edge_cannot_get_an_honest_member_declared_dead() -> None:
    """The hostile benchmark's false death: an accusation sent to the victim alone at its
    incarnation + window, then one at its incarnation (claiming the longest age) to a
    peer. The victim's refutation of the first must be one its peers take, or they keep
    the old incarnation, take the second accusation, and the victim never refutes it."""
    cfg = GossipConfig.lan(counter_window=500)
    sim = Simulator(cfg, seed=3)
    names = [x.name for x in sim.start_cluster(8)]
    evil, victim, peer = sim.nodes[names[-1]], names[0], names[1]
    dead: list[tuple[str, str]] = []
    sim.on_event = lambda node, ev: dead.append((node.name, ev.name)) \
        if ev.kind is EventKind.DEAD else None
    sim.run_for(5)
    inc = sim.nodes[peer].core.members[victim].incarnation
    w = cfg.counter_window
    sim.deliver(victim, evil.addr, codec.pack([codec.encode(Suspect(inc + w, victim, evil.name))]))
    sim.run_for(2)
    sim.deliver(peer, evil.addr, codec.pack([codec.encode(
        Suspect(inc, victim, evil.name, 2**32 - 1))]))
    sim.run_for(40)
    assert dead == []
    assert all(n.core.members[victim].status is Status.ALIVE for n in sim.nodes.values()
               if n.name != victim)
