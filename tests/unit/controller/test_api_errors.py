"""The API edge says where the leader is, for a follower's refusal and a deposed leader's."""

from __future__ import annotations

import grpc

from controller.api.errors import leader_named, status_of
from orch.errors import FencedError, NotLeaderError, StoreError


def fenced(holder: str | None) -> FencedError:
    return FencedError("this controller is no longer the leader", key="/orch/leader",
                       revision=7, holder=holder)


def test_a_followers_refusal_names_the_leader() -> None:
    assert leader_named(NotLeaderError("10.0.0.2:4647")) == "10.0.0.2:4647"
    assert leader_named(NotLeaderError(None)) == ""


def test_a_deposed_leaders_refusal_names_the_new_leader_from_the_leader_key() -> None:
    e = fenced('{"name":"c2","address":"10.0.0.3:4647"}')
    assert leader_named(e) == "10.0.0.3:4647"
    assert status_of(e)[0] == grpc.StatusCode.FAILED_PRECONDITION
    assert leader_named(fenced(None)) == ""  # nobody leads yet
    assert leader_named(fenced("not json")) == ""
    assert leader_named(fenced('["a list"]')) == ""
    assert leader_named(fenced('{"address": 5}')) == ""
    assert leader_named(StoreError("etcd is away")) == ""
