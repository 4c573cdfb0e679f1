"""Errors at the gRPC edge: orch's own errors -> status code and message, in one place.

Only ``OrchError`` is mapped; anything else reaching the edge is a bug in the controller:
the client gets INTERNAL with a reference and nothing of the error itself, and the log
gets the traceback under that reference.

A follower (or a controller that lost its lease, or whose commit etcd refused because
another controller leads now: FencedError) answers FAILED_PRECONDITION with the leader's
address in the ``orch-leader`` trailing metadata, so that clients can follow it.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import grpc

from orch.errors import (
    ConfigError,
    ConflictError,
    FencedError,
    NotFoundError,
    NotLeaderError,
    OrchError,
)

log = logging.getLogger("api")
LEADER_KEY = "orch-leader"


def status_of(e: OrchError) -> tuple[grpc.StatusCode, str]:
    """The status code and message a client gets for one of orch's errors."""
    if isinstance(e, ConfigError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(e)
    if isinstance(e, NotFoundError):
        return grpc.StatusCode.NOT_FOUND, str(e)
    if isinstance(e, ConflictError):
        return grpc.StatusCode.ABORTED, str(e)
    return grpc.StatusCode.FAILED_PRECONDITION, str(e)


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


async def abort(context: grpc.aio.ServicerContext[Any, Any], method: str,
                e: Exception) -> None:
    """End the call with the status ``e`` deserves (raises, as ``context.abort`` does)."""
    if not isinstance(e, OrchError):
        ref = uuid.uuid4().hex[:8]
        log.error("%s failed", method, exc_info=e, extra={"method": method, "ref": ref,
                                                           "peer": context.peer()})
        await context.abort(grpc.StatusCode.INTERNAL,
                            f"internal error in {method} (the controller's log has it as {ref})")
        return
    code, msg = status_of(e)
    leader = leader_named(e)
    if leader:  # a deposed leader's refusal sends the client on, as a follower's does
        context.set_trailing_metadata(((LEADER_KEY, leader),))
    await context.abort(code, msg)
