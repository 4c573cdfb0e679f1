"""orchctl's connection to the controller: one address, errors as sentences and exit codes.

Exit codes scripts can trust: 0 ok, 1 failed, 2 usage, 3 a job could not be fully placed,
4 ``job plan`` would make changes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, cast

import grpc

from orch.config import build, load_toml
from orch.net import CONTROLLER_RPC_PORT
from orch.pki import role_dns
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


@dataclass(frozen=True, slots=True)
class Settings:
    """``orchctl.toml``: where the controller is and what to show it. Paths in the file are
    relative to the file (a bootstrap writes one beside the operator's certificate)."""

    address: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    token_file: str = ""
    namespace: str = ""


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """``$ORCH_CONFIG``, else ``~/.config/orch/orchctl.toml``."""
    env = os.environ if env is None else env
    if env.get("ORCH_CONFIG"):
        return Path(env["ORCH_CONFIG"])
    return Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "orch" / "orchctl.toml"


def settings(env: Mapping[str, str] | None = None) -> Settings:
    """The settings file, when there is one (an empty Settings otherwise)."""
    path = config_path(env)
    if not path.exists():
        return Settings()
    cfg = build(Settings, load_toml(path), where=str(path))
    base = path.parent

    def at(p: str) -> str:
        return str(base / p) if p else ""
    return Settings(address=cfg.address, tls_ca=at(cfg.tls_ca), tls_cert=at(cfg.tls_cert),
                    tls_key=at(cfg.tls_key), token_file=at(cfg.token_file),
                    namespace=cfg.namespace)


def namespace(flag: str | None, file: Settings | None = None) -> str:
    """The namespace chosen by --namespace, else ORCH_NAMESPACE, else orchctl.toml ("" when
    none chose one)."""
    return flag or os.environ.get("ORCH_NAMESPACE") or (file.namespace if file else "")


def address(flag: str | None, file: Settings | None = None) -> str:
    return flag or os.environ.get("ORCH_ADDR") or (file.address if file else "") or DEFAULT_ADDR


class _Deadline(grpc.aio.UnaryUnaryClientInterceptor):
    """Every unary call gets a deadline unless it has one (streams may last)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        if details.timeout is None:
            details = details._replace(timeout=self.seconds)
        return await continuation(details, request)


class _Token:
    """Sends the access token with a call (``authorization: Bearer <secret>``)."""

    def __init__(self, secret: str) -> None:
        self.header = ("authorization", f"Bearer {secret}")

    def _with_token(self, details: Any) -> Any:
        return details._replace(metadata=grpc.aio.Metadata(*(details.metadata or ()), self.header))


class _UnaryToken(_Token, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)


class _StreamToken(_Token, grpc.aio.UnaryStreamClientInterceptor):
    """(gRPC files an interceptor under its first kind only: streams need one of their own.)"""

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)


class _BidiToken(_Token, grpc.aio.StreamStreamClientInterceptor):
    """The token on bidirectional streams (alloc exec)."""

    async def intercept_stream_stream(self, continuation: Any, details: Any,
                                      request_iterator: Any) -> Any:
        return await continuation(self._with_token(details), request_iterator)


class _UploadToken(_Token, grpc.aio.StreamUnaryClientInterceptor):
    """The token on calls that stream up (a snapshot restore)."""

    async def intercept_stream_unary(self, continuation: Any, details: Any,
                                     request_iterator: Any) -> Any:
        return await continuation(self._with_token(details), request_iterator)


def token(flag: str | None, file_flag: str | None = None, file: Settings | None = None) -> str:
    """The access token: --token-file, else ORCH_TOKEN, else --token (visible in ps: a
    warning says so), else the settings file's token_file; "" for none."""
    path = file_flag or ""
    if not path and not os.environ.get("ORCH_TOKEN") and not flag and file is not None:
        path = file.token_file
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise CliError(f"cannot read the token file {path}: {e.strerror}", USAGE) from None
    if os.environ.get("ORCH_TOKEN"):
        return os.environ["ORCH_TOKEN"].strip()
    if flag:
        print("orchctl: warning: --token is visible to every user of this host (ps); prefer "
              "ORCH_TOKEN or --token-file", file=sys.stderr)
        return flag
    return ""


def tls_from(ca: str | None, cert: str | None, key: str | None,
             file: Settings | None = None) -> TlsConfig:
    """mTLS material from flags, else from ORCH_TLS_CA, ORCH_TLS_CERT, ORCH_TLS_KEY, else
    from the settings file."""
    file = file or Settings()
    return TlsConfig(ca_file=ca or os.environ.get("ORCH_TLS_CA", "") or file.tls_ca,
                     cert_file=cert or os.environ.get("ORCH_TLS_CERT", "") or file.tls_cert,
                     key_file=key or os.environ.get("ORCH_TLS_KEY", "") or file.tls_key)


def connect(addr: str, timeout: float = 30.0, tls: TlsConfig | None = None,
            secret: str = "") -> grpc.aio.Channel:
    interceptors: list[Any] = [_Deadline(timeout)]
    if secret:
        interceptors += [_UnaryToken(secret), _StreamToken(secret), _BidiToken(secret),
                         _UploadToken(secret)]
    return open_channel(addr, tls, [("grpc.max_receive_message_length", 64 * 1024 * 1024)],
                        server=role_dns("controller"), interceptors=interceptors)


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

    STREAMS = frozenset(("Watch", "AllocationLogs", "ExecAllocation", "SaveSnapshot",
                         "RestoreSnapshot"))

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
            self.use(leader)
            return await getattr(self._stub, name)(request, **kw)
        return call

    def use(self, addr: str) -> None:
        """Talk to ``addr`` from now on (the leader, for a stream that needs it)."""
        if addr and addr != self.address:
            self.address = addr
            self._channels.append(self._open(addr))
            self._stub = stub(self._channels[-1])

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


class _BlockingToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """The access token on every call of a blocking channel (grpc.intercept_channel files
    one interceptor under every kind it implements)."""

    def __init__(self, secret: str) -> None:
        self.header = ("authorization", f"Bearer {secret}")

    def _with_token(self, details: Any) -> Any:
        return _Details(details.method, details.timeout,
                        [*(details.metadata or ()), self.header], details.credentials,
                        getattr(details, "wait_for_ready", None),
                        getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)


@dataclass(frozen=True)
class _Details(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


def blocking_channel(addr: str, file: Settings | None = None) -> grpc.Channel:
    """A blocking (not asyncio) channel to a controller with the operator's credentials (the
    settings file, else the environment: as orchctl finds them), for scripts and tests."""
    file = file or settings()
    tls = tls_from(None, None, None, file)
    secret = token(None, None, file)
    if not tls.enabled:
        channel = grpc.insecure_channel(addr)
    else:
        ca, cert, key = tls.load()
        channel = grpc.secure_channel(
            addr, grpc.ssl_channel_credentials(ca, key, cert),
            options=[("grpc.ssl_target_name_override", role_dns("controller"))])
    return grpc.intercept_channel(channel, _BlockingToken(secret)) if secret else channel
