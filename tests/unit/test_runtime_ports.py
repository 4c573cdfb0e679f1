"""Host port assignment (pure)."""

from __future__ import annotations

import pytest

from agent.runtime.ports import assign_ports, container_port
from orch.errors import RuntimeDriverError
from orch.jobspec.model import Network, Port

NET = Network(ports=(Port(label="http", to=8080), Port(label="admin", static=9000),
                     Port(label="metrics")))


def test_scheduler_choice_then_static_then_lowest_free() -> None:
    got = assign_ports(NET, {"http": 21000}, used={20000}, lo=20000, hi=20010,
                       is_free=lambda p: p != 20001)
    assert got == {"http": 21000, "admin": 9000, "metrics": 20002}


def test_range_exhausted_says_what_to_do() -> None:
    with pytest.raises(RuntimeDriverError, match="dynamic range 20000-20001"):
        assign_ports(NET, {}, used={20000, 20001}, lo=20000, hi=20001)


def test_container_port() -> None:
    assert container_port(NET, "http", 21000) == 8080
    assert container_port(NET, "metrics", 20002) == 20002
