"""The kernel data plane's commands (pure): few changes per update, nothing outside its table."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.lb import nft
from agent.lb.config import LbConfig
from agent.lb.dataplane import DataPlane
from agent.lb.kernel import kernel_capable
from agent.lb.model import Endpoint, ServiceSpec
from orch.vocab import lb_mode

TARGETS = [(f"10.0.{i // 250}.{i % 250 + 1}", 8000 + i % 7) for i in range(1200)]


def svc(slots: tuple[nft.Target, ...], *, policy: str = "round_robin", port: int = 80,
        remote: frozenset[nft.Target] = frozenset()) -> nft.KernelService:
    return nft.KernelService(key="default/web/web/web", protocol="tcp", port=port,
                             policy=policy, slots=slots, remote=remote)


@given(st.lists(st.integers(0, 40), unique=True, max_size=30),
       st.lists(st.integers(0, 40), unique=True, max_size=30))
def test_dense_slots_keep_endpoints_in_place(before: list[int], after: list[int]) -> None:
    old = nft.dense_slots((), [TARGETS[i] for i in before])
    new = nft.dense_slots(old, [TARGETS[i] for i in after])
    assert sorted(new) == sorted(TARGETS[i] for i in after)  # every endpoint once
    kept = set(old) & set(new)
    moved = [t for t in kept if old.index(t) != new.index(t)]
    removed = len(set(old) - set(new))
    assert len(moved) <= removed  # only endpoints filling a removed one's slot move


def test_one_endpoint_added_is_one_element_and_the_rule() -> None:
    old = svc(tuple(TARGETS[:1000]))
    new = svc(nft.dense_slots(old.slots, TARGETS[:1001]))
    cmds = nft.plan({"k": old}, {"k": new})
    assert [c.split()[0:2] for c in cmds] == [["add", "element"], ["flush", "chain"],
                                              ["add", "rule"]]
    assert f"{{ 1000 : {TARGETS[1000][0]} . {TARGETS[1000][1]} }}" in cmds[0]
    assert "numgen inc mod 1001" in cmds[2]


def test_one_endpoint_removed_moves_the_last_into_its_slot() -> None:
    old = svc(tuple(TARGETS[:10]))
    new = svc(nft.dense_slots(old.slots, [t for t in TARGETS[:10] if t != TARGETS[3]]))
    assert new.slots[3] == TARGETS[9]
    assert len(new.slots) == 9
    cmds = nft.plan({"k": old}, {"k": new})
    assert cmds[0].endswith("{ 3, 9 }")  # deleted: the changed slot and the last one
    assert cmds[1].endswith(f"{{ 3 : {TARGETS[9][0]} . {TARGETS[9][1]} }}")


def test_nothing_changed_is_no_transaction() -> None:
    s = svc(tuple(TARGETS[:3]))
    assert nft.plan({"k": s}, {"k": s}) == []


def test_the_first_plan_replaces_the_table_and_touches_no_other() -> None:
    cmds = nft.plan(None, {"k": svc(tuple(TARGETS[:2]))})
    assert cmds[:3] == ["add table ip orch", "delete table ip orch", "add table ip orch"]
    for c in cmds:  # every command names our table
        assert re.match(r"(add|delete|flush) \w+ ip orch\b", c), c


def test_maglev_change_rewrites_only_moved_slots() -> None:
    size = 4099
    eps = TARGETS[:20]
    old = svc(nft.maglev_slots([(t, 1) for t in eps], size), policy="maglev")
    new = svc(nft.maglev_slots([(t, 1) for t in eps[:-1]], size), policy="maglev")
    moved = sum(1 for a, b in zip(old.slots, new.slots, strict=True) if a != b)
    assert moved <= 0.1 * size  # (the disruption bound itself: the test below)
    cmds = nft.plan({"k": old}, {"k": new})
    assert not any("flush chain" in c for c in cmds)  # the table size does not change
    assert any("jhash ip saddr mod 4099 seed" in c for c in nft.add_service(new))


@settings(max_examples=8, deadline=None)
@given(st.integers(5, 40), st.integers(0, 39))
def test_maglev_disruption_when_one_leaves(n: int, leaving: int) -> None:
    """The kernel's Maglev table (the default size, 65537) moves at most 1.2 / N of the slots
    (so of the clients, who hash uniformly onto them) when one of N endpoints leaves."""
    size = LbConfig().maglev_table_size
    eps = TARGETS[:n]
    gone = eps[leaving % n]
    old = nft.maglev_slots([(t, 1) for t in eps], size)
    new = nft.maglev_slots([(t, 1) for t in eps if t != gone], size)
    moved = sum(1 for a, b in zip(old, new, strict=True) if a != b and a != gone)
    # besides the leaving endpoint's own slots, few move
    assert (moved + old.count(gone)) / size <= 1.2 / n


def test_remote_endpoints_are_masqueraded_local_ones_keep_the_client() -> None:
    local, remote = TARGETS[0], TARGETS[1]
    s = svc((local, remote), remote=frozenset({remote}))
    cmds = nft.add_service(s)
    assert f"add element ip orch remote {{ {remote[0]} . tcp . {remote[1]} }}" in cmds
    assert not any(local[0] in c and "remote" in c for c in cmds)


def test_addresses_are_checked() -> None:
    for bad in ("10.0.0.1; flush ruleset", "::1", "example.org"):
        try:
            nft.target(bad, 80)
        except ValueError:
            continue
        raise AssertionError(bad)


def spec(policy: str = "round_robin", *, proxy_protocol: bool = False,
         hosts: tuple[tuple[str, bool], ...] = (("10.0.0.1", True), ("10.0.0.2", False))
         ) -> ServiceSpec:
    return ServiceSpec(name="web", published_port=80, policy=policy,
                       proxy_protocol=proxy_protocol,
                       endpoints=tuple(Endpoint(alloc_id=f"a{i}", node=f"n{i}", host=h,
                                                port=9000, local=loc)
                                       for i, (h, loc) in enumerate(hosts)))


def test_services_that_need_the_proxy_keep_it() -> None:
    assert kernel_capable(spec()) == ""
    assert kernel_capable(spec("random")) == ""
    assert kernel_capable(spec("maglev")) == ""
    assert kernel_capable(spec("least_conn"))
    assert kernel_capable(spec("p2c"))
    assert kernel_capable(spec(proxy_protocol=True))
    assert kernel_capable(spec(hosts=(("fd00::1", True),)))
    assert kernel_capable(ServiceSpec(name="web", published_port=0)) == "no published port"


class FakeKernel:
    """Stands in for the kernel balancer in the split (no nftables in the unit tier)."""


def test_split_gives_the_kernel_local_endpoints_first() -> None:
    dp = DataPlane(LbConfig(), probe=False, kernel=FakeKernel())  # type: ignore[arg-type]
    kern, prox = dp.split({"a": spec(), "b": spec("p2c")})
    assert list(prox) == ["b"]
    assert [e.host for e in kern["a"].endpoints] == ["10.0.0.1"]
    dp = DataPlane(LbConfig(prefer_local=False), probe=False,
                   kernel=FakeKernel())  # type: ignore[arg-type]
    kern, _ = dp.split({"a": spec()})
    assert len(kern["a"].endpoints) == 2


def test_proxy_mode_gives_everything_to_the_proxy() -> None:
    dp = DataPlane(LbConfig(mode="proxy"), bind_host="0.0.0.0")
    assert dp.kernel is None
    assert dp.reason == "lb.mode is proxy"
    assert dp.attributes() == {"lb.mode": "proxy", "lb.kernel_unavailable": "lb.mode is proxy"}
    kern, prox = dp.split({"a": spec()})
    assert kern == {}
    assert list(prox) == ["a"]


def test_loopback_bind_keeps_the_proxy() -> None:
    dp = DataPlane(LbConfig(), bind_host="127.0.0.5")
    assert dp.kernel is None
    assert "loopback" in dp.reason


def test_a_bind_address_limits_the_published_ports_to_it() -> None:
    assert "add rule ip orch output fib daddr type local jump services" in nft.skeleton()
    cmds = nft.skeleton("10.1.2.3")
    assert "add rule ip orch prerouting ip daddr 10.1.2.3 jump services" in cmds
    assert not any("fib" in c for c in cmds)


def test_lb_mode_of_a_service() -> None:
    assert lb_mode("round_robin", False, 3, 3) == "kernel"
    assert lb_mode("maglev", False, 1, 3) == "kernel on 1 of 3 nodes"
    assert lb_mode("least_conn", False, 3, 3) == "proxy"
    assert lb_mode("random", True, 3, 3) == "proxy"
    assert lb_mode("round_robin", False, 0, 3) == "proxy"
