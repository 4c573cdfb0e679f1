"""Balancing policies, without sockets: spread, weights, load awareness and determinism."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest

from agent.lb.policy import LeastConn, Maglev, PowerOfTwo, RoundRobin, make_policy


@dataclass(eq=False)
class Ep:
    name: str
    weight: int = 1
    active: int = 0


def eps(n: int, **weights: int) -> list[Ep]:
    return [Ep(f"e{i}", weights.get(f"e{i}", 1)) for i in range(n)]


def test_round_robin_takes_turns_in_order() -> None:
    members = eps(3)
    rr = RoundRobin[Ep]()
    rr.reset(members)
    assert [rr.pick(members, "").name for _ in range(6)] == ["e0", "e1", "e2"] * 2


def test_smooth_weighted_round_robin_interleaves_by_weight() -> None:
    members = [Ep("a", 5), Ep("b", 1), Ep("c", 1)]
    rr = RoundRobin[Ep]()
    rr.reset(members)
    seq = [rr.pick(members, "").name for _ in range(7)]
    assert seq == ["a", "a", "b", "a", "c", "a", "a"]  # nginx's example: no burst of five
    assert Counter(rr.pick(members, "").name for _ in range(700)) == {"a": 500, "b": 100, "c": 100}


def test_round_robin_picks_only_among_the_usable() -> None:
    members = eps(4)
    rr = RoundRobin[Ep]()
    rr.reset(members)
    usable = [members[1], members[3]]
    assert Counter(rr.pick(usable, "").name for _ in range(10)) == {"e1": 5, "e3": 5}


def test_least_conn_prefers_fewest_per_weight_and_rotates_ties() -> None:
    members = eps(3)
    lc = LeastConn[Ep]()
    lc.reset(members)
    members[0].active, members[1].active, members[2].active = 4, 1, 2
    assert lc.pick(members, "").name == "e1"
    members[1].weight = 1
    members[2].weight = 4  # 2 / 4 < 1 / 1
    assert lc.pick(members, "").name == "e2"
    for m in members:
        m.active, m.weight = 0, 1
    assert {lc.pick(members, "").name for _ in range(3)} == {"e0", "e1", "e2"}


def test_least_conn_spreads_simultaneous_connections_evenly() -> None:
    members = eps(4)
    lc = LeastConn[Ep]()
    for _ in range(40):
        lc.pick(members, "").active += 1
    assert [m.active for m in members] == [10, 10, 10, 10]


def test_p2c_is_deterministic_for_a_seed_and_never_picks_the_most_loaded() -> None:
    def run(seed: int) -> list[str]:
        members = eps(5)
        members[2].active = 100
        p = PowerOfTwo[Ep](random.Random(seed))
        return [p.pick(members, "").name for _ in range(200)]

    first = run(7)
    assert first == run(7)
    assert "e2" not in first
    assert set(first) == {"e0", "e1", "e3", "e4"}


def test_p2c_balances_connection_counts() -> None:
    members = eps(5)
    p = PowerOfTwo[Ep](random.Random(1))
    for _ in range(500):
        p.pick(members, "").active += 1
    counts = [m.active for m in members]
    assert max(counts) - min(counts) <= 3  # uniform random would spread by ~±20


def test_maglev_keeps_a_client_on_its_endpoint_and_spreads_clients() -> None:
    members = eps(4)
    mg = Maglev[Ep](4099)
    mg.reset(members)
    picks = {f"10.1.{i // 250}.{i % 250}": mg.pick(members, f"10.1.{i // 250}.{i % 250}").name
             for i in range(4000)}
    assert all(mg.pick(members, c).name == e for c, e in list(picks.items())[:200])
    shares = Counter(picks.values())
    assert all(900 <= shares[m.name] <= 1100 for m in members), shares


def test_maglev_moves_only_the_clients_of_an_unusable_endpoint() -> None:
    members = eps(5)
    mg = Maglev[Ep](4099)
    mg.reset(members)
    clients = [f"192.0.2.{i}" for i in range(250)] + [f"198.51.100.{i}" for i in range(250)]
    before = {c: mg.pick(members, c) for c in clients}
    usable = [m for m in members if m.name != "e3"]
    after = {c: mg.pick(usable, c) for c in clients}
    for c in clients:
        if before[c].name != "e3":
            assert after[c] is before[c]
        else:
            assert after[c].name != "e3"
    moved = Counter(after[c].name for c in clients if before[c].name == "e3")
    assert len(moved) >= 3  # e3's clients spread over the others, not onto one


def test_maglev_table_is_the_same_whatever_order_the_endpoints_come_in() -> None:
    a, b = Maglev[Ep](1021), Maglev[Ep](1021)
    members = eps(6)
    a.reset(members)
    b.reset(list(reversed(members)))
    assert [a.pick(members, f"c{i}").name for i in range(100)] == \
        [b.pick(members, f"c{i}").name for i in range(100)]


def test_make_policy_names() -> None:
    rng = random.Random(0)
    for name, cls in (("round_robin", RoundRobin), ("least_conn", LeastConn), ("p2c", PowerOfTwo),
                      ("maglev", Maglev)):
        assert isinstance(make_policy(name, rng, maglev_table_size=1021), cls)
    with pytest.raises(ValueError, match="unknown balancing policy 'fastest'"):
        make_policy("fastest", rng)
