"""Secrets: small values of a namespace, versioned, sealed at rest, given to the tasks that
name them.

Each version is sealed with AES-GCM (``cryptography``) under the cluster's secrets key,
with the secret's namespace, name and version as associated data (a sealed value moved
to another name does not open). The key is made at the cluster's bootstrap
(``<data_dir>/pki/secrets.key``, mode 0600) and handed to every controller that joins,
over mTLS; the store holds only sealed values. A controller of a cluster that was not
bootstrapped makes its own key the first time a secret is put.

In the store's meta::

    secret/<namespace>/<name>              {"versions": [{version, create_time_ns, size}], ...}
    secret/<namespace>/<name>#<version>    {"key": key id, "nonce": b64, "data": b64}

The newest ``MAX_VERSIONS`` versions are kept; putting a new one deletes the oldest.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from controller.store.base import Changes
from orch import pki
from orch.errors import ApiError, ConflictError, NotFoundError, RequestError
from orch.jobspec.validate import SECRET_NAME
from orch.v1 import controller_pb2, node_pb2

if TYPE_CHECKING:
    from controller.state import ClusterState

META_PREFIX = "secret/"
MAX_NAME = 128
MAX_VALUE = 64 * 1024
"""Bytes in one secret: a password, a key, a certificate chain (Nomad's variables and
Kubernetes' secrets stop near here too); not a file store."""
MAX_VERSIONS = 5
"""Versions kept per secret: enough to read the previous one after a bad change."""
MAX_SECRETS = 5_000
"""Secrets in a cluster: every controller holds every sealed version in memory."""
MAX_TOTAL = 64 * 1024 * 1024
"""Bytes of every kept version of every secret together, for the same reason."""


class SecretsKey:
    """The cluster's AES-256-GCM key for secrets, kept in a file."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a secrets key is 32 bytes")
        self._aead = AESGCM(key)
        self.id = hashlib.sha256(key).hexdigest()[:12]
        """Recorded with every sealed value, to tell which key it needs."""

    @staticmethod
    def new() -> bytes:
        return AESGCM.generate_key(bit_length=256)

    @staticmethod
    def encode(key: bytes) -> bytes:
        return base64.b64encode(key) + b"\n"

    @classmethod
    def load(cls, path: Path) -> SecretsKey | None:
        if not path.exists():
            return None
        try:
            return cls(base64.b64decode(path.read_bytes().strip(), validate=True))
        except ValueError as e:
            raise ApiError(f"{path}: not a secrets key ({e})") from None

    def seal(self, aad: bytes, value: bytes) -> dict[str, str]:
        nonce = os.urandom(12)
        return {"key": self.id, "nonce": _b64(nonce),
                "data": _b64(self._aead.encrypt(nonce, value, aad))}

    def open(self, aad: bytes, sealed: dict[str, str]) -> bytes:
        if sealed.get("key") != self.id:
            raise ApiError(f"this secret was sealed with key {sealed.get('key')}, which this "
                           f"controller does not hold (it holds {self.id}); every controller "
                           "needs the cluster's secrets key (pki/secrets.key)")
        try:
            return self._aead.decrypt(base64.b64decode(sealed["nonce"]),
                                      base64.b64decode(sealed["data"]), aad)
        except (InvalidTag, KeyError, ValueError):
            raise ApiError("a sealed secret does not open: it was altered, or moved from "
                           "another name") from None


@dataclass(frozen=True, slots=True)
class Version:
    version: int
    create_time_ns: int
    size: int


@dataclass(frozen=True, slots=True)
class Secret:
    namespace: str
    name: str
    versions: tuple[Version, ...]
    """Kept versions, oldest first."""
    create_time_ns: int

    @property
    def latest(self) -> Version:
        return self.versions[-1]


def check_name(name: str) -> str:
    if not (SECRET_NAME.match(name) and len(name) <= MAX_NAME):
        raise RequestError(f"secret name {name!r} is invalid: 1 to {MAX_NAME} letters, digits, "
                           "'.', '-' and '_', starting with a letter or digit")
    return name


class Secrets:
    """The cluster's secrets, as the store's meta holds them (sealed)."""

    def __init__(self, state: ClusterState, key_file: Path) -> None:
        self._state = state
        self.key_file = key_file
        self._key: SecretsKey | None = None

    # --- the key --------------------------------------------------------------------------

    def key(self, *, make: bool = False) -> SecretsKey:
        """The secrets key; made (and written) when ``make`` and there is none yet."""
        if self._key is None:
            self._key = SecretsKey.load(self.key_file)
        if self._key is None:
            if not make:
                raise ApiError(f"this controller has no secrets key ({self.key_file}); it "
                               "comes with the cluster's bootstrap or a join")
            pki.write_file(self.key_file, SecretsKey.encode(SecretsKey.new()), secret=True)
            self._key = SecretsKey.load(self.key_file)
            assert self._key is not None
        return self._key

    # --- reading --------------------------------------------------------------------------

    def get(self, namespace: str, name: str) -> Secret | None:
        raw = self._state.meta.get(_head(namespace, name))
        if raw is None:
            return None
        d = json.loads(raw)
        return Secret(namespace, name, tuple(Version(**v) for v in d["versions"]),
                      d["create_time_ns"])

    def require(self, namespace: str, name: str) -> Secret:
        s = self.get(namespace, name)
        if s is None:
            raise NotFoundError(f"no secret {name!r} in namespace {namespace!r}")
        return s

    def listing(self, namespace: str, prefix: str = "") -> list[Secret]:
        start = f"{META_PREFIX}{namespace}/{prefix}"
        found = []
        for k in sorted(self._state.meta):
            if k.startswith(start) and "#" not in k:
                s = self.get(namespace, k[len(META_PREFIX) + len(namespace) + 1:])
                if s is not None:
                    found.append(s)
        return found

    def value(self, namespace: str, name: str, version: int = 0) -> tuple[int, bytes]:
        """(version, plaintext) of a version (0: the latest)."""
        s = self.require(namespace, name)
        version = version or s.latest.version
        raw = self._state.meta.get(_body(namespace, name, version))
        if raw is None:
            kept = ", ".join(str(v.version) for v in s.versions)
            raise NotFoundError(f"secret {name!r} has no version {version} (kept: {kept})")
        return version, self.key().open(_aad(namespace, name, version), json.loads(raw))

    def used_by(self, namespace: str, name: str) -> list[str]:
        """Jobs of the namespace that run and name the secret."""
        state = self._state
        return sorted(job for (ns, job), versions in state.jobs.items()
                      if ns == namespace and not versions[-1].stop
                      and any(name in t.secret_names for g in state.model(versions[-1]).groups
                              for t in g.tasks))

    def for_allocations(self, allocs: Iterable[node_pb2.Allocation]) -> list[
            controller_pb2.SecretValue]:
        """The latest value of every secret these allocations' tasks read (those that exist
        and open; a task waits for a missing one)."""
        wanted: set[tuple[str, str]] = set()
        for a in allocs:
            group = self._state.group_spec(a)
            if group is not None:
                for t in group.tasks:
                    wanted.update((a.namespace or "default", n) for n in t.secret_names)
        out = []
        for ns, name in sorted(wanted):
            try:
                version, plain = self.value(ns, name)
            except ApiError:
                continue
            out.append(controller_pb2.SecretValue(namespace=ns, name=name, version=version,
                                                  value=plain))
        return out

    # --- changing -------------------------------------------------------------------------

    def put(self, namespace: str, name: str, value: bytes, now_ns: int,
            cas: int = 0) -> tuple[Secret, Changes]:
        """A new version (the oldest past MAX_VERSIONS goes) and the change that stores it."""
        check_name(name)
        if len(value) > MAX_VALUE:
            raise RequestError(f"secret {name!r} is {len(value)} bytes; at most {MAX_VALUE} "
                               "are kept per secret")
        old = self.get(namespace, name)
        latest = old.latest.version if old is not None else 0
        if cas and cas != latest:
            raise ConflictError(f"secret {name!r} is at version {latest}, not {cas}")
        if old is None and self.count() >= MAX_SECRETS:
            raise RequestError(f"this cluster holds {MAX_SECRETS} secrets, the most it keeps")
        kept = list(old.versions) if old is not None else []
        new = Version(latest + 1, now_ns, len(value))
        kept.append(new)
        gone, kept = kept[:-MAX_VERSIONS], kept[-MAX_VERSIONS:]
        total = self.total_bytes() + len(value) - sum(v.size for v in gone)
        if total > MAX_TOTAL:
            raise RequestError(f"the cluster's secrets would hold {total} bytes, more than "
                               f"{MAX_TOTAL}; remove unused secrets first")
        secret = Secret(namespace, name, tuple(kept),
                        old.create_time_ns if old is not None else now_ns)
        sealed = self.key(make=True).seal(_aad(namespace, name, new.version), value)
        return secret, Changes(
            meta={_head(namespace, name): _encode(secret),
                  _body(namespace, name, new.version): json.dumps(sealed, sort_keys=True)},
            delete_meta=[_body(namespace, name, v.version) for v in gone])

    def delete(self, namespace: str, name: str) -> tuple[Secret, Changes]:
        s = self.require(namespace, name)
        users = self.used_by(namespace, name)
        if users:
            raise ApiError(f"secret {name!r} is used by job(s) {', '.join(users)}; stop them or "
                           "take the secret out of them first")
        return s, Changes(delete_meta=[_head(namespace, name)] + [
            _body(namespace, name, v.version) for v in s.versions])

    def count(self) -> int:
        return sum(1 for k in self._state.meta if k.startswith(META_PREFIX) and "#" not in k)

    def total_bytes(self) -> int:
        return sum(v["size"] for k, raw in self._state.meta.items()
                   if k.startswith(META_PREFIX) and "#" not in k
                   for v in json.loads(raw)["versions"])


def _head(namespace: str, name: str) -> str:
    return f"{META_PREFIX}{namespace}/{name}"


def _body(namespace: str, name: str, version: int) -> str:
    return f"{META_PREFIX}{namespace}/{name}#{version}"


def _aad(namespace: str, name: str, version: int) -> bytes:
    return f"orch secret {namespace}/{name}#{version}".encode()


def _encode(s: Secret) -> str:
    return json.dumps({"create_time_ns": s.create_time_ns,
                       "versions": [{"version": v.version, "create_time_ns": v.create_time_ns,
                                     "size": v.size} for v in s.versions]}, sort_keys=True)


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()
