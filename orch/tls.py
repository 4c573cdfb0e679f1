"""mTLS on every gRPC connection: where a process's certificate is, and its peers' roles.

A server refuses a peer whose certificate is not signed by the cluster's CA (TLS does
that) or whose role may not call the service (``require_role`` and the controller's
authorization gate): an agent's certificate cannot drive the operator API, a person's
cannot pose as an agent. A client checks the server's role the same way: it connects
naming the server it wants (``controller.orch``, ``<node id>.node.orch``; see
``orch.pki``), and TLS refuses a certificate that does not carry that name.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509

from orch.errors import ConfigError
from orch.pki import Bundle, identity_of

log = logging.getLogger("tls")


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    """Where a daemon's or a client's TLS material is; every field empty: TLS is off."""

    ca_file: str = ""
    """The cluster CA's certificate (PEM): peers must be signed by it."""
    cert_file: str = ""
    """This process's certificate (PEM), signed by the CA."""
    key_file: str = ""
    """Its private key (PEM)."""

    @classmethod
    def of_bundle(cls, bundle: Bundle) -> TlsConfig:
        """The material a daemon keeps in its ``pki`` folder (made by bootstrap or join)."""
        return cls(ca_file=str(bundle.ca), cert_file=str(bundle.cert), key_file=str(bundle.key))

    @property
    def enabled(self) -> bool:
        return bool(self.ca_file or self.cert_file or self.key_file)

    def load(self) -> tuple[bytes, bytes, bytes]:
        """(CA, certificate, key) bytes; ConfigError naming a missing or unreadable file."""
        out = []
        for field, path in (("ca_file", self.ca_file), ("cert_file", self.cert_file),
                            ("key_file", self.key_file)):
            if not path:
                raise ConfigError("mTLS needs ca_file, cert_file and key_file", where=f"tls.{field}")
            try:
                out.append(Path(path).read_bytes())
            except OSError as e:
                raise ConfigError(f"cannot read {path}: {e.strerror}", where=f"tls.{field}") from None
        return out[0], out[1], out[2]


# --- gRPC ---------------------------------------------------------------------------------------


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """Server TLS that requires every client to present a certificate signed by the CA.
    The files are read again when the certificate file changes (a renewal): connections
    made from then on get the new one, with no restart."""
    ca, cert, key = tls.load()
    seen = [_mtime(tls.cert_file)]

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        now = _mtime(tls.cert_file)
        if now == seen[0]:
            return None
        try:
            ca, cert, key = tls.load()
        except ConfigError as e:
            log.warning("cannot read the renewed certificate; the previous one stays",
                        extra={"error": str(e)})
            return None
        seen[0] = now
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    fetcher: Any = fetch  # gRPC takes None from it as "no change" (typed too narrowly)
    return grpc.dynamic_ssl_server_credentials(
        grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca), fetcher,
        require_client_authentication=True)


def _mtime(path: str) -> int:
    try:
        return Path(path).stat().st_mtime_ns
    except OSError:
        return 0


def open_channel(addr: str, tls: TlsConfig | None, options: Sequence[tuple[str, Any]] = (),
                 *, server: str = "", **kw: Any) -> grpc.aio.Channel:
    """A channel to ``addr``: mTLS with this process's certificate when ``tls`` is enabled.

    ``server`` is the name the server's certificate must carry (``controller.orch``); ""
    checks the address instead (an etcd member's certificate)."""
    creds, opts = _channel_credentials(tls, options, server)
    if creds is None:
        return grpc.aio.insecure_channel(addr, options=opts, **kw)
    return grpc.aio.secure_channel(addr, creds, options=opts, **kw)


def open_blocking_channel(addr: str, tls: TlsConfig | None,
                          options: Sequence[tuple[str, Any]] = (), *, server: str = "") -> grpc.Channel:
    """``open_channel`` for blocking calls (a thread of its own, not an event loop)."""
    creds, opts = _channel_credentials(tls, options, server)
    if creds is None:
        return grpc.insecure_channel(addr, options=opts)
    return grpc.secure_channel(addr, creds, options=opts)


def _channel_credentials(tls: TlsConfig | None, options: Sequence[tuple[str, Any]],
                         server: str) -> tuple[grpc.ChannelCredentials | None, list[tuple[str, Any]]]:
    opts = list(options)
    if tls is None or not tls.enabled:
        return None, opts
    ca, cert, key = tls.load()
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                         certificate_chain=cert)
    if server:
        opts.append(("grpc.ssl_target_name_override", server))
    return creds, opts


def peer_pem(context: grpc.aio.ServicerContext[Any, Any]) -> bytes | None:
    """The certificate the peer presented, as PEM; None when the connection is not mTLS."""
    pems = list(context.auth_context().get("x509_pem_cert") or ())
    return bytes(pems[0]) if pems else None


def load_peer_certificate(pem: bytes | None) -> x509.Certificate | None:
    """``pem`` (from ``peer_pem``) parsed; None when there is none or it does not parse."""
    if pem is None:
        return None
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None


def peer_certificate(context: grpc.aio.ServicerContext[Any, Any]) -> x509.Certificate | None:
    """The certificate the peer presented; None when the connection is not mTLS."""
    return load_peer_certificate(peer_pem(context))


def peer_roles(context: grpc.aio.ServicerContext[Any, Any]) -> set[str] | None:
    """The roles in the peer's certificate; None when the connection is not mTLS. (Only
    for a server whose TLS trusts the cluster CA alone: see ``orch.pki``.)"""
    cert = peer_certificate(context)
    return set(identity_of(cert).roles) if cert is not None else None


async def require_role(context: grpc.aio.ServicerContext[Any, Any], allowed: frozenset[str],
                       tls_on: bool) -> None:
    """Abort the call unless the peer's certificate has one of ``allowed`` (when TLS is on)."""
    if not tls_on:
        return
    roles = peer_roles(context)
    if not roles or not roles & allowed:
        log.warning("refused a peer whose certificate has the wrong role", extra={
            "peer": context.peer(), "roles": ",".join(sorted(roles or ())) or "none",
            "allowed": ",".join(sorted(allowed))})
        await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                            f"a certificate with role {' or '.join(sorted(allowed))} is needed "
                            f"(this one has: {', '.join(sorted(roles or ())) or 'no role'})")
