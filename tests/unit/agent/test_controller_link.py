"""Where an agent's stream goes when the controller holding it stops answering gossip (pure)."""

from __future__ import annotations

from agent.controller_link import leader_elsewhere
from orch.gossip.core import MemberInfo
from orch.gossip.messages import Status


def controller(name: str, rpc: str, status: Status = Status.ALIVE,
               leader: bool = False) -> MemberInfo:
    state = {"role": "controller", "rpc": rpc, **({"leader": "true"} if leader else {})}
    return MemberInfo(name, ("127.0.0.1", 7946), status, 0, state, 1, 0.0)


def agent(name: str) -> MemberInfo:
    return MemberInfo(name, ("127.0.0.9", 7946), Status.ALIVE, 0, {"role": "agent"}, 1, 0.0)


def test_stays_while_the_controller_it_holds_is_alive() -> None:
    # it says itself when it stops leading; gossip tagging another leader meanwhile is not enough
    members = [controller("c0", "c0:1"), controller("c1", "c1:1", leader=True), agent("a")]
    assert leader_elsewhere(members, "c0:1") is None


def test_moves_to_the_alive_leader_once_the_held_controller_is_not_alive() -> None:
    for gone in (Status.SUSPECT, Status.DEAD, Status.LEFT):
        members = [controller("c0", "c0:1", gone, leader=True),
                   controller("c1", "c1:1"), controller("c2", "c2:1", leader=True)]
        assert leader_elsewhere(members, "c0:1") == "c2:1"


def test_stays_without_another_alive_leader() -> None:
    members = [controller("c0", "c0:1", Status.DEAD), controller("c1", "c1:1"),
               controller("c2", "c2:1", Status.DEAD, leader=True)]
    assert leader_elsewhere(members, "c0:1") is None


def test_stays_with_a_controller_gossip_does_not_know() -> None:
    members = [controller("c1", "c1:1", leader=True), agent("a")]
    assert leader_elsewhere(members, "configured:1") is None


def test_one_record_alive_is_enough_and_two_leaders_resolve_the_same_way() -> None:
    # a controller restarted under a new name with the same address is alive
    members = [controller("old", "c0:1", Status.DEAD), controller("new", "c0:1"),
               controller("c1", "c1:1", leader=True)]
    assert leader_elsewhere(members, "c0:1") is None
    members = [controller("c0", "c0:1", Status.DEAD), controller("c2", "c2:1", leader=True),
               controller("c1", "c1:1", leader=True)]
    assert leader_elsewhere(members, "c0:1") == "c1:1"
