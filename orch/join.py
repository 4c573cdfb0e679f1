"""Joining a cluster with a join token, and renewing the certificate it gave (a node's side).

``join`` asks a controller for this daemon's certificate: the TLS handshake proves to
each side that the other holds the token's secret (``orch.pki``), the request carries a
certificate request signed by the daemon's own key (made here, never sent), and the CA
that comes back must be the one whose digest the token names. What it gets lands in
``<data_dir>/pki`` (and the gossip keys in the keyring file), so a restart needs no
token: the daemon is a member from then on, and renews its certificate over its own
mTLS (``renew``) before it ends.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import grpc

from orch import keyring, pki
from orch.errors import ConfigError
from orch.tls import TlsConfig, open_channel
from orch.v1 import controller_pb2, controller_pb2_grpc

log = logging.getLogger("join")
JOIN_TIMEOUT = 15.0
"""Seconds one controller has to answer a join or a renewal."""
MAX_CONTROLLERS = 16
"""Controllers one join tries at most (the given ones and the leaders they name)."""


async def join(token: pki.JoinToken, controllers: Sequence[str], bundle: pki.Bundle, *,
               data_dir: str, name: str, node_id: str = "", ips: Sequence[str] = (),
               address: str = "") -> controller_pb2.Credentials:
    """Join through the first of ``controllers`` that answers; ConfigError saying why none
    took this token."""
    if not controllers:
        raise ConfigError("a join token needs a controller address to join through "
                          "(--controller ADDR)", where="controllers")
    key = bundle.own_key()
    request = controller_pb2.JoinRequest(token=str(token), csr=pki.csr_pem(key, name),
                                         node_id=node_id, name=name, ips=list(ips),
                                         address=address)
    authority = pki.join_authority(token.secret, token.role)
    cert, cert_key = pki.joiner_identity(authority, token.role)
    creds = grpc.ssl_channel_credentials(root_certificates=authority.pem,
                                         private_key=cert_key, certificate_chain=cert)
    reasons = []
    todo = list(dict.fromkeys(controllers))
    for addr in todo:
        async with grpc.aio.secure_channel(addr, creds, options=[
                ("grpc.ssl_target_name_override", pki.join_dns(token.role))]) as channel:
            try:
                got = await controller_pb2_grpc.NodeServiceStub(channel).Join(
                    request, timeout=JOIN_TIMEOUT)
            except grpc.aio.AioRpcError as e:
                leader = _leader_named(e)
                if leader:  # a follower: joins are recorded by the leader
                    if leader not in todo and len(todo) < MAX_CONTROLLERS:
                        todo.append(leader)
                    continue
                reasons.append(f"{addr}: {_why(e)}")
                if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    continue
                break  # a controller that answered and refused: the others would too
        ca = pki.load_cert(got.ca, "the CA the controller sent")
        if pki.digest(ca) != token.ca_digest:
            raise ConfigError(f"the controller at {addr} answered with another CA than the join "
                              "token names: refusing it (is this the right cluster?)")
        _save(bundle, got, data_dir)
        log.info("joined the cluster", extra={"controller": addr, "role": token.role,
                                              "cluster_id": got.cluster_id})
        return got
    raise ConfigError("could not join the cluster: " + "; ".join(reasons))


async def renew(bundle: pki.Bundle, controllers: Sequence[str], *, name: str,
                ips: Sequence[str] = ()) -> controller_pb2.Credentials:
    """A new certificate for the same identity, asked over this daemon's own mTLS."""
    request = controller_pb2.RenewRequest(csr=pki.csr_pem(bundle.own_key(), name), ips=list(ips))
    tls = TlsConfig.of_bundle(bundle)
    reasons = []
    for addr in controllers:
        async with open_channel(addr, tls, server=pki.role_dns("controller")) as channel:
            try:
                got = await controller_pb2_grpc.NodeServiceStub(channel).Renew(
                    request, timeout=JOIN_TIMEOUT)
            except grpc.aio.AioRpcError as e:
                reasons.append(f"{addr}: {_why(e)}")
                continue
        _save(bundle, got, "")
        return got
    raise ConfigError("could not renew the certificate: " + "; ".join(reasons or ["no controller"]))


def due(bundle: pki.Bundle, fraction: float = 1 / 3) -> bool:
    """Whether this daemon's certificate has less than ``fraction`` of its life left."""
    return pki.renewal_due(bundle.certificate(), fraction)


def _save(bundle: pki.Bundle, got: controller_pb2.Credentials, data_dir: str) -> None:
    pki.load_cert(got.certificate, "the certificate the controller sent")
    pki.write_file(bundle.ca, got.ca, secret=False)
    if got.ca_key:
        pki.write_file(bundle.ca_key, got.ca_key, secret=True)
    if got.secrets_key:
        pki.write_file(bundle.secrets_key, got.secrets_key, secret=True)
    pki.write_file(bundle.cert, got.certificate, secret=False)
    if got.cluster_id and not bundle.cluster_id():  # pinned once: a renewal never moves it
        pki.write_file(bundle.cluster_file, got.cluster_id.encode() + b"\n", secret=False)
    if data_dir and got.gossip_keys:
        keyring.save(data_dir, list(got.gossip_keys))


def _leader_named(e: grpc.aio.AioRpcError) -> str:
    if e.code() != grpc.StatusCode.FAILED_PRECONDITION:
        return ""
    return next((str(v) for k, v in (e.trailing_metadata() or ()) if k == "orch-leader"), "")


def _why(e: grpc.aio.AioRpcError) -> str:
    if e.code() == grpc.StatusCode.UNAVAILABLE:
        return ("no TLS handshake: the controller does not know this token's secret (rotated, "
                "or another cluster's), or it cannot be reached")
    return e.details() or e.code().name
