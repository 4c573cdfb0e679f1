"""The gRPC servicer context the endpoints expect, over an HTTP request.

The endpoints and the authorization gate (``controller.api.authz``) ask a context four
things: the call's metadata (the access token), the peer's address (the rate limit's key,
the logs), its certificate (``Trust.identify``), and ``abort``. This context answers them
from an HTTP request, so the one gate and the one error mapping (``controller.api.errors``)
serve HTTP exactly as they serve gRPC; ``abort`` raises ``HttpAbort``, which the HTTP layer
turns into a status (``HTTP_STATUS``).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
"""gRPC status -> HTTP status, as Google's HTTP mapping of gRPC does it (a follower's
FAILED_PRECONDITION with the leader's address becomes a redirect instead)."""


class HttpAbort(grpc.aio.AbortError):
    """An endpoint or the gate ended the call (``context.abort``)."""

    def __init__(self, code: grpc.StatusCode, details: str,
                 trailing: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.trailing = tuple(trailing)

    @property
    def status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)

    def leader(self) -> str:
        """The leader's gRPC address a follower named ("" when it named none)."""
        return next((v for k, v in self.trailing if k == "orch-leader"), "")


def certificate_pem(transport: Any) -> bytes | None:
    """The client certificate of a TLS connection, as PEM (None: no TLS or no certificate;
    the TLS layer has already checked it against the cluster CA)."""
    obj = transport.get_extra_info("ssl_object") if transport is not None else None
    if not isinstance(obj, ssl.SSLObject | ssl.SSLSocket):
        return None
    der = obj.getpeercert(binary_form=True)
    if not der:
        return None
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)


def peer_of(transport: Any) -> str:
    """The peer as gRPC writes it (``ipv4:127.0.0.1:50212``), for the rate limit and logs."""
    where = transport.get_extra_info("peername") if transport is not None else None
    if not where:
        return "unknown"
    host, port = str(where[0]), int(where[1])
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


class HttpContext:
    """What an endpoint asks a ``grpc.aio.ServicerContext``, answered for one HTTP request.

    ``token_only``: the request came over TLS without a client certificate (a browser,
    ``curl`` with a token): the gate admits it as the ``web`` role, whose only credential is
    its token (``controller.api.authz.WEB``)."""

    def __init__(self, *, secret: str, peer: str, cert_pem: bytes | None,
                 token_only: bool) -> None:
        self._secret = secret
        self._peer = peer
        self._cert = cert_pem
        self.token_only = token_only
        self.trailing: tuple[tuple[str, str], ...] = ()
        self.admitted = asyncio.Event()
        """Set once the gate let the call through (a stream's response may then begin)."""

    def admit(self) -> None:
        self.admitted.set()

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self._secret}"),) if self._secret else ()

    def peer(self) -> str:
        return self._peer

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self._cert]} if self._cert else {}

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        self.trailing = tuple(metadata)

    async def abort(self, code: grpc.StatusCode, details: str = "",
                    trailing_metadata: Sequence[tuple[str, str]] = ()) -> None:
        raise HttpAbort(code, details, (*self.trailing, *trailing_metadata))
