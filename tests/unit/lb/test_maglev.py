"""Maglev tables: balance, weights, and near-minimal disruption when the endpoint set changes."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.lb.maglev import build_table, stable_hash

M = 65537


def names(ids: list[int]) -> list[str]:
    return sorted(f"10.0.{i // 200}.{i % 200 + 1}:8080" for i in ids)


def test_every_endpoint_owns_its_share_of_the_slots() -> None:
    n = names(list(range(7)))
    counts = Counter(build_table(n, [1] * 7, M))
    assert max(counts.values()) - min(counts.values()) <= 1


def test_weights_set_the_shares() -> None:
    n = names([1, 2, 3])
    counts = Counter(build_table(n, [1, 2, 5], M))
    for i, w in enumerate([1, 2, 5]):
        assert abs(counts[i] / M - w / 8) < 0.01


def test_tables_are_the_same_in_every_process() -> None:
    # Pinned values: a change here means agents of different versions would send the same
    # client to different endpoints.
    assert stable_hash(b"10.0.0.1:80", b"maglev-offset") == 0xEB3690E88823EE83
    assert build_table(["a:1", "b:1", "c:1"], [1, 1, 1], 7) == [0, 2, 1, 0, 2, 0, 1]


def moved(before_names: list[str], before: list[int], after_names: list[str], after: list[int]) -> float:
    return sum(1 for x, y in zip(before, after, strict=True)
               if before_names[x] != after_names[y]) / M


@settings(max_examples=25)
@given(ids=st.lists(st.integers(0, 10_000), min_size=2, max_size=24, unique=True),
       data=st.data())
def test_one_endpoint_more_or_less_moves_near_the_minimum(ids: list[int], data: st.DataObject) -> None:
    """Adding one endpoint to N must move at least 1/(N+1) of the clients (its share);
    Maglev moves little more. Removing one moves its 1/N and little else."""
    base = names(ids)
    n = len(base)
    table = build_table(base, [1] * n, M)

    extra = names([10_001 + data.draw(st.integers(0, 5000))])[0]
    grown = sorted([*base, extra])
    grown_table = build_table(grown, [1] * (n + 1), M)
    assert moved(base, table, grown, grown_table) <= 1 / (n + 1) * 1.15 + 0.002

    gone = data.draw(st.sampled_from(base))
    shrunk = [x for x in base if x != gone]
    shrunk_table = build_table(shrunk, [1] * (n - 1), M)
    assert moved(base, table, shrunk, shrunk_table) <= 1 / n * 1.15 + 0.002
