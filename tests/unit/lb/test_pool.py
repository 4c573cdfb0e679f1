"""A service's pool: local preference, retries past tried endpoints, ejection, removal."""

from __future__ import annotations

import random

import pytest

from agent.lb.config import LbConfig
from agent.lb.model import Endpoint
from agent.lb.pool import Pool
from orch.errors import ConfigError


def ep(i: int, *, local: bool = False, weight: int = 1) -> Endpoint:
    return Endpoint(alloc_id=f"a{i}", node="n1" if local else "n2", host=f"10.0.0.{i}", port=80,
                    local=local, weight=weight)


def pool(*eps: Endpoint, policy: str = "round_robin", **cfg: object) -> Pool:
    p = Pool(policy, LbConfig(**cfg), random.Random(1))  # type: ignore[arg-type]
    p.set_endpoints(eps)
    return p


def pick(p: Pool, now: float) -> str:
    b = p.choose("c", now)
    assert b is not None
    return b.name


def test_local_endpoints_first_while_one_is_usable() -> None:
    p = pool(ep(1), ep(2, local=True), ep(3), outlier_consecutive_failures=1)
    assert {pick(p, 0.0) for _ in range(6)} == {"10.0.0.2:80"}
    local = p.by_name["10.0.0.2:80"]
    assert p.failed(local, 0.0) is True
    assert {pick(p, 1.0) for _ in range(6)} == {"10.0.0.1:80", "10.0.0.3:80"}
    assert pick(p, 100.0) == "10.0.0.2:80"  # probed back in


def test_without_prefer_local_every_endpoint_takes_turns() -> None:
    p = pool(ep(1), ep(2, local=True), prefer_local=False)
    assert {pick(p, 0.0) for _ in range(4)} == {"10.0.0.1:80", "10.0.0.2:80"}


def test_retries_go_past_tried_ones_then_give_up() -> None:
    p = pool(ep(1, local=True), ep(2), ep(3))
    tried = {p.by_name["10.0.0.1:80"]}
    second = p.choose("c", 0.0, tried)
    assert second is not None
    assert second.name != "10.0.0.1:80"
    tried.add(second)
    third = p.choose("c", 0.0, tried)
    assert third is not None
    assert third not in tried
    tried.add(third)
    assert p.choose("c", 0.0, tried) is None


def test_when_every_endpoint_is_ejected_they_are_still_tried() -> None:
    p = pool(ep(1), ep(2), outlier_consecutive_failures=1, outlier_max_ejection_percent=100)
    for name in ("10.0.0.1:80", "10.0.0.2:80"):
        p.failed(p.by_name[name], 0.0)
    assert p.choose("c", 1.0) is not None


def test_removed_endpoints_drain_and_come_back_with_their_connections() -> None:
    p = pool(ep(1), ep(2))
    b2 = p.by_name["10.0.0.2:80"]
    b2.conns.add("conn")
    removed = p.set_endpoints([ep(1)])
    assert removed == [b2]
    assert b2.draining
    assert {pick(p, 0.0) for _ in range(4)} == {"10.0.0.1:80"}
    assert [s.state for s in p.endpoint_stats(0.0)] == ["healthy", "draining"]
    p.set_endpoints([ep(1), ep(2, weight=3)])
    assert p.by_name["10.0.0.2:80"] is b2
    assert not b2.draining
    assert b2.weight == 3
    assert b2.conns == {"conn"}


def test_policy_change_keeps_the_endpoints() -> None:
    p = pool(ep(1), ep(2), ep(3))
    p.set_policy("maglev")
    first = p.choose("192.0.2.7", 0.0)
    assert all(p.choose("192.0.2.7", 0.0) is first for _ in range(5))


@pytest.mark.parametrize(("field", "value"), [
    ("connect_timeout", 0), ("max_connections", 0), ("maglev_table_size", 65536),
    ("outlier_max_ejection_percent", 101), ("write_low_water", 10**9),
    ("udp_receive_buffer", 0), ("udp_receive_buffer", 2**30), ("udp_busy_backlog", 0),
    ("udp_busy_backlog", 4 * 1024 * 1024)])
def test_config_rejects_nonsense_naming_the_field(field: str, value: int) -> None:
    with pytest.raises(ConfigError, match=f"lb.{field}"):
        LbConfig(**{field: value})  # type: ignore[arg-type]


def test_prefer_nearest_sends_to_the_nearest_usable_endpoints() -> None:
    def far(i: int, rtt: float | None) -> Endpoint:
        return Endpoint(alloc_id=f"a{i}", node=f"n{i}", host=f"10.0.0.{i}", port=80, rtt=rtt)

    p = pool(far(1, 0.020), far(2, 0.0005), far(3, 0.0012), far(4, None), prefer_nearest=True,
             outlier_consecutive_failures=1)
    assert {pick(p, 0.0) for _ in range(6)} == {"10.0.0.2:80", "10.0.0.3:80"}  # within 1 ms
    for name in ("10.0.0.2:80", "10.0.0.3:80"):
        p.failed(p.by_name[name], 0.0)
    assert {pick(p, 1.0) for _ in range(4)} == {"10.0.0.1:80"}  # the next nearest
    off = pool(far(1, 0.020), far(2, 0.0005), prefer_nearest=False)
    assert {pick(off, 0.0) for _ in range(4)} == {"10.0.0.1:80", "10.0.0.2:80"}
