"""The cluster's certificates: a CA, what a certificate says of its holder, join tokens.

Every certificate the cluster CA issues names its holder's **role** (a SAN URI
``orch://role/<role>`` and the subject's organizational unit: ``controller``,
``agent``, ``cli``, or ``etcd``), and an agent's also its **node id**
(``orch://node/<id>``). Servers answer to a name of their role, checked by clients
instead of an address (as Nomad's ``verify_server_hostname``): a controller's
certificate carries ``controller.orch``, an agent's ``agent.orch`` and
``<node id>.node.orch``, so a client that wants a controller refuses an agent's
certificate, and a controller that calls one agent refuses another's.

A **join token** lets a new node get its certificate (as Swarm's
``SWMTKN-1-<CA digest>-<secret>``)::

    ORCHTKN-1-agent-<sha256 of the CA certificate, hex>-<secret>

The digest pins the CA: the joining node checks that the CA it is handed is that
one. The secret proves the node may join, and the controller proves it knows it
too: both derive the same **join authority** from it (an EC key and a certificate
made from the secret alone), the joiner presents a certificate it issued itself
with it, and the controller answers the server name ``<role>.join.orch`` with a
certificate issued by it. Only the two holders of the secret can do either, so the
TLS handshake itself authenticates both sides before a byte of the request moves,
on the controller's one port.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from orch.errors import ConfigError

ROLES = ("controller", "agent", "cli", "etcd")
"""The roles a certificate may carry. ``etcd`` is an etcd member's: no orch API admits it."""
JOIN_ROLES = ("agent", "controller")
"""The roles a join token admits."""
ROLE_URI = "orch://role/"
NODE_URI = "orch://node/"
JOIN_URI = "orch://join/"
DOMAIN = "orch"
CA_DAYS = 3650
"""The cluster CA's lifetime."""
CERT_DAYS = 90
"""A node's certificate's lifetime by default (Swarm's); renewed well before it ends."""
BACKDATE = dt.timedelta(minutes=5)
"""Certificates start this long before they are made: a peer whose clock is a little behind
accepts them at once."""
MAX_CSR_BYTES = 4096
"""Largest certificate request accepted (an EC P-256 request is about 400 bytes)."""
TOKEN_PREFIX = "ORCHTKN-1"
_SECRET_RE = re.compile(r"^[a-z2-7]{26}$")
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
_NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,127}$")


def role_dns(role: str) -> str:
    """The name every server of ``role`` answers to (``controller.orch``)."""
    return f"{role}.{DOMAIN}"


def node_dns(node_id: str) -> str:
    """The name the agent of one node answers to (``<node id>.node.orch``)."""
    return f"{node_id}.node.{DOMAIN}"


def join_dns(role: str) -> str:
    """The name a controller answers joiners of ``role`` to (``agent.join.orch``)."""
    return f"{role}.join.{DOMAIN}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_key(pem: bytes, where: str = "key") -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, None)
    except ValueError as e:
        raise ConfigError(f"not a PEM private key: {e}", where=where) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError("not an EC key made by orch", where=where)
    return key


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert(pem: bytes, where: str = "certificate") -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        raise ConfigError(f"not a PEM certificate: {e}", where=where) from None


def renewal_due(cert: x509.Certificate, fraction: float = 1 / 3) -> bool:
    """Whether less than ``fraction`` of a certificate's life is left (its life counted from
    when it was made, not from its backdated start)."""
    start = cert.not_valid_before_utc + BACKDATE
    life = cert.not_valid_after_utc - start
    if life <= dt.timedelta(0):
        life = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - _now() < life * fraction


def digest(cert: x509.Certificate) -> str:
    """The SHA-256 of a certificate's DER form, hex: what a join token pins."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def csr_pem(key: ec.EllipticCurvePrivateKey, name: str) -> bytes:
    """A certificate request for ``key`` (the CA decides what the certificate says)."""
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64] or "orch")]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def key_digest(key: ec.EllipticCurvePublicKey) -> str:
    """SHA-256 of a public key (its SubjectPublicKeyInfo), hex: what names a node's key."""
    return hashlib.sha256(key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def csr_key(pem: bytes) -> ec.EllipticCurvePublicKey:
    """The public key of a certificate request whose signature proves its holder has the
    private key; ConfigError otherwise."""
    if len(pem) > MAX_CSR_BYTES:
        raise ConfigError(f"the certificate request is larger than {MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_pem_x509_csr(pem)
    except ValueError as e:
        raise ConfigError(f"not a PEM certificate request: {e}") from None
    key = csr.public_key()
    if not csr.is_signature_valid or not isinstance(key, ec.EllipticCurvePublicKey) \
            or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError("the certificate request must be signed by its own EC P-256 key")
    return key


def check_node_id(node_id: str) -> str:
    """``node_id`` when it can name a node in a certificate; ConfigError otherwise."""
    if not _NODE_ID_RE.match(node_id):
        raise ConfigError(f"not a node id: {node_id[:80]!r} (letters, digits, '.', '-'; "
                          "at most 128)")
    return node_id


@dataclass(frozen=True, slots=True)
class Identity:
    """What a certificate the cluster CA issued says of its holder."""

    roles: frozenset[str]
    node_id: str = ""
    """The node an agent's certificate is bound to ("" for other roles, or a certificate
    made by hand without one: then its ``name`` binds it)."""
    name: str = ""
    """The subject's common name."""
    serial: int = 0
    not_after: dt.datetime | None = None


def identity_of(cert: x509.Certificate) -> Identity:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    roles = frozenset(u[len(ROLE_URI):] for u in uris if u.startswith(ROLE_URI))
    nodes = [u[len(NODE_URI):] for u in uris if u.startswith(NODE_URI)]
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return Identity(roles=roles, node_id=nodes[0] if nodes else "",
                    name=str(cn[0].value) if cn else "", serial=cert.serial_number,
                    not_after=cert.not_valid_after_utc)


class Authority:
    """A CA in memory: the cluster's, or a join authority derived from a join secret."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None) -> None:
        self.cert = cert
        self.key = key
        """None: this process only checks what the CA issued (it cannot issue)."""
        self.digest = digest(cert)
        self._public = cert.public_key()

    @classmethod
    def generate(cls, name: str = "orch cluster CA", days: int = CA_DAYS) -> Authority:
        key = new_key()
        return cls(_ca_cert(key, name, _now() - BACKDATE,
                            _now() + dt.timedelta(days=days)), key)

    @classmethod
    def load(cls, cert_pem_: bytes, key_pem_: bytes | None = None) -> Authority:
        return cls(load_cert(cert_pem_, "ca"), load_key(key_pem_, "ca key") if key_pem_ else None)

    @property
    def pem(self) -> bytes:
        return cert_pem(self.cert)

    def issued(self, cert: x509.Certificate) -> bool:
        """Whether this CA signed ``cert`` (and it is within its validity)."""
        if cert.issuer != self.cert.subject or not isinstance(self._public, ec.EllipticCurvePublicKey):
            return False
        algorithm = cert.signature_hash_algorithm
        if algorithm is None:
            return False
        try:
            self._public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
        except InvalidSignature:
            return False
        now = _now()
        return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc

    def issue(self, public_key: ec.EllipticCurvePublicKey, *, role: str, name: str,
              node_id: str = "", ips: Iterable[str] = (), dns: Iterable[str] = (),
              days: float = CERT_DAYS) -> x509.Certificate:
        """A certificate for ``public_key`` naming its role (and node), signed by this CA.

        Server roles get the name of their role (and an agent that of its node) and the
        IPs and names they serve on as SANs (127.0.0.1 and localhost always); every
        certificate works as a client."""
        if self.key is None:
            raise ConfigError("this process holds the CA's certificate only: it cannot issue")
        if role not in ROLES:
            raise ConfigError(f"role must be one of {', '.join(ROLES)}, got {role!r}", where="role")
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(ROLE_URI + role),
                                        x509.DNSName("localhost")]
        if role in ("controller", "agent"):
            sans.append(x509.DNSName(role_dns(role)))
        if node_id:
            check_node_id(node_id)
            sans += [x509.UniformResourceIdentifier(NODE_URI + node_id),
                     x509.DNSName(node_dns(node_id))]
        sans += [x509.DNSName(d) for d in dns]
        for ip in ["127.0.0.1", *ips]:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
            except ValueError:
                raise ConfigError(f"not an IP address: {ip!r}", where="ip") from None
        usage = [ExtendedKeyUsageOID.CLIENT_AUTH]  # (etcd: its members call each other)
        if role != "cli":
            usage.append(ExtendedKeyUsageOID.SERVER_AUTH)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (name or role)[:64]),
                             x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, "orch")])
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(self.cert.subject)
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(_now() - BACKDATE)
                .not_valid_after(min(_now() + dt.timedelta(days=days),
                                     self.cert.not_valid_after_utc))
                .add_extension(x509.SubjectAlternativeName(list(dict.fromkeys(sans))),
                               critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
                .sign(self.key, hashes.SHA256()))


def _ca_cert(key: ec.EllipticCurvePrivateKey, name: str, start: dt.datetime, end: dt.datetime,
             serial: int | None = None) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "orch")])
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(serial if serial is not None else x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))


# --- join tokens -------------------------------------------------------------------------------


def new_secret() -> str:
    """A join secret: 128 random bits, base32 (26 characters)."""
    return base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()


@dataclass(frozen=True, slots=True)
class JoinToken:
    role: str
    ca_digest: str
    secret: str

    def __str__(self) -> str:
        return f"{TOKEN_PREFIX}-{self.role}-{self.ca_digest}-{self.secret}"

    @classmethod
    def parse(cls, text: str) -> JoinToken:
        """A token from its text; ConfigError saying what is wrong (never echoing a secret)."""
        parts = text.strip().split("-")
        if len(parts) != 5 or "-".join(parts[:2]) != TOKEN_PREFIX:
            raise ConfigError(f"not an orch join token (it looks like {TOKEN_PREFIX}-<role>-"
                              "<CA digest>-<secret>; `orchctl cluster join-token agent` prints one)",
                              where="join_token")
        role, ca, secret = parts[2], parts[3], parts[4]
        if role not in JOIN_ROLES:
            raise ConfigError(f"a join token is for an agent or a controller, not {role[:20]!r}",
                              where="join_token")
        if not _DIGEST_RE.match(ca) or not _SECRET_RE.match(secret):
            raise ConfigError("the join token is damaged (its CA digest or secret is malformed)",
                              where="join_token")
        return cls(role, ca, secret)

    def matches(self, secret: str) -> bool:
        """Whether ``secret`` is this token's (in constant time)."""
        return hmac.compare_digest(self.secret.encode(), secret.encode())


_JOIN_START = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
_JOIN_END = dt.datetime(2120, 1, 1, tzinfo=dt.UTC)
_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
"""The order of the P-256 group."""


def join_authority(secret: str, role: str) -> Authority:
    """The CA both holders of a join secret make from it alone (see the module's doc)."""
    seed = HKDF(algorithm=hashes.SHA256(), length=48, salt=b"orch join authority",
                info=role.encode()).derive(secret.encode())
    key = ec.derive_private_key(int.from_bytes(seed, "big") % (_ORDER - 1) + 1, ec.SECP256R1())
    return Authority(_ca_cert(key, f"orch join {role}", _JOIN_START, _JOIN_END, serial=1), key)


def joiner_identity(authority: Authority, role: str) -> tuple[bytes, bytes]:
    """A short-lived client certificate (PEM) and key that prove the join secret's holder
    wants to join as ``role``."""
    key = new_key()
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"joining {role}")]))
            .issuer_name(authority.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - BACKDATE)
            .not_valid_after(_now() + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(
                JOIN_URI + role)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(authority.key, hashes.SHA256()))  # type: ignore[arg-type]
    return cert_pem(cert), key_pem(key)


def join_server_identity(authority: Authority, role: str) -> tuple[bytes, bytes]:
    """The certificate (PEM) and key a controller answers joiners of ``role`` with."""
    key = new_key()
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, join_dns(role))]))
            .issuer_name(authority.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - BACKDATE)
            .not_valid_after(_now() + dt.timedelta(days=CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(join_dns(role))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(authority.key, hashes.SHA256()))  # type: ignore[arg-type]
    return cert_pem(cert), key_pem(key)


# --- files ---------------------------------------------------------------------------------------


def write_file(path: Path, data: bytes, *, secret: bool) -> None:
    """Write ``data`` whole (a reader never sees half of it), mode 0600 when ``secret``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def create_ca(directory: Path, *, name: str = "orch cluster CA", days: int = CA_DAYS) -> tuple[Path, Path]:
    """A new CA key and self-signed certificate: ``ca.pem``, ``ca-key.pem`` (mode 0600)."""
    cert_path, key_path = directory / "ca.pem", directory / "ca-key.pem"
    if cert_path.exists() or key_path.exists():
        raise ConfigError(f"a CA exists already in {directory}; remove it first to make a new one")
    ca = Authority.generate(name, days)
    assert ca.key is not None
    write_file(key_path, key_pem(ca.key), secret=True)
    write_file(cert_path, ca.pem, secret=False)
    return cert_path, key_path


def load_authority(directory: Path) -> Authority:
    """The CA in ``directory`` (``ca.pem``, ``ca-key.pem``)."""
    try:
        return Authority.load((directory / "ca.pem").read_bytes(),
                              (directory / "ca-key.pem").read_bytes())
    except OSError as e:
        raise ConfigError(f"cannot read the CA in {directory}: {e.strerror} (make one with "
                          "`orchctl tls ca create`)") from None


def create_cert(ca_dir: Path, out_dir: Path, *, role: str, name: str,
                ips: Iterable[str] = (), dns: Iterable[str] = (), node_id: str = "",
                days: float = 825) -> tuple[Path, Path]:
    """A certificate for ``role`` signed by the CA in ``ca_dir``: ``<name>.pem``, ``<name>-key.pem``."""
    ca = load_authority(ca_dir)
    key = new_key()
    cert = ca.issue(key.public_key(), role=role, name=name, node_id=node_id, ips=ips, dns=dns,
                    days=days)
    cert_path, key_path = out_dir / f"{name}.pem", out_dir / f"{name}-key.pem"
    write_file(key_path, key_pem(key), secret=True)
    write_file(cert_path, cert_pem(cert), secret=False)
    return cert_path, key_path


@dataclass(frozen=True, slots=True)
class Bundle:
    """Where a daemon keeps its trust material: ``<data_dir>/pki``."""

    dir: Path

    @classmethod
    def of(cls, data_dir: str | Path) -> Bundle:
        return cls(Path(data_dir) / "pki")

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def ca_key(self) -> Path:
        """Controllers only: the CA's key (mode 0600)."""
        return self.dir / "ca-key.pem"

    @property
    def secrets_key(self) -> Path:
        """Controllers only: the key the cluster's secrets are sealed with (mode 0600)."""
        return self.dir / "secrets.key"

    @property
    def cert(self) -> Path:
        """This daemon's certificate."""
        return self.dir / "cert.pem"

    @property
    def key(self) -> Path:
        """This daemon's key (mode 0600); kept across renewals and re-joins."""
        return self.dir / "key.pem"

    @property
    def cluster_file(self) -> Path:
        """The id of the cluster this daemon joined (or bootstrapped), as its controllers
        name it: an agent applies desired sets of this cluster only."""
        return self.dir / "cluster-id"

    def cluster_id(self) -> str:
        """The cluster id written here ("" when none is)."""
        try:
            return self.cluster_file.read_text().strip()
        except FileNotFoundError:
            return ""

    def complete(self) -> bool:
        return self.ca.exists() and self.cert.exists() and self.key.exists()

    def own_key(self) -> ec.EllipticCurvePrivateKey:
        """This daemon's key, made (and written) the first time."""
        if self.key.exists():
            return load_key(self.key.read_bytes(), str(self.key))
        key = new_key()
        write_file(self.key, key_pem(key), secret=True)
        return key

    def certificate(self) -> x509.Certificate:
        return load_cert(self.cert.read_bytes(), str(self.cert))
