"""The daemons as real processes under a stand-in for systemd: sd_notify (READY, WATCHDOG,
RELOADING, STOPPING), SIGHUP (log level, gossip keys, tags applied without a restart) and
SIGTERM (stop accepting, finish what is in flight, leave the gossip cluster)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from orch.gossip.config import GossipConfig
from orch.gossip.crypto import Keyring, new_key
from orch.gossip.messages import Status
from orch.gossip.transport import GossipNode
from orch.v1 import controller_pb2, controller_pb2_grpc
from tests.integration.synthetic import service_job, wait_until

pytestmark = pytest.mark.timeout(120)


def free_port(host: str) -> int:
    """A port free for both UDP and TCP on ``host`` (gossip uses both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            t.bind((host, 0))
            port: int = t.getsockname()[1]
            try:
                u.bind((host, port))
            except OSError:
                continue
            return port


class NotifySocket:
    """What systemd listens on for a Type=notify service: an AF_UNIX datagram socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.seen: list[dict[str, str]] = []

    async def next(self, key: str, within: float = 20.0) -> dict[str, str]:
        """The next message that sets ``key`` (earlier ones are kept in ``seen``)."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(within):
            while True:
                data = await loop.sock_recv(self.sock, 4096)
                msg = dict(line.split("=", 1) for line in data.decode().splitlines())
                self.seen.append(msg)
                if key in msg:
                    return msg

    def close(self) -> None:
        self.sock.close()


@dataclass
class Daemon:
    proc: asyncio.subprocess.Process
    log: Path
    config: Path

    def records(self) -> list[dict[str, object]]:
        out = []
        for line in self.log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def find(self, msg: str) -> list[dict[str, object]]:
        return [r for r in self.records() if r.get("msg") == msg]

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)


_starts = itertools.count()


@contextlib.asynccontextmanager
async def daemon(tmp: Path, module: str, config: str, *flags: str,
                 watchdog_usec: int = 0) -> AsyncIterator[tuple[Daemon, NotifySocket]]:
    """``python -m module --config FILE`` with $NOTIFY_SOCKET (and $WATCHDOG_USEC) set."""
    n = next(_starts)  # the same daemon may be started again in a test
    notify = NotifySocket(tmp / f"{module}-{n}.notify")
    cfg = tmp / f"{module}.toml"
    cfg.write_text(config)
    log = tmp / f"{module}-{n}.log"
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "PYTHONUNBUFFERED": "1"}
    if watchdog_usec:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, "--config", str(cfg), "--log-format", "json",
            "--profile", "fast", *flags, stdout=out, stderr=out, stdin=asyncio.subprocess.DEVNULL,
            env=env)
    d = Daemon(proc, log, cfg)
    try:
        yield d, notify
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        notify.close()


@contextlib.asynccontextmanager
async def observer(keys: list[str], seed: tuple[str, int]) -> AsyncIterator[GossipNode]:
    """A gossip member of the test's own, joined to ``seed``."""
    node = GossipNode(GossipConfig.fast(), name=f"observer-{random.randrange(1 << 30)}",
                      bind=("127.0.0.1", 0), keyring=Keyring(list(keys)), rng=random.Random())
    await node.start()
    node.join([seed])
    try:
        yield node
    finally:
        await node.stop()


def status_of(node: GossipNode, name: str) -> Status | None:
    m = next((m for m in node.members() if m.name == name), None)
    return None if m is None else m.status


def state_of(node: GossipNode, name: str) -> dict[str, object]:
    m = next((m for m in node.members() if m.name == name), None)
    return {} if m is None else dict(m.state)


async def exit_code(d: Daemon, within: float = 30.0) -> int:
    async with asyncio.timeout(within):
        return await d.proc.wait()


def controller_toml(host: str, gport: int, rport: int, data: Path, keys: list[str],
                    level: str = "info") -> str:
    return (f'name = "ctl"\nbind = "{host}:{gport}"\nrpc_addr = "{host}:{rport}"\n'
            f'data_dir = "{data}"\nmetrics_addr = ""\nhttp_addr = ""\nstore_sync = "normal"\n'
            f'log_level = "{level}"\nkeys = {json.dumps(keys)}\n')


async def test_controller_under_a_service_manager_reloads_keys_and_log_level_then_leaves(
        tmp_path: Path) -> None:
    host = "127.0.0.31"
    gport, rport = free_port(host), free_port(host)
    k1, k2 = new_key(), new_key()
    async with daemon(tmp_path, "controller.main",
                      controller_toml(host, gport, rport, tmp_path / "ctl", [k1]),
                      watchdog_usec=400_000) as (d, notify):
        ready = await notify.next("READY")
        assert ready["READY"] == "1"
        assert f"rpc {host}:{rport}" in ready["STATUS"]
        await notify.next("WATCHDOG", within=2)  # every 0.2 s: half of WATCHDOG_USEC
        await notify.next("WATCHDOG", within=2)
        assert not [r for r in d.records() if r["level"] == "debug"]

        async with observer([k1], (host, gport)) as obs:
            await wait_until(lambda: status_of(obs, "ctl") is Status.ALIVE, 15)

            # a new primary key and debug logs, without a restart; a new port waits for one
            d.config.write_text(controller_toml(host, gport, rport + 1, tmp_path / "ctl",
                                                [k2, k1], level="debug"))
            d.signal(signal.SIGHUP)
            await notify.next("RELOADING")
            assert "controller ctl" in (await notify.next("READY"))["STATUS"]
            await wait_until(lambda: d.find("configuration reloaded"), 5)
            changed = str(d.find("configuration reloaded")[0]["changed"])
            assert "log level info -> debug" in changed
            assert f"installed key {k2[:8]}" in changed
            assert f"primary key is now {k2[:8]}" in changed
            assert d.find("configuration reloaded")[0]["needs_restart"] == "rpc_addr"
            await wait_until(lambda: [r for r in d.records() if r["level"] == "debug"], 5)

            # the observer now speaks only the new key: the controller must understand it
            obs.set_keys([k2])
            await asyncio.sleep(1.0)  # several probe rounds
            assert status_of(obs, "ctl") is Status.ALIVE

            # the old key removed: a member that knows only it can no longer join
            d.config.write_text(controller_toml(host, gport, rport, tmp_path / "ctl", [k2],
                                                level="debug"))
            d.signal(signal.SIGHUP)
            await notify.next("RELOADING")
            await notify.next("READY")
            await wait_until(lambda: len(d.find("configuration reloaded")) == 2, 5)
            assert f"removed key {k1[:8]}" in str(d.find("configuration reloaded")[1]["changed"])
            async with observer([k1], (host, gport)) as stale:
                await asyncio.sleep(1.5)
                assert status_of(stale, "ctl") is None
            assert status_of(obs, "ctl") is Status.ALIVE

            # SIGTERM: STOPPING, then a graceful leave (left, not dead), exit 0
            d.signal(signal.SIGTERM)
            await notify.next("STOPPING")
            assert await exit_code(d) == 0
            await wait_until(lambda: status_of(obs, "ctl") is Status.LEFT, 10)


async def test_a_bad_file_on_sighup_changes_nothing(tmp_path: Path) -> None:
    host = "127.0.0.32"
    gport, rport = free_port(host), free_port(host)
    async with daemon(tmp_path, "controller.main",
                      controller_toml(host, gport, rport, tmp_path / "ctl", [new_key()])) \
            as (d, notify):
        await notify.next("READY")
        d.config.write_text("name = [unclosed\n")
        d.signal(signal.SIGHUP)
        await notify.next("RELOADING")
        await notify.next("READY")
        await wait_until(lambda: d.find("reload failed: the configuration is unchanged"), 5)
        assert d.proc.returncode is None  # still running
        d.signal(signal.SIGTERM)
        assert await exit_code(d) == 0


async def test_sigterm_finishes_every_request_in_flight_and_accepts_no_more(
        tmp_path: Path) -> None:
    """Clients register jobs without pause while the controller gets SIGTERM. A graceful stop
    answers every request it took and refuses the rest before doing anything: after a restart
    the store holds exactly the jobs whose registration was acknowledged."""
    host = "127.0.0.33"
    gport, rport = free_port(host), free_port(host)
    toml = controller_toml(host, gport, rport, tmp_path / "ctl", [new_key()])
    acknowledged: set[str] = set()
    failed: dict[str, str] = {}

    async def client(worker: int, stub: controller_pb2_grpc.ControllerServiceAsyncStub,
                     stop: Callable[[], bool]) -> None:
        i = 0
        while not stop():
            name = f"job-{worker}-{i}"
            i += 1
            try:
                await stub.RegisterJob(controller_pb2.RegisterJobRequest(job=service_job(name)),
                                       timeout=10)
                acknowledged.add(name)
            except grpc.aio.AioRpcError as e:
                failed[name] = e.code().name
                return

    async with daemon(tmp_path, "controller.main", toml) as (d, notify):
        await notify.next("READY")
        async with grpc.aio.insecure_channel(f"{host}:{rport}") as ch:
            stub = controller_pb2_grpc.ControllerServiceStub(ch)
            workers = [asyncio.create_task(client(w, stub, lambda: d.proc.returncode is not None))
                       for w in range(6)]
            await wait_until(lambda: len(acknowledged) >= 30, 30)
            d.signal(signal.SIGTERM)
            assert await exit_code(d) == 0
            async with asyncio.timeout(15):
                await asyncio.gather(*workers)
        assert failed, "every client should have been refused once the controller stopped"
        # refused, never half done: a call that arrives as the server stops is refused
        # (UNAVAILABLE) or cancelled before its handler ran; the store check below proves it
        assert set(failed.values()) <= {"UNAVAILABLE", "CANCELLED"}, failed

    async with daemon(tmp_path, "controller.main", toml) as (d, notify):
        await notify.next("READY")
        async with grpc.aio.insecure_channel(f"{host}:{rport}") as ch:
            stub = controller_pb2_grpc.ControllerServiceStub(ch)
            jobs = await stub.ListJobs(controller_pb2.ListJobsRequest(), timeout=10)
        stored = {j.name for j in jobs.jobs}
        assert stored == acknowledged, (
            f"stored but never acknowledged: {sorted(stored - acknowledged)}; "
            f"acknowledged but lost: {sorted(acknowledged - stored)}")
        d.signal(signal.SIGTERM)
        assert await exit_code(d) == 0


def agent_toml(host: str, gport: int, data: Path, key: str, tags: dict[str, str]) -> str:
    tag_lines = "".join(f'{k} = "{v}"\n' for k, v in tags.items())
    return (f'name = "agent-x"\nbind = "{host}:{gport}"\nrpc_addr = "{host}:0"\n'
            f'data_dir = "{data}"\nmetrics_addr = ""\ndrivers = ["process"]\n'
            f'keys = ["{key}"]\n[tags]\n{tag_lines}')


async def test_agent_reloads_its_tags_and_leaves_on_sigterm(tmp_path: Path) -> None:
    host = "127.0.0.34"
    gport = free_port(host)
    key = new_key()
    async with daemon(tmp_path, "agent.main",
                      agent_toml(host, gport, tmp_path / "agent", key, {"rack": "r1", "zone": "a"}),
                      watchdog_usec=1_000_000) as (d, notify):
        assert "agent agent-x" in (await notify.next("READY"))["STATUS"]
        async with observer([key], (host, gport)) as obs:
            await wait_until(lambda: state_of(obs, "agent-x").get("rack") == "r1", 15)
            assert state_of(obs, "agent-x")["zone"] == "a"

            d.config.write_text(agent_toml(host, gport, tmp_path / "agent", key,
                                           {"rack": "r2", "role": "web"}))
            d.signal(signal.SIGHUP)
            await notify.next("RELOADING")
            await notify.next("READY")
            await wait_until(lambda: state_of(obs, "agent-x").get("rack") == "r2", 10)
            state = state_of(obs, "agent-x")
            assert "zone" not in state
            assert state["role"] == "agent"  # reserved: a tag cannot change it
            reloaded = d.find("configuration reloaded")[0]
            assert "tags" in str(reloaded["changed"])
            assert "tags.role" in str(reloaded["needs_restart"])

            started = time.monotonic()
            d.signal(signal.SIGTERM)
            await notify.next("STOPPING")
            assert await exit_code(d) == 0
            assert time.monotonic() - started < 15
            await wait_until(lambda: status_of(obs, "agent-x") is Status.LEFT, 10)
