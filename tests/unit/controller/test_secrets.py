"""Secrets: sealed at rest under the cluster's key, versioned, bounded, and sent only for
the tasks that read them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller import secrets as sec
from controller.secrets import Secrets, SecretsKey
from controller.state import ClusterState
from controller.store.base import Changes
from orch.errors import ApiError, ConflictError, NotFoundError, RequestError
from orch.jobspec import parse_job
from orch.jobspec.model import group_to_proto, job_from_proto
from orch.v1 import node_pb2


def _secrets(tmp_path: Path) -> tuple[ClusterState, Secrets]:
    state = ClusterState()
    return state, Secrets(state, tmp_path / "pki" / "secrets.key")


def _apply(state: ClusterState, changes: Changes) -> None:
    state.apply(changes, state.index + 1)


def test_put_get_and_versions(tmp_path: Path) -> None:
    state, s = _secrets(tmp_path)
    for i in range(sec.MAX_VERSIONS + 2):
        _, ch = s.put("default", "db", f"plaintext-value-{i}".encode(), now_ns=i)
        _apply(state, ch)
    assert s.value("default", "db") == (
        sec.MAX_VERSIONS + 2,
        f"plaintext-value-{sec.MAX_VERSIONS + 1}".encode(),
    )
    kept = [v.version for v in s.require("default", "db").versions]
    assert kept == list(range(3, sec.MAX_VERSIONS + 3))
    assert s.value("default", "db", 3)[1] == b"plaintext-value-2"
    with pytest.raises(NotFoundError, match="no version 1"):
        s.value("default", "db", 1)
    assert not any(k.endswith("#1") for k in state.meta)  # the oldest are deleted
    # the key file was made on the first put, owner-only
    assert (tmp_path / "pki" / "secrets.key").stat().st_mode & 0o777 == 0o600
    # nothing readable in the store (a plaintext long enough not to appear in ciphertext by chance)
    assert not any("plaintext-value" in v for v in state.meta.values())


def test_check_and_set_and_bounds(tmp_path: Path) -> None:
    state, s = _secrets(tmp_path)
    _apply(state, s.put("default", "a", b"1", 1)[1])
    with pytest.raises(ConflictError, match="at version 1, not 7"):
        s.put("default", "a", b"2", 2, cas=7)
    _apply(state, s.put("default", "a", b"2", 2, cas=1)[1])
    with pytest.raises(RequestError, match="at most"):
        s.put("default", "big", b"x" * (sec.MAX_VALUE + 1), 3)
    for bad in ("../x", "", "a/b", "x" * 200):
        with pytest.raises(RequestError, match="invalid"):
            s.put("default", bad, b"1", 3)


def test_a_sealed_value_opens_only_where_it_was_sealed(tmp_path: Path) -> None:
    state, s = _secrets(tmp_path)
    _apply(state, s.put("team", "a", b"alpha", 1)[1])
    _apply(state, s.put("team", "b", b"beta", 1)[1])
    # moving a's sealed value under b's name does not open
    state.meta["secret/team/b#1"] = state.meta["secret/team/a#1"]
    with pytest.raises(ApiError, match="does not open"):
        s.value("team", "b")
    # another controller with another key says which key it needs
    other = Secrets(state, tmp_path / "other.key")
    (tmp_path / "other.key").write_bytes(SecretsKey.encode(SecretsKey.new()))
    with pytest.raises(ApiError, match="does not hold"):
        other.value("team", "a")
    sealed = json.loads(state.meta["secret/team/a#1"])
    assert sealed["key"] == s.key().id


def test_a_controller_without_the_key_says_so(tmp_path: Path) -> None:
    _, s = _secrets(tmp_path)
    with pytest.raises(ApiError, match="no secrets key"):
        s.key()


JOB = """
name: web
groups:
  - name: g
    tasks:
      - name: t
        image: app:1
        secrets: [{name: db}]
        templates:
          - {destination: local/x, data: '{{ secret("api") }}'}
      - name: u
        image: app:1
"""


def test_delivery_and_users(tmp_path: Path) -> None:
    state, s = _secrets(tmp_path)
    for name in ("db", "api", "unused"):
        _apply(state, s.put("default", name, name.encode(), 1)[1])
    job = parse_job(JOB)
    job.version = 1
    _apply(state, Changes(put_jobs=[job]))
    group = job_from_proto(job).groups[0]
    alloc = node_pb2.Allocation(id="a1", job="web", job_version=1, group="g", node_id="n1")
    alloc.spec.CopyFrom(group_to_proto(group))
    sent = s.for_allocations([alloc])
    assert [(v.name, v.value) for v in sent] == [("api", b"api"), ("db", b"db")]
    assert s.used_by("default", "db") == ["web"]
    assert s.used_by("default", "unused") == []
    with pytest.raises(ApiError, match="used by job"):
        s.delete("default", "db")
    _, ch = s.delete("default", "unused")
    _apply(state, ch)
    assert s.get("default", "unused") is None
    assert not any(k.startswith("secret/default/unused") for k in state.meta)
