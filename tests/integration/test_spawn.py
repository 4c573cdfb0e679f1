"""Exec health checks spawned in a process like the agent's: uvloop, threads that C made and
that call into Python (as gRPC's core does), gRPC calls in flight. Forking such a process
and running Python in the child (what uvloop's subprocesses do) crashes some children with
SIGSEGV before they run anything; the agent spawns with posix_spawn, so none crashes."""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
import time
from pathlib import Path

import grpc
import pytest
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from agent.runtime import spawn
from agent.runtime.health import CheckResult, CheckTracker
from agent.runtime.probes import probe_exec
from agent.runtime.process import ProcessDriver
from orch.jobspec.model import Check
from tests.integration.test_process_driver import NODE, config, kill_leftovers, sh

pytestmark = pytest.mark.timeout(120)
CHECKS = 1000
AT_ONCE = 50


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for whoever adopted it does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def threads_from_c(n: int = 16) -> object:
    """Threads made by C that call into Python (each registers a threading._DummyThread)."""
    callback_type = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)

    def body(_: object) -> None:
        threading.current_thread()
        time.sleep(0.001)
    callback = callback_type(body)
    libc = ctypes.CDLL("libc.so.6")
    ids = []
    for _ in range(n):
        tid = ctypes.c_ulong()
        assert libc.pthread_create(ctypes.byref(tid), None, callback, None) == 0
        ids.append(tid)
    for tid in ids:
        libc.pthread_join(tid, None)
    return callback


async def _many_checks(data: Path) -> tuple[list[int], list[str]]:
    keep = threads_from_c()
    assert any(isinstance(t, threading._DummyThread) for t in threading.enumerate())
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(
        health.HealthServicer(experimental_non_blocking=True), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = health_pb2_grpc.HealthStub(channel)

    async def traffic() -> None:
        while True:
            await stub.Check(health_pb2.HealthCheckRequest())
    pings = asyncio.create_task(traffic())
    driver = ProcessDriver(data, node_id=NODE, task_user="root", allow_root=True)
    await driver.open()
    codes: list[int] = []
    outputs: list[str] = []
    try:
        handle = await driver.start(config(data, sh("t", "exec sleep 60")))
        check = Check(type="exec", command="/bin/sh", args=("-c", "echo ok"), name="c")
        tracker = CheckTracker(check)
        for _ in range(CHECKS // AT_ONCE):
            results = await asyncio.gather(*(probe_exec(driver, handle, check)
                                             for _ in range(AT_ONCE // 2)),
                                           *(spawn.run(["/bin/true"]) for _ in range(AT_ONCE // 2)))
            for r in results:
                if isinstance(r, CheckResult):
                    tracker.record(r)
                    outputs.append(r.output)
                elif isinstance(r, tuple):
                    codes.append(r[0])
        await driver.stop(handle, "SIGKILL", 1.0)
    finally:
        pings.cancel()
        await channel.close()
        await server.stop(0)
        await driver.close()
        kill_leftovers(data)
        del keep
    return codes, outputs


def test_many_exec_checks_at_once_never_crash_their_child(tmp_path: Path) -> None:
    codes, outputs = uvloop.run(_many_checks(tmp_path))
    assert len(codes) + len(outputs) == CHECKS
    assert codes == [0] * len(codes), f"crashed or failed: {sorted(set(codes))}"
    bad = [o for o in outputs if o != "exit code 0: ok"]
    assert not bad, f"{len(bad)} of {len(outputs)} checks failed: {sorted(set(bad))[:5]}"


async def test_a_spawned_command_runs_where_asked_and_a_timeout_kills_its_group(
        tmp_path: Path) -> None:
    code, out = await spawn.run(["/bin/sh", "-c", "pwd; echo $X >&2; exit 3"],
                                env={"X": "y", "PATH": os.defpath}, cwd=str(tmp_path))
    assert (code, out) == (3, f"{tmp_path}\ny\n".encode())
    marker = tmp_path / "child.pid"
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await spawn.run(["/bin/sh", "-c", f"sleep 30 & echo $! > {marker}; wait"])
    child = int(marker.read_text())
    await asyncio.sleep(0.2)
    assert not alive(child)  # what it started went with it
    with pytest.raises(FileNotFoundError):
        await spawn.run(["no-such-program-here"])
    code, out = await spawn.run(["/bin/sh", "-c", "head -c 200000 /dev/zero"], max_output=10)
    assert (code, len(out)) == (0, 10)
