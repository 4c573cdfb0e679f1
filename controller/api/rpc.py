"""How the controller's gRPC services are served: one endpoint module per noun, one gate.

Each endpoint serves some RPCs of one service (ControllerService, or the agents'
NodeService); each RPC method is wrapped by ``unary``, ``streaming``, ``bidi`` or
``opened``, which pass the call through the authorization gate (``controller.api.authz``)
before it runs and map its errors (``controller.api.errors``) after. ``servicer`` assembles the
endpoints into the one servicer gRPC serves for a service, and refuses to when an RPC of
the service is served by no endpoint, by two, or without the gate: an RPC cannot skip
authorization by accident.
"""

from __future__ import annotations

import asyncio
import functools
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar, cast

import grpc

from controller.acl import Token
from controller.api.authz import Authorizer
from controller.api.errors import abort
from controller.store.base import JobKey
from controller.trust import Peer
from orch.errors import RequestError
from orch.v1 import controller_pb2, controller_pb2_grpc
from orch.vocab import namespace_of

Ctx = grpc.aio.ServicerContext[Any, Any]
R = TypeVar("R")
GATED = "__orch_gated__"
"""Set on an RPC method that ``unary``, ``streaming``, ``bidi`` or ``opened`` wrapped."""
OPEN_TIMEOUT = 10.0
"""Seconds a bidirectional stream that the gate judges by its first message (``opened``)
has to send it."""
Caller = tuple[Peer, Token | None]
"""Who called (the certificate's identity) and with which token (None: none was needed)."""
SERVICE = controller_pb2.DESCRIPTOR.services_by_name["ControllerService"]


class Endpoint:
    """Serves some RPCs of ``SERVICE``; ``authz`` is the gate every call passes."""

    SERVICE = "ControllerService"

    def __init__(self, authz: Authorizer) -> None:
        self.authz = authz

    async def authorize(self, ctx: Ctx, method: str, request: Any) -> tuple[Peer, Token | None]:
        """Certificate, rate limit and access token; aborts the call when one refuses it."""
        return await self.authz.check(ctx, method, request, self.SERVICE)


def unary(fn: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    """Authorize the call, then translate its errors into gRPC statuses."""

    @functools.wraps(fn)
    async def wrapper(self: Endpoint, request: Any, context: Ctx) -> R:
        await self.authorize(context, fn.__name__, request)
        try:
            return await fn(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            await abort(context, fn.__name__, e)
            raise  # not reached: abort raises
    setattr(wrapper, GATED, True)
    return wrapper


def streaming(fn: Callable[..., AsyncIterator[R]]) -> Callable[..., AsyncIterator[R]]:
    """Authorize the call, then translate the errors of the stream into gRPC statuses."""

    @functools.wraps(fn)
    async def wrapper(self: Endpoint, request: Any, context: Ctx) -> AsyncIterator[R]:
        await self.authorize(context, fn.__name__, request)
        admitted(context)
        try:
            async for item in fn(self, request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            await abort(context, fn.__name__, e)
    setattr(wrapper, GATED, True)
    return wrapper


def admitted(context: Ctx) -> None:
    """Tell the context the gate let the call through: an HTTP stream's response (its
    status and headers) may begin (``controller.http.context``); gRPC's has nothing to
    tell."""
    admit = getattr(context, "admit", None)
    if admit is not None:
        admit()


def job_ref(namespace: str, name: str) -> JobKey:
    """The job a request names (in the default namespace when it names none)."""
    if not name:
        raise RequestError("a job name is needed")
    return (namespace_of(namespace), name)


def bidi(fn: Callable[..., AsyncIterator[R]]) -> Callable[..., AsyncIterator[R]]:
    """Authorize a bidirectional stream before it reads anything (it maps its own errors)."""

    @functools.wraps(fn)
    async def wrapper(self: Endpoint, requests: Any, context: Ctx) -> AsyncIterator[R]:
        await self.authorize(context, fn.__name__, None)
        async for item in fn(self, requests, context):
            yield item
    setattr(wrapper, GATED, True)
    return wrapper


def opened(fn: Callable[..., AsyncIterator[R]]) -> Callable[..., AsyncIterator[R]]:
    """Authorize a bidirectional stream by its first message, which says what the call acts
    on (read within ``OPEN_TIMEOUT`` seconds; None when none came), then translate its
    errors into gRPC statuses. ``fn(self, first, rest, context, caller)``."""

    @functools.wraps(fn)
    async def wrapper(self: Endpoint, requests: Any, context: Ctx) -> AsyncIterator[R]:
        rest = aiter(requests)
        try:
            async with asyncio.timeout(OPEN_TIMEOUT):
                first = await anext(rest, None)
        except TimeoutError:
            first = None
        caller = await self.authorize(context, fn.__name__, first)
        try:
            async for item in fn(self, first, rest, context, caller):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            await abort(context, fn.__name__, e)
    setattr(wrapper, GATED, True)
    return wrapper


def rpc_names(service: str = "ControllerService") -> list[str]:
    """Every RPC of a service of the controller, as the proto declares them."""
    return [m.name for m in controller_pb2.DESCRIPTOR.services_by_name[service].methods]


def controller_service(endpoints: Iterable[Endpoint]) -> controller_pb2_grpc.ControllerServiceServicer:
    """The one ControllerService servicer, its RPCs taken from ``endpoints``."""
    return cast(controller_pb2_grpc.ControllerServiceServicer,
                servicer("ControllerService", endpoints))


def node_service(endpoints: Iterable[Endpoint]) -> controller_pb2_grpc.NodeServiceServicer:
    """The one NodeService servicer (the agents' and joiners' calls)."""
    return cast(controller_pb2_grpc.NodeServiceServicer, servicer("NodeService", endpoints))


def servicer(service: str, endpoints: Iterable[Endpoint]) -> object:
    """The servicer of ``service``, its RPCs taken from ``endpoints``.

    ValueError (a bug, found at start and by the tests) when an RPC is served by no
    endpoint or by two, or is not wrapped by the gate."""
    out = types.SimpleNamespace()
    served: dict[str, str] = {}
    for ep in endpoints:
        if service != ep.SERVICE:
            raise ValueError(f"{type(ep).__name__} serves {ep.SERVICE}, not {service}")
        for name in rpc_names(service):
            method = getattr(type(ep), name, None)
            if method is None:
                continue
            owner = type(ep).__name__
            if name in served:
                raise ValueError(f"{name} is served by both {served[name]} and {owner}")
            if not getattr(method, GATED, False):
                raise ValueError(f"{owner}.{name} does not pass the authorization gate "
                                 "(wrap it with @unary, @streaming, @bidi or @opened)")
            served[name] = owner
            setattr(out, name, getattr(ep, name))
    missing = [n for n in rpc_names(service) if n not in served]
    if missing:
        raise ValueError(f"no endpoint serves {', '.join(missing)}")
    return out
