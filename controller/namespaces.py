"""Namespaces: declared before jobs use them, each with an optional quota.

A namespace groups jobs (and their allocations, secrets and tokens' capabilities) under
one name; ``default`` always exists. Namespaces live in the store's meta
(``namespace/<name>``, JSON), so every controller sees the same ones; this is a view
over ``state.meta`` that re-reads them when the meta changes, as the ACL does.
A quota caps what the namespace's live allocations hold together (the scheduler
enforces it, see ``controller.scheduler.quota``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from controller.scheduler.quota import Quota
from controller.secrets import META_PREFIX as SECRET_META
from controller.store.base import Changes
from orch.errors import ApiError, NotFoundError, RequestError
from orch.jobspec.validate import MAX_NAME, NAME
from orch.vocab import DEFAULT_NAMESPACE

if TYPE_CHECKING:
    from controller.state import ClusterState

META_PREFIX = "namespace/"
MAX_NAMESPACES = 1_000
"""Namespaces in a cluster: each is a meta record every controller holds in memory."""
MAX_DESCRIPTION = 1_000
"""Characters in a namespace's description."""
MAX_QUOTA = 2**40
"""The largest value of a quota (millicores, MB or allocations): a typo, not a budget."""


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    description: str = ""
    quota: Quota = field(default_factory=Quota)
    create_time_ns: int = 0
    modify_time_ns: int = 0


def check_name(name: str) -> str:
    """``name`` when it can name a namespace; RequestError saying what can otherwise."""
    if not (NAME.match(name) and len(name) <= MAX_NAME):
        raise RequestError(f"namespace name {name!r} is invalid: 1 to {MAX_NAME} lower case "
                           "letters, digits, '-' and '_', starting with a letter or digit")
    return name


def check_quota(q: Quota) -> Quota:
    for name, value in (("cpu_millicores", q.cpu_millicores), ("memory_mb", q.memory_mb),
                         ("allocations", q.allocations)):
        if not 0 <= value <= MAX_QUOTA:
            raise RequestError(f"quota {name} must be between 0 (unlimited) and {MAX_QUOTA}, "
                               f"got {value}")
    return q


class Namespaces:
    """The cluster's namespaces, read from (and written through) the state's meta."""

    def __init__(self, state: ClusterState) -> None:
        self._state = state
        self._index = -1
        self._all: dict[str, Namespace] = {}

    @property
    def all(self) -> dict[str, Namespace]:
        """name -> namespace, ``default`` included, sorted by name."""
        if self._index != self._state.meta_index:
            self._index = self._state.meta_index
            found = {DEFAULT_NAMESPACE: Namespace(DEFAULT_NAMESPACE, "the default namespace")}
            for k, v in self._state.meta.items():
                if k.startswith(META_PREFIX):
                    ns = _decode(v)
                    found[ns.name] = ns
            self._all = dict(sorted(found.items()))
        return self._all

    def get(self, name: str) -> Namespace | None:
        return self.all.get(name or DEFAULT_NAMESPACE)

    def require(self, name: str) -> Namespace:
        """The namespace, or NotFoundError saying how to make it."""
        ns = self.get(name)
        if ns is None:
            raise NotFoundError(f"namespace {name!r} does not exist (create it with: orchctl "
                                f"namespace apply {name})")
        return ns

    def quota(self, name: str) -> Quota | None:
        """The namespace's quota (None when it has none, or is unknown)."""
        ns = self.get(name)
        return None if ns is None or ns.quota.unlimited else ns.quota

    def apply(self, name: str, now_ns: int, *, description: str | None = None,
              quota: Quota | None = None) -> tuple[Namespace, Changes]:
        """Create the namespace or change it: what is given replaces what it had, the rest
        stays."""
        check_name(name)
        if description is not None and len(description) > MAX_DESCRIPTION:
            raise RequestError(f"a namespace's description is at most {MAX_DESCRIPTION} "
                               f"characters, got {len(description)}")
        old = self.get(name)
        if old is None:
            if len(self.all) >= MAX_NAMESPACES:
                raise RequestError(f"this cluster already has {MAX_NAMESPACES} namespaces, "
                                   "the most it keeps; remove unused ones first")
            old = Namespace(name, create_time_ns=now_ns)
        ns = replace(old, modify_time_ns=now_ns,
                     description=old.description if description is None else description,
                     quota=old.quota if quota is None else check_quota(quota))
        return ns, Changes(meta={META_PREFIX + name: _encode(ns)})

    def delete(self, name: str) -> Changes:
        """The change that removes an empty namespace."""
        if name == DEFAULT_NAMESPACE:
            raise RequestError("the default namespace cannot be removed")
        self.require(name)
        jobs = sorted(job for ns, job in self._state.jobs if ns == name)
        if jobs:
            shown = ", ".join(jobs[:5]) + (f" and {len(jobs) - 5} more" if len(jobs) > 5 else "")
            raise ApiError(f"namespace {name!r} still has {len(jobs)} job(s) ({shown}); "
                                f"purge them first (orchctl -n {name} job stop --purge JOB)")
        owned = [k for k in self._state.meta if k.startswith(f"{SECRET_META}{name}/")]
        if owned:
            raise ApiError(f"namespace {name!r} still has secrets; remove them first "
                                f"(orchctl -n {name} secret list)")
        return Changes(delete_meta=[META_PREFIX + name])


def _encode(ns: Namespace) -> str:
    return json.dumps({"name": ns.name, "description": ns.description,
                       "quota": {"cpu_millicores": ns.quota.cpu_millicores,
                                 "memory_mb": ns.quota.memory_mb,
                                 "allocations": ns.quota.allocations},
                       "create_time_ns": ns.create_time_ns,
                       "modify_time_ns": ns.modify_time_ns}, sort_keys=True)


def _decode(text: str) -> Namespace:
    d = json.loads(text)
    return Namespace(name=d["name"], description=d.get("description", ""),
                     quota=Quota(**d.get("quota", {})),
                     create_time_ns=d.get("create_time_ns", 0),
                     modify_time_ns=d.get("modify_time_ns", 0))
