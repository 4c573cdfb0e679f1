"""Every RPC of the operator API passes the one authorization gate: with access tokens on,
a call without a token is refused before it does anything, for every method the proto
declares (read from its descriptor, so a new RPC is checked the day it is added). A bug
inside a call reaches the client as INTERNAL with a reference, and nothing of the bug."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import symbol_database

from controller.api.authz import ANONYMOUS
from controller.api.rpc import SERVICE
from orch.v1 import controller_pb2, controller_pb2_grpc
from tests.integration.live import live_cluster


def _request(method_name: str) -> object:
    method = SERVICE.methods_by_name[method_name]
    cls = symbol_database.Default().GetSymbol(method.input_type.full_name)
    return cls()


async def _call(stub: controller_pb2_grpc.ControllerServiceStub, name: str) -> grpc.StatusCode:
    method = SERVICE.methods_by_name[name]
    if method.client_streaming:  # a stream of one (empty) message
        async def one() -> AsyncIterator[object]:
            yield _request(name)
        call = getattr(stub, name)(one(), timeout=10)
    else:
        call = getattr(stub, name)(_request(name), timeout=10)
    try:
        if method.server_streaming:
            async for _ in call:
                break
        else:
            await call
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK


async def test_every_rpc_without_a_token_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    async with live_cluster(tmp_path, agents=0, acl=True) as (ctl, _):
        index = ctl.cluster.state.index
        async with grpc.aio.insecure_channel(ctl.rpc_address) as ch:
            stub = controller_pb2_grpc.ControllerServiceStub(ch)
            codes = {m.name: await _call(stub, m.name) for m in SERVICE.methods
                     if m.name not in ANONYMOUS}
        assert codes, "the service declares no RPC"
        refused = {n: c for n, c in codes.items() if c != grpc.StatusCode.UNAUTHENTICATED}
        assert not refused, f"these RPCs did not ask for a token: {refused}"
        assert ctl.cluster.state.index == index  # nothing was written
        assert sum(n for (why, _), n in ctl.authz.denied.items()
                   if why == "unauthenticated") == len(codes)


async def test_a_bug_in_a_call_is_internal_and_reveals_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    async with live_cluster(tmp_path, agents=0) as (ctl, _):
        def broken(pb: object) -> None:  # a fault no request can cause: a bug
            raise KeyError("secret-detail")
        monkeypatch.setattr(ctl.jobs, "plan", broken)
        caplog.set_level(logging.ERROR, logger="api")
        async with grpc.aio.insecure_channel(ctl.rpc_address) as ch:
            stub = controller_pb2_grpc.ControllerServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.PlanJob(controller_pb2.PlanJobRequest(), timeout=10)
        assert e.value.code() == grpc.StatusCode.INTERNAL
        details = e.value.details() or ""
        assert "secret-detail" not in details
        assert "KeyError" not in details
        assert "internal error in PlanJob" in details
        ref = details.rsplit(" ", 1)[-1].rstrip(")")
        logged = [r for r in caplog.records if getattr(r, "ref", None) == ref]
        assert logged
        assert logged[0].exc_info is not None
