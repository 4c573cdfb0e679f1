"""The docker driver against the real engine: lifecycle, limits, ports, stop, logs, exec."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.runtime import labels
from agent.runtime.docker import DockerDriver
from agent.runtime.driver import TaskConfig, TaskHandle
from orch.errors import StartError
from orch.jobspec.model import Network, Port, Resources, Task
from tests.docker_engine import docker

pytestmark = [pytest.mark.docker, pytest.mark.timeout(60)]


def config(node: str, task: Task, *, alloc_id: str = "a1", network: Network | None = None,
           ports: dict[str, int] | None = None) -> TaskConfig:
    net = network or Network()
    ports = ports or {}
    spec = labels.spec_hash(task, net, ports)
    return TaskConfig(
        alloc_id=alloc_id, task=task, network=net, ports=ports, env={"GREETING": "hello"},
        labels=labels.task_labels(alloc_id=alloc_id, alloc_name="j.g[0]", namespace="default",
                                  job="j", job_version=7, group="g", task=task, node=node,
                                  spec=spec),
        spec_hash=spec, task_dir=Path("/nonexistent"), node_name=node)


def sh(image: str, script: str, **kw: object) -> Task:
    return Task(name="t", image=image, command="/bin/sh", args=("-c", script),
                kill_timeout=kw.pop("kill_timeout", 2.0), **kw)  # type: ignore[arg-type]


@pytest.fixture
async def driver(node_id: str, docker_url: str) -> AsyncIterator[DockerDriver]:
    d = DockerDriver(node_id=node_id, url=docker_url)
    await d.open()
    assert d.status.healthy, d.status.detail
    yield d
    await d.close()


async def text(d: DockerDriver, h: TaskHandle, stream: str = "stdout", **kw: object) -> bytes:
    return b"".join([c.data async for c in d.logs(h, stream, **kw)])  # type: ignore[arg-type]


async def test_lifecycle_exit_code_env_logs(driver: DockerDriver, node_id: str,
                                            test_image: str) -> None:
    h = await driver.start(config(node_id, sh(test_image, 'echo "$GREETING"; echo e >&2; exit 3')))
    result = await driver.wait(h)
    assert (result.exit_code, result.lost) == (3, False)
    assert await text(driver, h) == b"hello\n"
    assert await text(driver, h, "stderr") == b"e\n"
    assert await text(driver, h, offset=2) == b"llo\n"
    assert await text(driver, h, offset=-3) == b"lo\n"
    await driver.destroy(h)
    assert docker("ps", "-aq", "--filter", f"label=orch.node={node_id}").strip() == ""


async def test_limits_labels_and_signal_are_in_docker_inspect(driver: DockerDriver, node_id: str,
                                                               test_image: str) -> None:
    task = sh(test_image, "exec sleep 60", resources=Resources(cpu_millicores=250, memory_mb=48),
              kill_signal="SIGINT", labels={"team": "web"})
    h = await driver.start(config(node_id, task))
    (info,) = json.loads(docker("inspect", h.id))
    host = info["HostConfig"]
    assert (host["NanoCpus"], host["Memory"], host["MemorySwap"]) == (
        250_000_000, 48 << 20, 48 << 20)
    assert host["CpuShares"] == 256
    assert info["Config"]["StopSignal"] == "SIGINT"
    got = info["Config"]["Labels"]
    assert (got["orch.alloc"], got["orch.task"], got["orch.node"], got["orch.job"],
            got["orch.group"], got["orch.job_version"], got["team"]) == (
        "a1", "t", node_id, "j", "g", "7", "web")
    assert info["Name"] == "/t-a1"
    assert h.pid > 0
    await driver.stop(h, "SIGKILL", 1)


async def test_port_mapping_answers(driver: DockerDriver, node_id: str, test_image: str,
                                    unused_port: int) -> None:
    net = Network(ports=(Port(label="http", to=8080),))
    task = sh(test_image, "echo orch-ok > /var/www/index.html; exec httpd -f -p 8080 -h /var/www")
    h = await driver.start(config(node_id, task, network=net, ports={"http": unused_port}))
    body = b""
    for _ in range(50):  # httpd binds a moment after the container starts
        try:
            body = await asyncio.to_thread(_get, f"http://127.0.0.1:{unused_port}/")
            break
        except OSError:
            await asyncio.sleep(0.1)
    assert body == b"orch-ok\n"
    await driver.stop(h, "SIGKILL", 1)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=2) as r:
        data: bytes = r.read()
        return data


async def test_stop_grace_then_kill(driver: DockerDriver, node_id: str, test_image: str) -> None:
    polite = await driver.start(config(node_id, sh(
        test_image, 'trap "echo bye; exit 0" TERM; echo up; while true; do sleep 0.1; done'),
        alloc_id="polite"))
    stubborn = await driver.start(config(node_id, sh(
        test_image, 'trap "" TERM INT; echo up; while true; do sleep 0.1; done'),
        alloc_id="stubborn"))
    await wait_for_log(driver, polite, b"up")
    await wait_for_log(driver, stubborn, b"up")
    await driver.stop(polite, "SIGTERM", 5)
    assert (await driver.wait(polite)).exit_code == 0
    assert await text(driver, polite) == b"up\nbye\n"
    began = time.monotonic()
    await driver.stop(stubborn, "SIGINT", 1)
    assert time.monotonic() - began >= 1
    result = await driver.wait(stubborn)
    assert (result.exit_code, result.signal) == (137, 9)


async def test_exit_is_seen_promptly_from_the_event_stream(driver: DockerDriver, node_id: str,
                                                           test_image: str) -> None:
    h = await driver.start(config(node_id, sh(test_image, "exec sleep 60")))
    waiter = asyncio.ensure_future(driver.wait(h))
    await asyncio.sleep(0.2)
    assert not waiter.done()
    began = time.monotonic()
    docker("kill", "--signal", "KILL", h.id)
    result = await waiter
    assert result.exit_code == 137
    assert time.monotonic() - began < 2


async def test_missing_image_fails_clearly(driver: DockerDriver, node_id: str) -> None:
    task = Task(name="t", image="orch-test/not-here:1", command="true")
    with pytest.raises(StartError) as e:
        await driver.start(config(node_id, task))
    assert not e.value.recoverable
    assert str(e.value).startswith(
        f"image orch-test/not-here:1 is not present on node {node_id} and could not be pulled: ")


async def test_privileged_is_refused_unless_allowed(driver: DockerDriver, node_id: str,
                                                    test_image: str) -> None:
    with pytest.raises(StartError, match="privileged container, which node"):
        await driver.start(config(node_id, sh(test_image, "true", privileged=True)))


async def test_exec_and_usage(driver: DockerDriver, node_id: str, test_image: str) -> None:
    busy = sh(test_image, "while true; do :; done", resources=Resources(cpu_millicores=1000))
    h = await driver.start(config(node_id, busy))
    r = await driver.exec(h, ["sh", "-c", 'echo "$GREETING"; exit 4'])
    assert (r.exit_code, r.output) == (4, b"hello\n")
    assert (await driver.exec(h, ["/no/such/program"])).exit_code != 0
    await asyncio.sleep(0.5)
    u = await driver.usage(h)
    assert u is not None
    assert u.cpu_seconds > 0.05
    assert u.memory_bytes > 0
    await driver.stop(h, "SIGKILL", 1)
    assert await driver.usage(h) is None


async def test_logs_followed_while_written(driver: DockerDriver, node_id: str,
                                           test_image: str) -> None:
    h = await driver.start(config(node_id, sh(
        test_image, "for i in 1 2 3 4 5; do echo line$i; sleep 0.2; done")))
    seen, stamps = [], []
    async for chunk in driver.logs(h, "stdout", follow=True):
        seen.append(chunk.data)
        stamps.append(time.monotonic())
    assert b"".join(seen) == b"".join(b"line%d\n" % i for i in range(1, 6))
    assert stamps[-1] - stamps[0] > 0.5  # they came as they were written, not at the end


async def test_same_spec_is_adopted_and_a_new_spec_replaces(driver: DockerDriver, node_id: str,
                                                            test_image: str,
                                                            docker_url: str) -> None:
    cfg = config(node_id, sh(test_image, "exec sleep 60"))
    h = await driver.start(cfg)
    other = DockerDriver(node_id=node_id, url=docker_url)  # an agent started afresh
    await other.open()
    try:
        found = await other.recover()
        assert [(r.identity.alloc_id, r.running, r.handle.id) for r in found] == [
            ("a1", True, h.id)]
        assert (await other.start(cfg)).id == h.id  # not started twice
        changed = await other.start(config(node_id, sh(test_image, "exec sleep 61")))
        assert changed.id != h.id
        assert docker("ps", "-aq", "--filter", f"label=orch.node={node_id}").split() == [
            changed.id[:12]]
    finally:
        await other.close()


async def wait_for_log(d: DockerDriver, h: TaskHandle, want: bytes) -> None:
    async for chunk in d.logs(h, "stdout", follow=True):
        if want in chunk.data:
            return
    raise AssertionError(f"{want!r} never appeared")


@pytest.fixture
def unused_port() -> int:
    return _free_port()


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
