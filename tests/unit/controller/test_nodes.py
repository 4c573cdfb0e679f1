"""How long nodes known from before a controller started have to reconnect to it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from controller.nodes import RECONNECTS_PER_S, failover_grace_for


def test_a_small_cluster_gets_the_configured_grace() -> None:
    assert failover_grace_for(3, 15.0) == 15.0
    assert failover_grace_for(0, 15.0) == 15.0


def test_a_big_cluster_gets_the_time_its_agents_take_to_reconnect() -> None:
    assert failover_grace_for(5000, 15.0) == 5000 / RECONNECTS_PER_S == 100.0


@given(st.integers(0, 100_000), st.integers(0, 100_000), st.floats(0, 3600))
def test_the_grace_never_shrinks_as_the_cluster_grows(a: int, b: int, grace: float) -> None:
    small, big = sorted((a, b))
    assert grace <= failover_grace_for(small, grace) <= failover_grace_for(big, grace)
