"""orchctl's verbs, one module per noun (as Nomad's command/ does): job, alloc, node, cluster."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from orch.v1 import controller_pb2_grpc
from orchctl.client import Session, fail

T = TypeVar("T")


@dataclass
class Ctx:
    """What every command gets: the controller's stub, its address, the output format."""

    session: Session
    json: bool
    timeout: float

    @property
    def stub(self) -> controller_pb2_grpc.ControllerServiceAsyncStub:
        """ControllerService; writes refused by a follower are made again at the leader."""
        return self.session.stub

    @property
    def address(self) -> str:
        return self.session.address

    async def call(self, pending: Awaitable[T]) -> T:
        """Await an RPC; an RPC error becomes a sentence and exit code (CliError)."""
        try:
            return await pending
        except grpc.aio.AioRpcError as e:
            fail(e, self.address)
