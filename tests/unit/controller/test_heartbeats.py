"""How often the leader sends heartbeats down each agent's stream: every second with a
few agents, less often as more stream, so that heartbeats stay within a rate in all."""

from __future__ import annotations

from controller.api.node import (
    HEARTBEAT,
    HEARTBEAT_MAX,
    MAX_HEARTBEATS_PER_SECOND,
    heartbeat_interval,
)


def test_heartbeats_are_spaced_as_more_agents_stream() -> None:
    assert heartbeat_interval(0) == heartbeat_interval(1) == HEARTBEAT
    assert heartbeat_interval(int(MAX_HEARTBEATS_PER_SECOND)) == HEARTBEAT
    assert heartbeat_interval(5000) == 5000 / MAX_HEARTBEATS_PER_SECOND == 20.0
    assert heartbeat_interval(10**6) == HEARTBEAT_MAX
    for n in (300, 1000, 5000, 7000):  # the rate stays within its bound
        assert n / heartbeat_interval(n) <= MAX_HEARTBEATS_PER_SECOND
