"""Who a caller is, from the certificate on its connection (``Trust.identify``): the
identity is remembered per certificate, in a bounded cache that holds a digest and the
identity (never the certificate), least recently seen forgotten first."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from controller import trust as trust_mod
from controller.trust import PLAIN, Trust
from orch import pki
from orch.tls import TlsConfig


@dataclass
class Meta:
    meta: dict[str, str] = field(default_factory=dict)
    meta_index: int = 0


class Ctx:
    """The part of a gRPC servicer context ``identify`` reads."""

    def __init__(self, pem: bytes | None) -> None:
        self.pem = pem

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self.pem]} if self.pem is not None else {}


def _trust(tmp: Path) -> tuple[Trust, pki.Authority]:
    ca = pki.Authority.generate()
    key = pki.new_key()
    pki.write_file(tmp / "ca.pem", ca.pem, secret=False)
    pki.write_file(tmp / "key.pem", pki.key_pem(key), secret=True)
    pki.write_file(tmp / "cert.pem", pki.cert_pem(ca.issue(key.public_key(), role="controller",
                                                         name="c1")), secret=False)
    assert ca.key is not None
    pki.write_file(tmp / "ca-key.pem", pki.key_pem(ca.key), secret=True)
    tls = TlsConfig(ca_file=str(tmp / "ca.pem"), cert_file=str(tmp / "cert.pem"),
                    key_file=str(tmp / "key.pem"))
    return Trust(tls, Meta(), name="c1", ips=[], ca_key=tmp / "ca-key.pem"), ca


def _agent(ca: pki.Authority) -> tuple[str, bytes]:
    node_id = str(uuid.uuid4())
    cert = ca.issue(pki.new_key().public_key(), role="agent", name=f"n-{node_id[:8]}",
                    node_id=node_id)
    return node_id, pki.cert_pem(cert)


def _identify(t: Trust, pem: bytes | None) -> Any:
    return t.identify(Ctx(pem))  # type: ignore[arg-type]


def test_a_node_is_known_by_its_certificate_and_remembered(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    t, ca = _trust(tmp_path)
    node_id, pem = _agent(ca)
    first = _identify(t, pem)
    assert first.node_id == node_id
    assert first.roles == frozenset({"agent"})
    monkeypatch.setattr(trust_mod, "load_peer_certificate", lambda pem: pytest.fail(
        "a remembered certificate is parsed again"))
    assert _identify(t, pem) == first
    assert all(len(k) == 32 for k in t._peers)  # a digest, not the certificate


def test_no_certificate_or_a_foreign_one_names_nobody(tmp_path: Path) -> None:
    t, _ = _trust(tmp_path)
    assert _identify(t, None) is PLAIN
    assert _identify(t, b"not a certificate") is PLAIN
    _, foreign = _agent(pki.Authority.generate())
    assert _identify(t, foreign).anonymous


def test_the_cache_is_bounded_and_forgets_the_least_recently_seen(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trust_mod, "MAX_PEERS_CACHED", 3)
    t, ca = _trust(tmp_path)
    nodes = [_agent(ca) for _ in range(5)]
    for _, pem in nodes[:3]:
        _identify(t, pem)
    _identify(t, nodes[0][1])  # seen again: the most recent now
    for _, pem in nodes[3:]:
        _identify(t, pem)
    assert len(t._peers) == 3
    remembered = {p.node_id for p in t._peers.values()}
    assert remembered == {nodes[0][0], nodes[3][0], nodes[4][0]}


def test_a_removed_node_is_refused_even_when_remembered(tmp_path: Path) -> None:
    t, ca = _trust(tmp_path)
    node_id, pem = _agent(ca)
    assert not _identify(t, pem).revoked
    t.state.meta[trust_mod.META_REVOKED + node_id] = "1"
    assert _identify(t, pem).revoked


def test_a_joiner_is_known_but_not_remembered(tmp_path: Path) -> None:
    """A joiner's certificate serves one Join call: remembering it would only push out
    members' identities."""
    t, _ = _trust(tmp_path)
    secret = pki.new_secret()
    t.state.meta[trust_mod.META_JOIN + "agent"] = secret
    cert, _key = pki.joiner_identity(pki.join_authority(secret, "agent"), "agent")
    assert _identify(t, cert).joining == "agent"
    assert not t._peers


def test_members_share_one_set_of_roles(tmp_path: Path) -> None:
    t, ca = _trust(tmp_path)
    a, b = (_identify(t, _agent(ca)[1]) for _ in range(2))
    assert a.roles is b.roles
