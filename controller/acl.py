"""Access tokens for the operator API: who may do what, per namespace.

A token has a public *accessor* (to list and revoke it) and a *secret* (what
clients send, ``authorization: Bearer <secret>``); only the secret's SHA-256 is
stored. Its policies:

    management                 everything: tokens, join tokens and removing nodes included
    read                       every read: jobs, allocations, logs, nodes, members, events
    node                       read, plus drain nodes and set their eligibility
    operator                   read, plus the gossip keyring and user events
    namespace:<ns>:<caps>      capabilities in one namespace (``*``: every namespace),
                               comma-separated:
        read                   its jobs (their env included), allocations and logs
        submit                 register, stop, scale and revert its jobs; stop and restart
                               their allocations (read included)
        driver-<name>          jobs that use task driver <name> (docker, process)
        privileged             tasks that ask for a privileged container
        host-network           tasks that share the host's network
        alloc-exec             commands run inside its allocations
        secret-read            its secrets' values, and jobs whose tasks read secrets
        secret-write           put and remove its secrets
    submit                     namespace:*:submit with every driver (as submit:ns=, below)
    submit:ns=<namespace>      namespace:<namespace>:submit with every driver
    submit:prefix=<p>          the same as submit, for the jobs whose name starts with <p>

A job whose tasks ask for a privileged container or the host's network needs those
capabilities whatever else the token allows (management excepted). The first token is
made at the cluster's bootstrap (or ``orchctl acl bootstrap`` on a cluster that turned
tokens on by hand: once).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from controller.store.base import Changes
from orch.errors import AclError, NotFoundError, RequestError
from orch.vocab import namespace_of

META_PREFIX = "acl/token/"
BOOTSTRAP_KEY = "acl/bootstrapped"
POLICIES = ("management", "read", "submit", "node", "operator")
CAPABILITIES = ("read", "submit", "privileged", "host-network", "alloc-exec", "secret-read",
                "secret-write")
"""Capabilities in a namespace (besides ``driver-<name>``)."""
ALL_DRIVERS = "driver-*"
_NAMESPACE = re.compile(r"^(\*|[a-z0-9][a-z0-9_-]{0,62})$")
_DRIVER = re.compile(r"^driver-[a-z][a-z0-9_-]{0,31}$")


class HasMeta(Protocol):
    meta: dict[str, str]
    meta_index: int
    """Moves whenever ``meta`` changes (views re-read it then)."""


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _bad(policy: str) -> RequestError:
    return RequestError(f"unknown policy {policy!r}: use management, read, node, operator, "
                        "namespace:<ns|*>:<read,submit,driver-NAME,privileged,host-network,"
                        "alloc-exec,secret-read,secret-write>, submit, submit:ns=<namespace> or "
                        "submit:prefix=<job name prefix>")


def check_policy(policy: str) -> str:
    """``policy`` when it is one orch knows; RequestError (a ValueError) saying which exist
    otherwise."""
    kind, _, arg = policy.partition(":")
    if policy in POLICIES:
        return policy
    if kind == "submit" and ((arg.startswith("ns=") and _NAMESPACE.match(arg[3:]))
                             or (arg.startswith("prefix=") and len(arg) > 7)):
        return policy
    if kind == "namespace":
        ns, _, caps = arg.partition(":")
        names = caps.split(",") if caps else []
        if _NAMESPACE.match(ns) and names and all(c in CAPABILITIES or _DRIVER.match(c)
                                                   or c == ALL_DRIVERS for c in names):
            return policy
    raise _bad(policy)


def _grants(policy: str) -> tuple[str, frozenset[str], str]:
    """(namespace or *, capabilities, job name prefix) a namespace-scoped policy grants."""
    kind, _, arg = policy.partition(":")
    if kind == "namespace":
        ns, _, listed = arg.partition(":")
        return ns, frozenset(listed.split(",")), ""
    # submit, submit:ns=, submit:prefix=: submit (and read) with every driver
    every = frozenset(("read", "submit", ALL_DRIVERS))
    if arg.startswith("ns="):
        return arg[3:], every, ""
    return "*", every, arg[7:] if arg.startswith("prefix=") else ""


@dataclass(frozen=True, slots=True)
class Token:
    accessor: str
    name: str
    policies: tuple[str, ...]
    secret_sha256: str
    create_time_ns: int
    revoked: bool = False

    def allows(self, action: str, namespace: str = "", job: str = "",
               needs: Iterable[str] = ()) -> bool:
        """Whether this token may do ``action`` (read, job-write, alloc-exec, secret-read,
        secret-write, node-write, operator, acl)
        on the job ``namespace``/``job`` where that matters; ``needs`` are the capabilities the
        request needs besides (driver-docker, privileged...). A namespace of ``*`` asks for
        every namespace at once (a listing)."""
        if self.revoked:
            return False
        if "management" in self.policies:
            return True
        if action == "read" and any(p in ("read", "node", "operator") or p == "submit"
                                    or p.startswith("submit:") for p in self.policies):
            return True  # (the submit policies read every namespace, as they always did)
        if action in ("node-write", "operator"):
            return (action == "node-write" and "node" in self.policies) or \
                (action == "operator" and "operator" in self.policies)
        want = {"read": "read", "job-write": "submit", "alloc-exec": "alloc-exec",
                "secret-read": "secret-read", "secret-write": "secret-write"}.get(action)
        if want is None:
            return False
        ns = namespace if namespace == "*" else namespace_of(namespace)
        held: set[str] = set()
        for p in self.policies:
            if p in ("management", "read", "node", "operator"):
                continue
            scope, caps, prefix = _grants(p)
            if scope != "*" and scope != ns:
                continue
            if prefix and not job.startswith(prefix):
                continue
            held |= caps | ({"read"} if "submit" in caps else set())
        if want not in held:
            return False
        for need in needs:
            if need.startswith("driver-") and ALL_DRIVERS in held:
                continue
            if need not in held:
                return False
        return True


class Acl:
    """The tokens, kept in the store's meta (every controller sees the same ones); a view
    over ``state.meta`` that re-reads it when the meta changes."""

    def __init__(self, state: HasMeta) -> None:
        self._state = state
        self._index = -1
        self._tokens: dict[str, Token] = {}
        self._by_digest: dict[str, Token] = {}

    @property
    def tokens(self) -> dict[str, Token]:
        """accessor -> token (revoked ones too)"""
        if self._index != self._state.meta_index:
            self._index = self._state.meta_index
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
