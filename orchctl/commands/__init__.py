"""orchctl's verbs, one module per noun (as Nomad's command/ does): job, alloc, node, cluster."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from orch.v1 import controller_pb2_grpc
from orch.vocab import DEFAULT_NAMESPACE
from orchctl.client import USAGE, CliError, Session, fail

T = TypeVar("T")


@dataclass
class Ctx:
    """What every command gets: the controller's stub, its address, the output format."""

    session: Session
    json: bool
    timeout: float
    namespace: str = DEFAULT_NAMESPACE
    """The namespace the command acts in (--namespace, ORCH_NAMESPACE, orchctl.toml)."""
    namespace_given: bool = False
    """Whether a person chose it (else it is the default one)."""

    def job_namespace(self, in_file: str) -> str:
        """The namespace of a job whose file names ``in_file`` ("" when it names none)."""
        if in_file and self.namespace_given and in_file != self.namespace:
            raise CliError(f"the job file is for namespace {in_file!r} but the command is for "
                           f"{self.namespace!r} (drop --namespace/ORCH_NAMESPACE, or change "
                           "the file)", USAGE)
        return in_file or self.namespace

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
