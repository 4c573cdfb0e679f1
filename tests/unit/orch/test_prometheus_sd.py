"""Prometheus discovery from gossip (pure): every live member's /metrics and every task's
metrics port, each at its own member's address only."""

from __future__ import annotations

from typing import Any

from orch import prometheus_sd
from orch.gossip.core import MemberInfo
from orch.gossip.messages import Status


def member(name: str, host: str, state: dict[str, Any],
           status: Status = Status.ALIVE) -> MemberInfo:
    return MemberInfo(name=name, addr=(host, 7946), status=status, incarnation=1, state=state,
                      state_version=1, since=0.0)


def test_daemons_and_task_ports_with_their_labels() -> None:
    found = prometheus_sd.targets([
        member("ctl", "10.0.0.1", {"role": "controller", "metrics": "10.0.0.1:9647"}),
        member("a1", "10.0.0.2", {"role": "agent", "metrics": "10.0.0.2:9646",
                                  **prometheus_sd.entry("al-1", "10.0.0.2", 25000,
                                                        namespace="prod", job="web",
                                                        group="g")}),
        member("a2", "10.0.0.3", {"role": "agent", "metrics": "10.0.0.3:9646"},
               status=Status.SUSPECT),
    ])
    assert found.refused == 0
    assert found.groups == [
        {"targets": ["10.0.0.2:9646"], "labels": {"job": "orch-agent", "node": "a1",
                                                  "role": "agent"}},
        {"targets": ["10.0.0.2:25000"], "labels": {"job": "web", "group": "g",
                                                   "namespace": "prod", "node": "a1",
                                                   "alloc_id": "al-1", "role": "task"}},
        {"targets": ["10.0.0.1:9647"], "labels": {"job": "orch-controller", "node": "ctl",
                                                  "role": "controller"}},
    ]


def test_a_member_points_only_at_itself() -> None:
    found = prometheus_sd.targets([
        member("evil", "10.0.0.9", {
            "metrics": "10.0.0.1:9647",  # someone else's address
            "mx:a": ["10.0.0.1", 80, "default", "j", "g"],
            "mx:b": ["10.0.0.9", 70000, "default", "j", "g"],  # no port
            "mx:c": ["10.0.0.9", 80, "default", "j" * 300, "g"],  # too long
            "mx:d": "nonsense"}),
        member("odd", "10.0.0.8", {"metrics": "no-port"}),
    ])
    assert found.groups == []
    assert found.refused == 6
