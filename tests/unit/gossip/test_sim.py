"""Many members on the simulator's fake clock and network: convergence, detection, healing."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from orch.gossip.config import GossipConfig
from orch.gossip.core import EventKind, MemberEvent
from orch.gossip.messages import Status, Suspect
from orch.gossip.sim import NetConfig, SimNode, Simulator
from orch.gossip.suspicion import min_suspicion_timeout

FAST = GossipConfig.fast()
LAN = GossipConfig.lan()


def record(sim: Simulator) -> list[tuple[float, str, MemberEvent]]:
    seen: list[tuple[float, str, MemberEvent]] = []

    def on_event(node: SimNode, ev: MemberEvent) -> None:
        seen.append((sim.now, node.name, ev))

    sim.on_event = on_event
    return seen


def test_members_joining_through_one_seed_converge() -> None:
    sim = Simulator(FAST, seed=3)
    sim.add_node("n00")
    for i in range(1, 20):
        sim.add_node(f"n{i:02d}", join=["n00"])
        sim.run_for(0.05)
    sim.run_for(3)
    assert sim.converged(expect_alive=20)


def test_a_crash_is_detected_by_everyone_at_the_minimum_suspicion_timeout() -> None:
    sim = Simulator(LAN, seed=4)
    sim.start_cluster(50)
    sim.run_for(20)
    seen = record(sim)
    crashed_at = sim.now
    sim.crash("n17")
    sim.run_for(30)
    dead = {obs: t - crashed_at for t, obs, ev in seen if ev.kind is EventKind.DEAD and ev.name == "n17"}
    assert set(dead) == {n.name for n in sim.live_nodes()}
    assert [ev for _, _, ev in seen if ev.kind is EventKind.DEAD and ev.name != "n17"] == []
    floor = min_suspicion_timeout(LAN.suspicion_mult, 50, LAN.probe_interval)
    # within one probe interval the coordinated schedule probes n17, the probe takes one more,
    # and the shared suspicion clock ends every member's timer together
    assert floor <= min(dead.values())
    assert max(dead.values()) <= floor + 2 * LAN.probe_interval + 0.2


def test_a_graceful_leave_is_never_taken_for_a_death() -> None:
    sim = Simulator(FAST, seed=5)
    sim.start_cluster(12)
    sim.run_for(2)
    seen = record(sim)
    sim.leave("n03")
    sim.run_for(10)
    left = {obs for _, obs, ev in seen if ev.kind is EventKind.LEFT and ev.name == "n03"}
    assert left == {n.name for n in sim.live_nodes()}
    assert not [ev for _, _, ev in seen if ev.kind in (EventKind.DEAD, EventKind.SUSPECT)]


def test_a_restarted_member_rejoins_with_a_higher_incarnation() -> None:
    sim = Simulator(FAST, seed=6)
    first, *_, victim = (n.name for n in sim.start_cluster(8))
    sim.run_for(2)
    sim.crash(victim)
    sim.run_for(10)
    assert all(n.core.members[victim].status is Status.DEAD for n in sim.live_nodes())
    sim.add_node(victim, join=[first])
    sim.run_for(5)
    assert sim.converged(expect_alive=8)
    reborn = sim.nodes[victim].core.incarnation
    assert reborn > 0
    assert {n.core.members[victim].incarnation for n in sim.live_nodes()} == {reborn}


def test_node_state_changes_reach_every_member() -> None:
    sim = Simulator(FAST, net=NetConfig(loss=0.05), seed=7)
    sim.start_cluster(30)
    sim.run_for(1)
    sim.set_state("n07", {"role": "controller", "rpc": "10.0.0.8:4647"})
    sim.run_for(3)
    sim.set_state("n07", {"rpc": None, "zone": "b"})
    sim.run_for(3)
    for n in sim.live_nodes():
        assert n.core.members["n07"].state == {"role": "controller", "zone": "b"}, n.name


@settings(max_examples=12)
@given(n=st.integers(4, 12), loss=st.floats(0.0, 0.25), seed=st.integers(0, 10_000))
def test_views_converge_once_loss_stops(n: int, loss: float, seed: int) -> None:
    sim = Simulator(FAST, net=NetConfig(loss=loss), seed=seed)
    sim.start_cluster(n)
    sim.run_for(20)
    sim.net.loss = 0.0
    sim.run_for(20)
    assert sim.converged(expect_alive=n)


@settings(max_examples=12)
@given(n=st.integers(4, 12), split=st.floats(0.2, 0.8), duration=st.floats(0.5, 30.0),
       seed=st.integers(0, 10_000))
def test_partitions_heal_by_themselves(n: int, split: float, duration: float, seed: int) -> None:
    sim = Simulator(FAST, seed=seed)
    nodes = [x.name for x in sim.start_cluster(n)]
    cut = max(1, min(n - 1, round(n * split)))
    sim.partition([nodes[:cut], nodes[cut:]])
    sim.run_for(duration)
    sim.heal()
    sim.run_for(30)
    assert sim.converged(expect_alive=n)


def test_a_rolling_restart_of_every_member_never_shows_a_live_one_dead_for_long() -> None:
    """memberlist#311: a wave of restarts (each member down 15 s, long enough to be declared
    dead; one every 3 s, through the whole cluster) must not leave a member that is back up
    shown dead for more than 30 s."""
    sim = Simulator(LAN, seed=11)
    names = [x.name for x in sim.start_cluster(30)]
    sim.run_for(5)
    up_since: dict[str, float] = dict.fromkeys(names, 0.0)
    dead_since: dict[tuple[str, str], float] = {}
    worst = 0.0
    deaths = 0

    def on_event(node: SimNode, ev: MemberEvent) -> None:
        nonlocal worst
        key = (node.name, ev.name)
        if ev.kind is EventKind.DEAD:
            nonlocal deaths
            deaths += 1
            dead_since[key] = sim.now
        elif ev.kind in (EventKind.JOIN, EventKind.ALIVE) and key in dead_since:
            began = max(dead_since.pop(key), up_since.get(ev.name, 0.0))
            worst = max(worst, sim.now - began)

    sim.on_event = on_event

    def crash(n: str) -> None:
        sim.crash(n)
        for key in [k for k in dead_since if k[0] == n]:  # what it saw died with it
            del dead_since[key]

    for i, name in enumerate(names):
        sim.call_at(sim.now + 3 * i, lambda n=name: crash(n))  # type: ignore[misc]

        def restart(n: str = name, i: int = i) -> None:
            up_since[n] = sim.now
            sim.add_node(n, join=[names[(i + 1) % len(names)]])
        sim.call_at(sim.now + 3 * i + 15, restart)
    sim.run_for(3 * len(names) + 60)
    assert deaths > 0  # the wave did make members dead
    assert sim.converged(expect_alive=30)
    stuck = [(o, m, sim.now - max(t, up_since[m])) for (o, m), t in dead_since.items()]
    assert not stuck, stuck
    assert worst <= 30.0, worst


def test_incarnations_do_not_wrap() -> None:
    """memberlist#358: incarnation numbers are unbounded integers on the wire up to 2**63."""
    sim = Simulator(FAST, seed=5)
    sim.start_cluster(3)
    me = sim.nodes["n0"].core.me
    for node in sim.nodes.values():  # every member knows n0 past any 32-bit counter
        node.core.members["n0"].incarnation = 2**32 + 5
    sim.run_for(1)
    for x in ("n1", "n2"):
        sim.nodes[x].core.receive(me.addr, Suspect(me.incarnation, "n0", x), sim.now)
    sim.run_for(5)
    assert sim.nodes["n0"].core.me.incarnation > 2**32 + 5
    assert all(sim.nodes[x].core.member("n0").status is Status.ALIVE  # type: ignore[union-attr]
               for x in ("n1", "n2"))


def test_a_members_own_delta_coming_back_is_not_news() -> None:
    """A member took its own latest delta, gossiped back to it by others, for a newer state
    from an earlier life and published its state again: every member with a node state
    gossiped it without end (about 4 versions a second each)."""
    sim = Simulator(LAN, seed=1)
    nodes = sim.start_cluster(20)
    for n in nodes:
        sim.set_state(n.name, {"role": "agent", "rpc": f"{n.addr[0]}:4648"})
    sim.run_for(30)
    assert {n.core.me.state_version for n in nodes} == {1}
    assert all(m.state_version == 1 for n in nodes for m in n.core.members.values())
