"""orchctl's connection to the controller: one address, errors as sentences and exit codes.

Exit codes scripts can trust: 0 ok, 1 failed, 2 usage, 3 a job could not be fully placed,
4 ``job plan`` would make changes.
"""

from __future__ import annotations

import os
from typing import Any, NoReturn, cast

import grpc

from orch.net import CONTROLLER_RPC_PORT
from orch.tls import TlsConfig, open_channel
from orch.v1 import controller_pb2_grpc

OK, FAILED, USAGE, UNPLACED, CHANGES = 0, 1, 2, 3, 4
DEFAULT_ADDR = f"127.0.0.1:{CONTROLLER_RPC_PORT}"
LEADER_KEY = "orch-leader"


class CliError(Exception):
    """An error for a person: a sentence, and the exit code."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.code = code


def address(flag: str | None) -> str:
    return flag or os.environ.get("ORCH_ADDR") or DEFAULT_ADDR


class _Deadline(grpc.aio.UnaryUnaryClientInterceptor):
    """Every unary call gets a deadline unless it has one (streams may last)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        if details.timeout is None:
            details = details._replace(timeout=self.seconds)
        return await continuation(details, request)


class _Token(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    """Sends the access token with every call (``authorization: Bearer <secret>``)."""

    def __init__(self, secret: str) -> None:
        self.header = ("authorization", f"Bearer {secret}")

    def _with_token(self, details: Any) -> Any:
        return details._replace(metadata=grpc.aio.Metadata(*(details.metadata or ()), self.header))

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)


def token(flag: str | None) -> str:
    """The access token: --token, else ORCH_TOKEN, else none."""
    return flag or os.environ.get("ORCH_TOKEN", "")


def tls_from(ca: str | None, cert: str | None, key: str | None) -> TlsConfig:
    """mTLS material from flags, else from ORCH_TLS_CA, ORCH_TLS_CERT, ORCH_TLS_KEY."""
    return TlsConfig(ca_file=ca or os.environ.get("ORCH_TLS_CA", ""),
                     cert_file=cert or os.environ.get("ORCH_TLS_CERT", ""),
                     key_file=key or os.environ.get("ORCH_TLS_KEY", ""))


def connect(addr: str, timeout: float = 30.0, tls: TlsConfig | None = None,
            secret: str = "") -> grpc.aio.Channel:
    interceptors: list[Any] = [_Deadline(timeout)]
    if secret:
        interceptors.append(_Token(secret))
    return open_channel(addr, tls, [("grpc.max_receive_message_length", 64 * 1024 * 1024)],
                        interceptors=interceptors)


def stub(channel: grpc.aio.Channel) -> controller_pb2_grpc.ControllerServiceAsyncStub:
    return controller_pb2_grpc.ControllerServiceStub(channel)


def leader_of(e: grpc.aio.AioRpcError) -> str:
    """The leader's address a follower named when it refused a write ("" if none)."""
    if e.code() != grpc.StatusCode.FAILED_PRECONDITION:
        return ""
    return next((str(v) for k, v in (e.trailing_metadata() or ()) if k == LEADER_KEY), "")


class Session:
    """orchctl's connection: one controller, and the leader once a follower names it.

    ``stub`` is the ControllerService stub, except that a unary call a follower refuses
    (FAILED_PRECONDITION with the leader's address) is made again at the leader, once;
    later calls go to the leader directly. Reads are served by whichever controller
    answers, so streams (events, logs) stay where they are.
    """

    STREAMS = frozenset(("Watch", "AllocationLogs"))

    def __init__(self, addr: str, timeout: float, tls: TlsConfig | None, secret: str) -> None:
        self.address = addr
        self._timeout, self._tls, self._secret = timeout, tls, secret
        self._channels = [self._open(addr)]
        self._stub = stub(self._channels[0])

    def _open(self, addr: str) -> grpc.aio.Channel:
        return connect(addr, self._timeout, self._tls, self._secret)

    @property
    def stub(self) -> controller_pb2_grpc.ControllerServiceAsyncStub:
        return cast("controller_pb2_grpc.ControllerServiceAsyncStub", self)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in self.STREAMS:
            return getattr(self._stub, name)

        async def call(request: Any, **kw: Any) -> Any:
            try:
                return await getattr(self._stub, name)(request, **kw)
            except grpc.aio.AioRpcError as e:
                leader = leader_of(e)
                if not leader or leader == self.address:
                    raise
            self.address = leader
            self._channels.append(self._open(leader))
            self._stub = stub(self._channels[-1])
            return await getattr(self._stub, name)(request, **kw)
        return call

    async def close(self) -> None:
        for ch in self._channels:
            await ch.close()


_SENTENCES = {
    grpc.StatusCode.UNAVAILABLE: "cannot reach the controller at {addr}: {details} "
                                 "(is it running? set --address or ORCH_ADDR)",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the controller at {addr} did not answer in time",
    grpc.StatusCode.NOT_FOUND: "{details}",
    grpc.StatusCode.INVALID_ARGUMENT: "{details}",
    grpc.StatusCode.FAILED_PRECONDITION: "{details}",
    grpc.StatusCode.ABORTED: "{details}",
    grpc.StatusCode.UNAUTHENTICATED: "{details}",
    grpc.StatusCode.PERMISSION_DENIED: "permission denied: {details}",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "{details}",
}


def fail(e: grpc.aio.AioRpcError, addr: str) -> NoReturn:
    """Turn an RPC error into a sentence (and say where the leader is, if we were told)."""
    template = _SENTENCES.get(e.code(), "{code}: {details}")
    msg = template.format(addr=addr, details=e.details(), code=e.code().name.lower())
    trailing = e.trailing_metadata() or ()
    leader = next((v for k, v in trailing if k == LEADER_KEY), None)
    if leader:
        msg += f" (the leader is {leader!s})"
    raise CliError(msg, FAILED)
