"""Errors at the gRPC edge: OrchError -> status code and message, in one place.

A follower (or a controller that lost its lease, or whose commit etcd refused
because another controller leads now: FencedError) answers FAILED_PRECONDITION
with the leader's address in the ``orch-leader`` trailing metadata, so that
clients can follow it.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from orch.errors import ConfigError, FencedError, NotFoundError, NotLeaderError, OrchError

log = logging.getLogger("api")
LEADER_KEY = "orch-leader"

R = TypeVar("R")


def status_of(e: Exception) -> tuple[grpc.StatusCode, str]:
    from controller.jobs import ConflictError  # the API layer knows every error it maps

    if isinstance(e, ConfigError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(e)
    if isinstance(e, NotFoundError):
        return grpc.StatusCode.NOT_FOUND, str(e)
    if isinstance(e, ConflictError):
        return grpc.StatusCode.ABORTED, str(e)
    if isinstance(e, NotLeaderError):
        return grpc.StatusCode.FAILED_PRECONDITION, str(e)
    if isinstance(e, (OrchError, ValueError)):
        return grpc.StatusCode.FAILED_PRECONDITION, str(e)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}"


def leader_named(e: Exception) -> str:
    """Where the leader is, as an error says: NotLeaderError's address, or the new leader's
    in the leader key a FencedError found ("" when neither knows)."""
    if isinstance(e, NotLeaderError):
        return e.leader or ""
    if isinstance(e, FencedError) and e.holder:
        try:
            address = json.loads(e.holder).get("address", "")
        except (ValueError, AttributeError):
            return ""
        return address if isinstance(address, str) else ""
    return ""


async def abort(context: grpc.aio.ServicerContext[Any, Any], e: Exception) -> None:
    code, msg = status_of(e)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("request failed", exc_info=e)
    leader = leader_named(e)
    if leader:  # a deposed leader's refusal sends the client on, as a follower's does
        context.set_trailing_metadata(((LEADER_KEY, leader),))
    await context.abort(code, msg)


def unary(fn: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    """Authorize the call (the servicer's ``authorize``), then translate its errors into
    gRPC statuses."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> R:
        await self.authorize(context, fn.__name__, request)
        try:
            return await fn(self, request, context)
        except (OrchError, ValueError, KeyError, LookupError) as e:
            await abort(context, e)
            raise  # not reached: abort raises
    return wrapper


def streaming(fn: Callable[..., AsyncIterator[R]]) -> Callable[..., AsyncIterator[R]]:
    """Translate the errors of a server-streaming method into gRPC statuses."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any,
                      context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[R]:
        await self.authorize(context, fn.__name__, request)
        try:
            async for item in fn(self, request, context):
                yield item
        except (OrchError, ValueError, LookupError) as e:
            await abort(context, e)
    return wrapper
