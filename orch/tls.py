"""mTLS material and roles: a cluster CA, certificates that say what their holder may be.

Every certificate carries its role in its subject's organizational unit and as
a SAN URI ``orch://role/<role>``: ``controller``, ``agent``, ``cli``, or ``etcd`` (an
etcd member's server certificate, which no orch API admits). A server
refuses a peer whose certificate is not signed by the cluster's CA (TLS does
that) or whose role may not call the service (``roles_of`` + the API's checks):
an agent's certificate cannot drive the operator API, a person's cannot pose as
an agent.

    orchctl tls ca create --dir /etc/orch/tls
    orchctl tls cert create --role controller --name ctl-1 --ip 10.0.0.1 --dir /etc/orch/tls
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from orch.errors import ConfigError

log = logging.getLogger("tls")
ROLES = ("controller", "agent", "cli", "etcd")
ROLE_URI = "orch://role/"


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    """Where a daemon's or a client's TLS material is; every field empty: TLS is off."""

    ca_file: str = ""
    """The cluster CA's certificate (PEM): peers must be signed by it."""
    cert_file: str = ""
    """This process's certificate (PEM), signed by the CA."""
    key_file: str = ""
    """Its private key (PEM)."""

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


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write(path: Path, data: bytes, *, secret: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def create_ca(directory: Path, *, name: str = "orch cluster CA", days: int = 3650) -> tuple[Path, Path]:
    """A new CA key and self-signed certificate: ``ca.pem``, ``ca-key.pem`` (mode 0600)."""
    cert_path, key_path = directory / "ca.pem", directory / "ca-key.pem"
    if cert_path.exists() or key_path.exists():
        raise ConfigError(f"a CA exists already in {directory}; remove it first to make a new one")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "orch")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    _write(key_path, key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), secret=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), secret=False)
    return cert_path, key_path


def create_cert(ca_dir: Path, out_dir: Path, *, role: str, name: str,
                ips: list[str] = (), dns: list[str] = (),  # type: ignore[assignment]
                days: int = 825) -> tuple[Path, Path]:
    """A certificate for ``role`` signed by the CA in ``ca_dir``: ``<name>.pem``, ``<name>-key.pem``.

    Server roles (controller, agent, etcd) get the IPs and names they serve on as SANs
    (127.0.0.1 and localhost are always added); every certificate works as a client.
    """
    if role not in ROLES:
        raise ConfigError(f"role must be one of {', '.join(ROLES)}, got {role!r}", where="--role")
    try:
        ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
        ca_key = serialization.load_pem_private_key((ca_dir / "ca-key.pem").read_bytes(), None)
    except OSError as e:
        raise ConfigError(f"cannot read the CA in {ca_dir}: {e.strerror} (make one with "
                          "`orchctl tls ca create`)") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{ca_dir / 'ca-key.pem'} is not an EC key made by orchctl")
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(ROLE_URI + role),
                                    x509.DNSName("localhost")]
    sans += [x509.DNSName(d) for d in dns]
    for ip in ["127.0.0.1", *ips]:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise ConfigError(f"not an IP address: {ip!r}", where="--ip") from None
    usage = [ExtendedKeyUsageOID.CLIENT_AUTH]  # (etcd: its members call each other)
    if role != "cli":
        usage.append(ExtendedKeyUsageOID.SERVER_AUTH)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                                     x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                                     x509.NameAttribute(NameOID.ORGANIZATION_NAME, "orch")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(min(_now() + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
            .add_extension(x509.SubjectAlternativeName(list(dict.fromkeys(sans))), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = out_dir / f"{name}.pem", out_dir / f"{name}-key.pem"
    _write(key_path, key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), secret=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), secret=False)
    return cert_path, key_path


def roles_of(pem: bytes) -> set[str]:
    """The roles a peer's certificate (PEM) carries (its SAN URIs ``orch://role/...``)."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return set()
    return {u[len(ROLE_URI):] for u in san.get_values_for_type(x509.UniformResourceIdentifier)
            if u.startswith(ROLE_URI)}


# --- gRPC ---------------------------------------------------------------------------------------


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """Server TLS that requires every client to present a certificate signed by the CA."""
    ca, cert, key = tls.load()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                       require_client_auth=True)


def open_channel(addr: str, tls: TlsConfig | None, options: Sequence[tuple[str, Any]] = (),
                 **kw: Any) -> grpc.aio.Channel:
    """A channel to ``addr``: mTLS with this process's certificate when ``tls`` is enabled."""
    if tls is None or not tls.enabled:
        return grpc.aio.insecure_channel(addr, options=list(options), **kw)
    ca, cert, key = tls.load()
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                         certificate_chain=cert)
    return grpc.aio.secure_channel(addr, creds, options=list(options), **kw)


def peer_roles(context: grpc.aio.ServicerContext[Any, Any]) -> set[str] | None:
    """The roles in the peer's certificate; None when the connection is not mTLS."""
    auth = context.auth_context()
    pems = list(auth.get("x509_pem_cert") or ())
    if not pems:
        return None
    return roles_of(pems[0])


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
