"""Tokens and policies, the method table, the rate limiter (pure logic)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from controller.acl import Acl, Token, check_policy
from controller.api import authz
from controller.store.base import Changes
from orch.errors import AclError, NotFoundError
from orch.v1 import controller_pb2


@dataclass
class State:
    meta_index: int = 0
    meta: dict[str, str] = field(default_factory=dict)

    def apply(self, changes: Changes) -> None:
        self.meta.update(changes.meta)
        self.meta_index += 1


def token(*policies: str) -> Token:
    return Token("a", "t", policies, "", 0)


@pytest.mark.parametrize(("policies", "action", "ns", "job", "allowed"), [
    (("management",), "acl", "", "", True),
    (("read",), "read", "", "", True),
    (("read",), "job-write", "default", "web", False),
    (("read",), "node-write", "", "", False),
    (("node",), "node-write", "", "", True),
    (("node",), "read", "", "", True),
    (("node",), "job-write", "default", "web", False),
    (("submit",), "job-write", "prod", "anything", True),
    (("submit",), "read", "", "", True),
    (("submit",), "acl", "", "", False),
    (("submit:ns=prod",), "job-write", "prod", "web", True),
    (("submit:ns=prod",), "job-write", "default", "web", False),
    (("submit:ns=default",), "job-write", "", "web", True),
    (("submit:prefix=web-",), "job-write", "default", "web-a", True),
    (("submit:prefix=web-",), "job-write", "default", "api", False),
    (("submit:prefix=web-",), "job-write", "", "", False),
    (("read", "submit:prefix=api"), "job-write", "default", "api-v2", True),
])
def test_policies(policies: tuple[str, ...], action: str, ns: str, job: str,
                  allowed: bool) -> None:
    assert token(*policies).allows(action, ns, job) is allowed


def test_revoked_token_allows_nothing() -> None:
    t = Token("a", "t", ("management",), "", 0, revoked=True)
    assert not t.allows("read")


@pytest.mark.parametrize("bad", ["root", "submit:", "submit:ns=", "submit:prefix=", "read:x",
                                 "submit:team=a"])
def test_unknown_policies_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="unknown policy"):
        check_policy(bad)


def test_acl_bootstrap_create_resolve_revoke() -> None:
    state = State()
    acl = Acl(state)
    root, secret, changes = acl.bootstrap()
    state.apply(changes)
    assert acl.bootstrapped
    with pytest.raises(AclError, match="already bootstrapped"):
        acl.bootstrap()
    assert acl.resolve(secret) == root
    assert acl.resolve("wrong") is None
    assert secret not in str(state.meta)  # only the digest is kept
    t, s2, changes = acl.create("ci", ["submit:prefix=ci-"])
    state.apply(changes)
    assert acl.resolve(s2) == t
    revoked, changes = acl.revoke(t.accessor[:8])
    state.apply(changes)
    assert revoked.revoked
    assert acl.resolve(s2) is None
    assert acl.tokens[t.accessor].revoked
    with pytest.raises(NotFoundError):
        acl.revoke("zzzz")
    with pytest.raises(ValueError, match="at least one policy"):
        acl.create("x", [])


def test_every_rpc_has_a_permission() -> None:
    methods = set(controller_pb2.DESCRIPTOR.services_by_name["ControllerService"]
                  .methods_by_name)
    classified = (authz.ANONYMOUS | authz.READ | authz.JOB_WRITE | authz.ALLOC_EXEC
                  | authz.NODE_WRITE | authz.MANAGEMENT | authz.SECRETS)
    assert methods == classified
    assert authz.action_of("SomethingNew") == "acl"  # unknown methods need the most


def test_rate_limiter_buckets() -> None:
    rl = authz.RateLimiter(rate=10, burst=3, max_clients=2)
    now = 100.0
    assert [rl.allow("a", now) for _ in range(3)] == [0, 0, 0]
    wait = rl.allow("a", now)
    assert wait == pytest.approx(0.1)
    assert rl.allow("b", now) == 0  # its own bucket
    assert rl.allow("a", now + 0.11) == 0  # refilled one
    rl.allow("c", now)  # past max_clients: the least recent ("b") is forgotten
    assert "b" not in rl._buckets
    assert authz.RateLimiter(rate=0, burst=0).allow("x") == 0
