"""Access tokens for the operator API: who may do what.

A token has a public *accessor* (to list and revoke it) and a *secret* (what
clients send, ``authorization: Bearer <secret>``); only the secret's SHA-256 is
stored. Its policies:

    management             everything, tokens included
    read                   every read: jobs, allocations, logs, nodes, members, events
    submit                 read, plus register/stop/scale/revert any job and restart or
                           stop its allocations
    submit:ns=<namespace>  the same, for the jobs of one namespace
    submit:prefix=<p>      the same, for the jobs whose name starts with <p>
    node                   read, plus drain nodes and set their eligibility

The first token is made by ``orchctl acl bootstrap`` (a management token, once).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Protocol

from controller.store.base import Changes
from orch.errors import AclError, NotFoundError, RequestError
from orch.vocab import namespace_of

META_PREFIX = "acl/token/"
BOOTSTRAP_KEY = "acl/bootstrapped"
POLICIES = ("management", "read", "submit", "node")


class HasMeta(Protocol):
    index: int
    meta: dict[str, str]


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_policy(policy: str) -> str:
    """``policy`` when it is one orch knows; ValueError saying which exist otherwise."""
    kind, _, arg = policy.partition(":")
    ok = (policy in POLICIES) or (kind == "submit" and (
        (arg.startswith("ns=") and len(arg) > 3) or (arg.startswith("prefix=") and len(arg) > 7)))
    if not ok:
        raise RequestError(f"unknown policy {policy!r}: use management, read, submit, "
                         "submit:ns=<namespace>, submit:prefix=<job name prefix> or node")
    return policy


@dataclass(frozen=True, slots=True)
class Token:
    accessor: str
    name: str
    policies: tuple[str, ...]
    secret_sha256: str
    create_time_ns: int
    revoked: bool = False

    def allows(self, action: str, namespace: str = "", job: str = "") -> bool:
        """Whether this token may do ``action`` (read, job-write, node-write, acl) on the
        job ``namespace``/``job`` where that matters."""
        if self.revoked:
            return False
        for p in self.policies:
            if p == "management":
                return True
            if action == "read" and (p in ("read", "node") or p.startswith("submit")):
                return True
            if action == "node-write" and p == "node":
                return True
            if action == "job-write" and p.startswith("submit"):
                _, _, arg = p.partition(":")
                if not arg or (arg.startswith("ns=") and arg[3:] == namespace_of(namespace)) \
                        or (arg.startswith("prefix=") and job.startswith(arg[7:])):
                    return True
        return False


class Acl:
    """The tokens, kept in the store's meta (every controller sees the same ones); a view
    over ``state.meta`` that re-reads it when the state's index moves."""

    def __init__(self, state: HasMeta) -> None:
        self._state = state
        self._index = -1
        self._tokens: dict[str, Token] = {}
        self._by_digest: dict[str, Token] = {}

    @property
    def tokens(self) -> dict[str, Token]:
        """accessor -> token (revoked ones too)"""
        if self._index != self._state.index:
            self._index = self._state.index
            self._tokens = {}
            for k, v in self._state.meta.items():
                if k.startswith(META_PREFIX):
                    d = json.loads(v)
                    d["policies"] = tuple(d["policies"])
                    self._tokens[d["accessor"]] = Token(**d)
            self._by_digest = {t.secret_sha256: t for t in self._tokens.values()}
        return self._tokens

    @property
    def bootstrapped(self) -> bool:
        return BOOTSTRAP_KEY in self._state.meta

    def resolve(self, secret: str) -> Token | None:
        """The live token with this secret, or None."""
        _ = self.tokens
        t = self._by_digest.get(_digest(secret))
        return None if t is None or t.revoked else t

    def bootstrap(self) -> tuple[Token, str, Changes]:
        """The first management token; once per cluster."""
        if self.bootstrapped:
            raise AclError("the ACL system is already bootstrapped (use a management token to "
                           "create more tokens)")
        token, secret, changes = self.create("bootstrap", ["management"])
        changes.meta[BOOTSTRAP_KEY] = token.accessor
        return token, secret, changes

    def create(self, name: str, policies: list[str]) -> tuple[Token, str, Changes]:
        """A new token (with its secret, shown once) and the change that stores it."""
        if not policies:
            raise RequestError("a token needs at least one policy")
        for p in policies:
            check_policy(p)
        secret = str(uuid.uuid4())
        token = Token(accessor=str(uuid.uuid4()), name=name or "unnamed",
                      policies=tuple(policies), secret_sha256=_digest(secret),
                      create_time_ns=time.time_ns())
        return token, secret, self._store(token)

    def revoke(self, accessor: str) -> tuple[Token, Changes]:
        """Revoke the token whose accessor is (or starts with) ``accessor``."""
        found = [t for a, t in self.tokens.items() if a.startswith(accessor)] if accessor else []
        if len(found) != 1:
            raise NotFoundError(f"no token {accessor!r}" if not found
                                else f"{accessor!r} matches {len(found)} tokens; give more of it")
        t = dataclasses.replace(found[0], revoked=True)
        return t, self._store(t)

    @staticmethod
    def _store(t: Token) -> Changes:
        d = dataclasses.asdict(t)
        d["policies"] = list(t.policies)
        return Changes(meta={META_PREFIX + t.accessor: json.dumps(d, sort_keys=True)})
