"""The cluster's trust, held by the controllers (as Swarm's managers hold it).

- **Bootstrap** (the first controller, once, ``--bootstrap``): the cluster CA, this
  controller's certificate, the operator's (role ``cli``) with an ``orchctl.toml`` beside
  it, and the first gossip key; at its first term, the two join secrets and the
  management token (``bootstrap_state``).
- **Join** (every other controller, with a controller join token; ``orch.join``): its
  certificate, the CA with its key, the gossip keys.
- **Serving**: the TLS the controller answers with (its own certificate; to joiners, the
  certificates of the join authorities their tokens make), renewed before it ends with no
  restart; who a peer is (``Peer``); issuing certificates to joining and renewing nodes.

The join secrets, the key each node's certificates name, the controllers and the removed
nodes live in the store's meta, so every controller serves the same answers.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509

from controller.acl import HasMeta
from controller.nodes import NODE_KEY, REVOKED
from controller.secrets import SecretsKey
from controller.store.base import Changes
from orch import keyring, pki
from orch.errors import RequestError
from orch.gossip.crypto import new_key as new_gossip_key
from orch.tls import TlsConfig, load_peer_certificate, peer_pem
from orch.v1 import controller_pb2

log = logging.getLogger("controller.trust")

META_JOIN = "join/"
"""``join/<role>`` -> the current join secret of that role."""
META_REVOKED = REVOKED
"""``revoked/<node id>`` -> when the node was removed: its certificates are refused."""
META_NODE_KEY = NODE_KEY
"""``node-key/<node id>`` -> SHA-256 of the key that node's certificates name."""
META_CONTROLLER = "controller/"
"""``controller/<name>`` -> its gRPC address: the controllers the keyring reaches."""
OPERATOR_DIR = "operator"
"""Under the pki folder of the controller that bootstrapped the cluster: the operator's CA,
certificate and key, the management token, ``orchctl.toml``, and the current join tokens
(``join-agent.token``, ``join-controller.token``: rewritten at every term, so a rotation
made elsewhere shows there once this controller leads again)."""
MAX_PEERS_CACHED = 4096
"""Members' certificates whose identity is remembered (checking one costs a parse and a
signature), least recently seen forgotten first: each is a digest and a ``Peer`` (about
0.5 KB), so the cache stays under 2 MB however many nodes come and go. Joiners' are not
kept: each joiner's certificate serves one Join call."""


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is calling, as the certificate presented on this connection says."""

    roles: frozenset[str] = frozenset()
    """Roles the cluster CA gave it (empty: none, or a certificate this CA did not issue)."""
    node_id: str = ""
    name: str = ""
    joining: str = ""
    """A join token's holder asking to join as this role ("" otherwise)."""
    revoked: bool = False

    @property
    def anonymous(self) -> bool:
        return not self.roles and not self.joining


PLAIN = Peer()
"""A connection without TLS (loopback only): no certificate, so no identity."""


def bootstrap(bundle: pki.Bundle, data_dir: str, *, name: str, ips: list[str],
              address: str) -> bool:
    """Make the cluster's trust in ``bundle`` unless it is there; whether it was made."""
    if bundle.ca.exists():
        return False
    ca = pki.Authority.generate()
    assert ca.key is not None
    pki.write_file(bundle.ca_key, pki.key_pem(ca.key), secret=True)
    pki.write_file(bundle.ca, ca.pem, secret=False)
    key = bundle.own_key()
    pki.write_file(bundle.cert, pki.cert_pem(ca.issue(key.public_key(), role="controller",
                                                      name=name, ips=ips)), secret=False)
    operator = bundle.dir / OPERATOR_DIR
    cli_key = pki.new_key()
    pki.write_file(operator / "ca.pem", ca.pem, secret=False)
    pki.write_file(operator / "cli-key.pem", pki.key_pem(cli_key), secret=True)
    pki.write_file(operator / "cli.pem", pki.cert_pem(ca.issue(
        cli_key.public_key(), role="cli", name="operator", days=pki.CA_DAYS)), secret=False)
    pki.write_file(operator / "orchctl.toml", (
        "# orchctl's configuration for this cluster's operator (written at bootstrap)\n"
        f'address = "{address}"\n'
        'tls_ca = "ca.pem"\ntls_cert = "cli.pem"\ntls_key = "cli-key.pem"\n'
        'token_file = "management.token"\n').encode(), secret=True)
    if not (Path(data_dir) / keyring.FILE).exists():
        keyring.save(data_dir, [new_gossip_key()])
    if not bundle.secrets_key.exists():
        pki.write_file(bundle.secrets_key, SecretsKey.encode(SecretsKey.new()), secret=True)
    log.warning("bootstrapped the cluster's trust: a new CA", extra={
        "ca_digest": ca.digest, "pki": str(bundle.dir)})
    return True


def server_ips(address: str) -> list[str]:
    """The IP addresses a server certificate for ``address`` (host:port) names."""
    host = address.rpartition(":")[0] or address
    out = []
    for candidate in (host, *_host_ips()):
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in candidate else socket.AF_INET, candidate)
        except OSError:
            continue
        if candidate not in out and candidate != "0.0.0.0":
            out.append(candidate)
    return out


def _host_ips() -> list[str]:
    try:
        return sorted({str(a[4][0]) for a in socket.getaddrinfo(socket.gethostname(), None)})
    except OSError:
        return []


class Trust:
    """What a TLS-serving controller knows of the cluster's trust: the CA (with its key when
    this controller issues), its own certificate, and (in the store's meta) the join
    secrets, the nodes' keys and the removed nodes."""

    def __init__(self, tls: TlsConfig, state: HasMeta, *, name: str, ips: list[str],
                 ca_key: Path | None = None, cert_days: float = pki.CERT_DAYS,
                 secrets_key: Path | None = None) -> None:
        self.tls = tls
        self.secrets_key = secrets_key
        """The cluster's secrets key, handed to the controllers that join."""
        self.state = state
        self.name = name
        self.ips = ips
        self.cert_days = cert_days
        ca, _, _ = tls.load()
        self.authority = pki.Authority.load(
            ca, ca_key.read_bytes() if ca_key is not None and ca_key.exists() else None)
        self._lock = threading.Lock()  # the credentials fetcher runs on gRPC's threads
        self._signature: tuple[Any, ...] = ()
        self._join: dict[tuple[str, str], tuple[pki.Authority, bytes, bytes]] = {}
        self._peers: OrderedDict[bytes, Peer] = OrderedDict()
        self._roles: dict[frozenset[str], frozenset[str]] = {}

    @property
    def meta(self) -> dict[str, str]:
        """The store's meta, as this controller holds it."""
        return self.state.meta

    @classmethod
    def of(cls, data_dir: str, tls: TlsConfig, state: HasMeta, *, name: str, address: str,
           cert_days: float = pki.CERT_DAYS) -> Trust | None:
        """The trust of a controller: the configured TLS files, or else those a bootstrap
        or a join left in ``data_dir``; None when it has neither (plain text, loopback only)."""
        bundle = pki.Bundle.of(data_dir)
        if tls.enabled:
            return cls(tls, state, name=name, ips=server_ips(address), cert_days=cert_days,
                       secrets_key=bundle.secrets_key)
        if not bundle.complete():
            return None
        return cls(TlsConfig.of_bundle(bundle), state, name=name, ips=server_ips(address),
                   ca_key=bundle.ca_key, cert_days=cert_days, secrets_key=bundle.secrets_key)

    # --- serving --------------------------------------------------------------------------------

    def server_credentials(self) -> grpc.ServerCredentials:
        """TLS that requires a client certificate from the cluster CA, or from a join
        authority of a current secret (joiners); the certificates change without a restart."""
        fetch: Any = self._fetch  # gRPC takes None from it as "no change" (typed too narrowly)
        return grpc.dynamic_ssl_server_credentials(self._configuration(), fetch,
                                                   require_client_authentication=True)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            with self._lock:
                signature = self._current_signature()
                if signature == self._signature:
                    return None
            return self._configuration()
        except Exception:  # a handshake must never break on this: keep the last one
            log.exception("could not update the TLS credentials; the previous ones stay")
            return None

    def _current_signature(self) -> tuple[Any, ...]:
        return (Path(self.tls.cert_file).stat().st_mtime_ns,
                *(self.meta.get(META_JOIN + r, "") for r in pki.JOIN_ROLES))

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        with self._lock:
            self._signature = self._current_signature()
            _, cert, key = self.tls.load()
            pairs = [(key, cert)]
            roots = [self.authority.pem]
            for role in pki.JOIN_ROLES:
                joined = self._join_identity(role)
                if joined is not None:
                    authority, cert, key = joined
                    pairs.append((key, cert))
                    roots.append(authority.pem)
            return grpc.ssl_server_certificate_configuration(pairs, root_certificates=b"".join(roots))

    def _join_identity(self, role: str) -> tuple[pki.Authority, bytes, bytes] | None:
        secret = self.meta.get(META_JOIN + role, "")
        if not secret or self.authority.key is None:
            return None  # nobody may join through a controller that cannot issue
        cached = self._join.get((role, secret))
        if cached is None:
            authority = pki.join_authority(secret, role)
            cert, key = pki.join_server_identity(authority, role)
            cached = self._join[(role, secret)] = (authority, cert, key)
            for stale in [k for k in self._join if k[0] == role and k[1] != secret]:
                del self._join[stale]
        return cached

    def identify(self, context: grpc.aio.ServicerContext[Any, Any]) -> Peer:
        """Who the peer of this call is (``PLAIN`` without a certificate)."""
        pem = peer_pem(context)
        if pem is None:
            return PLAIN
        seen = hashlib.sha256(pem).digest()  # not the certificate: ~1 KB, and parsed each time
        peer = self._peers.get(seen)
        if peer is None:
            cert = load_peer_certificate(pem)
            if cert is None:
                return PLAIN
            peer = self._identify(cert)
            if peer.roles:  # not a joiner's: its certificate is made for one Join call
                self._peers[seen] = peer
                if len(self._peers) > MAX_PEERS_CACHED:
                    self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(seen)
        if peer.node_id and META_REVOKED + peer.node_id in self.meta:
            return Peer(revoked=True, node_id=peer.node_id, name=peer.name)
        return peer

    def _identify(self, cert: x509.Certificate) -> Peer:
        if self.authority.issued(cert):
            who = pki.identity_of(cert)
            roles = self._roles.setdefault(who.roles, who.roles)  # one set per combination
            return Peer(roles=roles, node_id=who.node_id, name=who.name)
        for role in pki.JOIN_ROLES:
            joined = self._join_identity(role)
            if joined is not None and joined[0].issued(cert):
                return Peer(joining=role)
        return Peer()

    # --- join secrets -------------------------------------------------------------------------

    def token(self, role: str) -> pki.JoinToken:
        secret = self.meta.get(META_JOIN + role, "")
        if not secret:
            raise RequestError(f"this cluster has no {role} join token yet (the leader makes "
                               "them at its first term)")
        return pki.JoinToken(role, self.authority.digest, secret)

    @staticmethod
    def new_secrets(meta: dict[str, str], rotate: tuple[str, ...] = ()) -> Changes:
        """Join secrets for the roles that have none (and new ones for ``rotate``)."""
        return Changes(meta={META_JOIN + r: pki.new_secret() for r in pki.JOIN_ROLES
                             if r in rotate or not meta.get(META_JOIN + r)})

    # --- issuing ------------------------------------------------------------------------------

    def admit(self, req: controller_pb2.JoinRequest, peer: Peer) -> tuple[str, Changes]:
        """Check a join request; the role it joins as and what to record. RequestError (or
        ConfigError for a malformed request) says why it is refused; nothing changes then."""
        token = pki.JoinToken.parse(req.token)
        if not peer.joining or peer.joining != token.role:
            raise RequestError("the join token does not match the connection it came on")
        secret = self.meta.get(META_JOIN + token.role, "")
        if not secret or not token.matches(secret) or token.ca_digest != self.authority.digest:
            raise RequestError(f"the {token.role} join token is not current (rotated, or another "
                               "cluster's): ask for the current one with `orchctl cluster "
                               f"join-token {token.role}`")
        key_digest = pki.key_digest(pki.csr_key(req.csr))
        changes = Changes()
        if token.role == "agent":
            node_id = pki.check_node_id(req.node_id)
            if META_REVOKED + node_id in self.meta:
                raise RequestError(f"node {node_id} was removed from this cluster: it cannot join "
                                   "again with that id (remove the node-id file in its data "
                                   "directory to join as a new node)")
            known = self.meta.get(META_NODE_KEY + node_id)
            if known is not None and known != key_digest:
                raise RequestError(f"node {node_id} is a member already, with another key: a "
                                   "node joins once (remove it with `orchctl node rm` first)")
            changes.meta[META_NODE_KEY + node_id] = key_digest
        return token.role, changes

    def renewal(self, csr: bytes, peer: Peer) -> tuple[str, Changes]:
        """The role a member renews as, and what to record (an agent's new key)."""
        role = "agent" if "agent" in peer.roles else "controller"
        digest = pki.key_digest(pki.csr_key(csr))
        if role == "agent" and peer.node_id and self.meta.get(META_NODE_KEY + peer.node_id) != digest:
            return role, Changes(meta={META_NODE_KEY + peer.node_id: digest})
        return role, Changes()

    def issue(self, csr: bytes, *, role: str, name: str, node_id: str = "",
              ips: list[str] | None = None) -> x509.Certificate:
        key = pki.csr_key(csr)
        if self.authority.key is None:
            raise RequestError("this controller holds no CA key: it cannot issue certificates")
        return self.authority.issue(key, role=role, name=name, node_id=node_id,
                                    ips=[ip for ip in ips or [] if _is_ip(ip)],
                                    days=self.cert_days)

    def credentials(self, cert: x509.Certificate, *, gossip_keys: list[str], cluster_id: str,
                    with_ca_key: bool) -> controller_pb2.Credentials:
        out = controller_pb2.Credentials(
            certificate=pki.cert_pem(cert), ca=self.authority.pem, gossip_keys=gossip_keys,
            cluster_id=cluster_id,
            not_after_ns=int(cert.not_valid_after_utc.timestamp() * 1e9))
        if with_ca_key and self.authority.key is not None:
            out.ca_key = pki.key_pem(self.authority.key)
            if self.secrets_key is not None and self.secrets_key.exists():
                out.secrets_key = self.secrets_key.read_bytes()
        return out

    def renew_own(self, fraction: float = 1 / 3) -> bool:
        """Issue this controller a new certificate when less than ``fraction`` of its life
        is left; whether it did. Connections made from then on use it."""
        if self.authority.key is None:
            return False
        cert = pki.load_cert(Path(self.tls.cert_file).read_bytes(), self.tls.cert_file)
        if not pki.renewal_due(cert, fraction):
            return False
        key = pki.load_key(Path(self.tls.key_file).read_bytes(), self.tls.key_file)
        fresh = self.authority.issue(key.public_key(), role="controller", name=self.name,
                                     ips=self.ips, days=self.cert_days)
        pki.write_file(Path(self.tls.cert_file), pki.cert_pem(fresh), secret=False)
        log.info("renewed this controller's certificate", extra={
            "not_after": fresh.not_valid_after_utc.isoformat()})
        return True


def _is_ip(text: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, text)
            return True
        except OSError:
            continue
    return False

