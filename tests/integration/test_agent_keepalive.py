"""Agents ping their stream to the controller (gRPC keepalive) while nothing flows on it; the
controller's server accepts those pings as often as its options say. gRPC ignores an option
it does not know, so this holds a real stream on a real socket (127.0.83.1) with the
controller's options, pinged more often than gRPC's default allows (every 5 minutes, GOAWAY
too_many_pings at the third), and the same stream without them as the control."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from controller.server import server_options

pytestmark = pytest.mark.timeout(30)

HOST = "127.0.83.1"
PING_MS = 300
"""The client's keepalive interval here (the agent's is 10 s; the scale is shortened)."""
HOLD_S = 6.0
"""How long the idle stream is held: twenty pings (gRPC's default ends it after about 3 s)."""


async def _held_for(options: list[tuple[str, int]]) -> float:
    """Seconds an idle server-streaming call lasted (at most HOLD_S) under these options."""
    server = grpc.aio.server(options=options)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port(f"{HOST}:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"{HOST}:{port}", options=[
                ("grpc.keepalive_time_ms", PING_MS), ("grpc.keepalive_timeout_ms", 1000),
                ("grpc.keepalive_permit_without_calls", 1),
                # an agent's stream carries its heartbeats, so its client never stops pinging
                ("grpc.http2.max_pings_without_data", 0)]) as ch:
            call = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest())
            first = await call.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            t0 = time.monotonic()
            try:
                await asyncio.wait_for(call.read(), HOLD_S)  # nothing more comes
            except TimeoutError:
                call.cancel()
                return HOLD_S
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
            return time.monotonic() - t0
    finally:
        await server.stop(None)


async def test_a_stream_pinged_as_often_as_the_controller_allows_stays_up() -> None:
    assert await _held_for(server_options(ping_min_ms=PING_MS // 2)) == HOLD_S


async def test_without_the_controllers_ping_policy_grpc_drops_the_stream() -> None:
    """The control: gRPC's defaults end the same stream (so the test above can fail)."""
    defaults = [o for o in server_options() if "ping" not in o[0]]
    assert await _held_for(defaults) < HOLD_S


async def test_a_connection_without_a_call_is_closed_after_the_idle_time() -> None:
    """A client that went away without closing (a cancelled stream's channel) leaves no
    connection behind for long: the server closes it, and the client may open another."""
    server = grpc.aio.server(options=server_options(idle_ms=500))
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port(f"{HOST}:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"{HOST}:{port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            await stub.Check(health_pb2.HealthCheckRequest())
            assert ch.get_state() == grpc.ChannelConnectivity.READY
            deadline = time.monotonic() + 10
            while ch.get_state() == grpc.ChannelConnectivity.READY:
                assert time.monotonic() < deadline, "the idle connection was kept"
                await asyncio.sleep(0.1)
            await stub.Check(health_pb2.HealthCheckRequest())  # a new one, when needed
    finally:
        await server.stop(None)
