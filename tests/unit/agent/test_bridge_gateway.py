"""Where bridged containers reach the agent: the gateway of Docker's default bridge, from
what ``docker network inspect bridge`` shows (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from agent.server import bridge_gateway


@pytest.mark.parametrize(("info", "gateway"), [
    ({"IPAM": {"Config": [{"Subnet": "172.17.0.0/16", "Gateway": "172.17.0.1"}]}}, "172.17.0.1"),
    # what a first start of dockerd shows (no network store yet): the subnet alone
    ({"IPAM": {"Driver": "default", "Options": None, "Config": [{"Subnet": "172.17.0.0/16"}]}},
     "172.17.0.1"),
    ({"IPAM": {"Config": [{"Subnet": "fd00::/64"}, {"Subnet": "10.9.0.0/24"}]}}, "10.9.0.1"),
    ({"IPAM": {"Config": [{"Subnet": "not a subnet"}]}}, ""),
    ({"IPAM": {"Config": [{"Subnet": "10.0.0.7/32"}]}}, ""),
    ({"IPAM": {"Config": None}}, ""),
    ({}, ""),
])
def test_the_gateway_is_the_one_named_else_the_subnet_s_first_address(
        info: dict[str, Any], gateway: str) -> None:
    assert bridge_gateway(info) == gateway
