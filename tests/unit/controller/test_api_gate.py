"""The operator API is assembled from one endpoint per noun; every RPC the proto declares
is served once, and only through the authorization gate."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import controller.api
from controller.api.rpc import GATED, Ctx, Endpoint, controller_service, rpc_names, unary
from orch.v1 import controller_pb2


def _endpoint_classes() -> list[type[Endpoint]]:
    found = []
    for info in pkgutil.iter_modules(controller.api.__path__, "controller.api."):
        module = importlib.import_module(info.name)
        found += [c for _, c in inspect.getmembers(module, inspect.isclass)
                  if issubclass(c, Endpoint) and c is not Endpoint and c.__module__ == info.name]
    return found


def test_every_rpc_is_served_by_one_endpoint_through_the_gate() -> None:
    servers: dict[str, list[str]] = {}
    for cls in _endpoint_classes():
        for name in rpc_names():
            method = getattr(cls, name, None)
            if method is not None:
                assert getattr(method, GATED, False), f"{cls.__name__}.{name} skips the gate"
                servers.setdefault(name, []).append(cls.__name__)
    assert set(servers) == set(rpc_names())
    assert all(len(v) == 1 for v in servers.values()), servers


class _Ungated(Endpoint):
    async def GetLeader(self, req: controller_pb2.GetLeaderRequest,
                        ctx: Ctx) -> controller_pb2.LeaderInfo:
        return controller_pb2.LeaderInfo()


class _Gated(Endpoint):
    @unary
    async def GetLeader(self, req: controller_pb2.GetLeaderRequest,
                        ctx: Ctx) -> controller_pb2.LeaderInfo:
        return controller_pb2.LeaderInfo()


def test_the_service_refuses_an_rpc_that_skips_the_gate() -> None:
    with pytest.raises(ValueError, match=r"_Ungated\.GetLeader does not pass the authorization gate"):
        controller_service([_Ungated(None)])  # type: ignore[arg-type]


def test_the_service_refuses_to_serve_a_partial_or_doubled_api() -> None:
    with pytest.raises(ValueError, match="no endpoint serves RegisterJob"):
        controller_service([_Gated(None)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="GetLeader is served by both _Gated and _Gated"):
        controller_service([_Gated(None), _Gated(None)])  # type: ignore[arg-type]
