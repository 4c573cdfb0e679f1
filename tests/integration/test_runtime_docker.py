"""The runtime on the real Docker engine: restarts, health, adoption, GC, the engine dying."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agent.runtime.config import RuntimeConfig
from agent.runtime.docker import DockerDriver
from agent.runtime.runtime import Runtime
from agent.runtime.state import AllocSpec, AllocStatus, DriverStatus
from orch.errors import NotFoundError
from orch.jobspec.model import Check, Group, Network, Port, RestartPolicy, Task
from tests.docker_engine import PrivateEngine, docker

pytestmark = [pytest.mark.docker, pytest.mark.timeout(90)]


def busybox(image: str, script: str, name: str = "main", **kw: object) -> Task:
    return Task(name=name, image=image, command="/bin/sh", args=("-c", script),
                kill_timeout=1.0, **kw)  # type: ignore[arg-type]


def alloc(aid: str, *tasks: Task, version: int = 1, restart: RestartPolicy | None = None,
          network: Network | None = None) -> AllocSpec:
    group = Group(name="g", tasks=tasks, restart=restart or RestartPolicy(delay=0.1),
                  network=network or Network())
    return AllocSpec(id=aid, name=f"j.g[{aid}]", job="j", job_version=version, group=group)


def make_runtime(node: str, data: Path, url: str) -> Runtime:
    cfg = RuntimeConfig(node_id=node, data_dir=data, docker_url=url, usage_interval=3600,
                        gc_interval=3600, gc_kill_timeout=0.5)
    return Runtime(cfg, {"docker": DockerDriver(node_id=node, url=url)})


@pytest.fixture
async def rt(node_id: str, tmp_path: Path, docker_url: str) -> AsyncIterator[Runtime]:
    r = make_runtime(node_id, tmp_path, docker_url)
    await r.start()
    yield r
    await r.close(stop_tasks=True)


async def until(rt: Runtime, aid: str, want: Callable[[AllocStatus], bool],
                within: float = 30) -> AllocStatus:
    async with asyncio.timeout(within):
        while True:
            with contextlib.suppress(NotFoundError):
                st = rt.status(aid)
                if want(st):
                    return st
            await rt.next_updates()


def running(st: AllocStatus) -> bool:
    return st.client_status == "running"


def containers(node: str, url: str | None = None) -> list[str]:
    return docker("ps", "-aq", "--no-trunc", "--filter", f"label=orch.node={node}",
                  url=url).split()


async def test_restart_after_a_crash(rt: Runtime, test_image: str) -> None:
    # The first run crashes; the restart reuses the container, so the marker file is there.
    script = "if [ -f /tmp/ran ]; then echo again; exec sleep 60; fi; touch /tmp/ran; exit 2"
    await rt.apply(1, [alloc("a1", busybox(test_image, script))])
    st = await until(rt, "a1", lambda s: running(s) and s.tasks["main"].restarts == 1)
    types = [e.type for e in st.tasks["main"].events]
    assert types == ["Received", "Started", "Terminated", "Restarting", "Started"]
    assert "Exit Code: 2" in st.tasks["main"].events[2].message
    async for chunk in rt.logs("a1", "main", follow=True):  # it keeps running: stop at "again"
        if b"again" in chunk.data:
            break
    assert b"".join([c.data async for c in rt.logs("a1", "main")]) == b"again\n"


async def test_health_turns_healthy_then_unhealthy(rt: Runtime, test_image: str) -> None:
    checks = (Check(type="http", port="http", path="/index.html", interval=0.2, timeout=1),
              Check(type="exec", command="test", args=("-f", "/tmp/ready"), interval=0.2,
                    timeout=2, unhealthy_threshold=2))
    task = busybox(test_image, "touch /tmp/ready; exec httpd -f -p 8080 -h /var/www",
                   checks=checks)
    net = Network(ports=(Port(label="http", to=8080),))
    await rt.apply(1, [alloc("a1", task, network=net)])
    st = await until(rt, "a1", lambda s: s.healthy)
    assert {c.verdict for c in st.tasks["main"].checks} == {"passing"}
    cid = st.tasks["main"].driver_id
    docker("exec", cid, "rm", "/tmp/ready")
    st = await until(rt, "a1", lambda s: not s.healthy)
    assert st.client_status == "running"
    failing = [c for c in st.tasks["main"].checks if c.verdict == "failing"]
    assert [c.type for c in failing] == ["exec"]


async def test_missing_image_fails_the_allocation(rt: Runtime, node_id: str) -> None:
    await rt.apply(1, [alloc("a1", Task(name="main", image="orch-test/absent:9", command="x"))])
    st = await until(rt, "a1", lambda s: s.client_status == "failed")
    messages = [e.message for e in st.tasks["main"].events]
    assert any(m.startswith(f"image orch-test/absent:9 is not present on node {node_id} and "
                            "could not be pulled: ") for m in messages)


async def test_agent_restart_adopts_without_duplicates_and_collects_strays(
        node_id: str, tmp_path: Path, docker_url: str, test_image: str) -> None:
    first = make_runtime(node_id, tmp_path, docker_url)
    await first.start()
    want = [alloc(f"a{i}", busybox(test_image, "exec sleep 60")) for i in range(3)]
    await first.apply(1, [*want, alloc("old", busybox(test_image, "exec sleep 60"))])
    before = {}
    for a in [*want, alloc("old", busybox(test_image, "exec sleep 60"))]:
        before[a.id] = (await until(first, a.id, running)).tasks["main"].driver_id
    await first.close()  # the agent goes; the containers stay
    assert len(containers(node_id)) == 4
    # a container with orch's labels for this node that no allocation will claim
    docker("run", "-d", "--label", "orch.managed=true", "--label", "orch.alloc=stray",
           "--label", "orch.task=main", "--label", f"orch.node={node_id}", test_image,
           "sleep", "60")

    second = make_runtime(node_id, tmp_path, docker_url)
    await second.start()
    try:
        await second.apply(2, want)
        for a in want:
            st = await until(second, a.id, running)
            assert st.tasks["main"].driver_id == before[a.id]
            assert [e.type for e in st.tasks["main"].events] == ["Reattached"]
        await second.settle()
        assert sorted(containers(node_id)) == sorted(before[a.id] for a in want)
        # the periodic sweep catches what appears later
        docker("run", "-d", "--label", "orch.managed=true", "--label", "orch.alloc=late",
               "--label", "orch.task=main", "--label", f"orch.node={node_id}", test_image,
               "sleep", "60")
        assert await second.collect_garbage() == 1
        assert len(containers(node_id)) == 3
    finally:
        await second.close(stop_tasks=True)
    assert containers(node_id) == []


async def test_engine_stopped_mid_run_is_reported_and_recovered(
        private_engine: PrivateEngine, node_id: str, tmp_path: Path, test_image: str) -> None:
    rt = make_runtime(node_id, tmp_path, private_engine.url)
    await rt.start()
    try:
        await rt.apply(1, [alloc("a1", busybox(test_image, "exec sleep 600"))])
        first = (await until(rt, "a1", running)).tasks["main"].driver_id

        await asyncio.to_thread(private_engine.stop)
        down: list[DriverStatus] = []
        async with asyncio.timeout(30):
            while not down:
                down = [u for u in await rt.next_updates()
                        if isinstance(u, DriverStatus) and not u.healthy]
        assert down[0].name == "docker"
        assert "cannot reach the Docker engine" in down[0].detail
        st = await until(rt, "a1", lambda s: s.tasks["main"].events[-1].type == "Driver Failure")
        assert (st.client_status, st.healthy) == ("pending", False)
        assert "waiting for the docker driver" in st.tasks["main"].events[-1].message

        await asyncio.to_thread(private_engine.start)
        st = await until(rt, "a1", lambda s: running(s) and s.tasks["main"].restarts >= 1)
        assert st.tasks["main"].driver_id == first  # the same container, started again
        terminated = [e for e in st.tasks["main"].events if e.type == "Terminated"]
        assert "stopped from outside orch" in terminated[-1].message
        assert rt.driver_statuses()[0].healthy
        info = json.loads(docker("inspect", first, url=private_engine.url))
        assert info[0]["State"]["Running"]
    finally:
        await rt.close(stop_tasks=True, grace=10)


async def test_new_cpu_and_memory_are_applied_to_the_running_container(
        rt: Runtime, test_image: str, node_id: str, docker_url: str) -> None:
    from orch.jobspec.model import Resources

    small = busybox(test_image, "sleep 600", resources=Resources(cpu_millicores=200,
                                                                 memory_mb=32))
    await rt.apply(1, [alloc("r1", small)])
    await until(rt, "r1", running)
    (cid,) = containers(node_id, docker_url)
    before = json.loads(docker("inspect", cid, url=docker_url))[0]
    big = busybox(test_image, "sleep 600", resources=Resources(cpu_millicores=700,
                                                               memory_mb=96))
    await rt.apply(2, [alloc("r1", big, version=2)])
    await until(rt, "r1", lambda st: st.job_version == 2)
    assert containers(node_id, docker_url) == [cid]  # the same container
    after = json.loads(docker("inspect", cid, url=docker_url))[0]
    assert after["HostConfig"]["NanoCpus"] == 700_000_000
    assert after["HostConfig"]["Memory"] == 96 * 1024 * 1024
    assert after["State"]["StartedAt"] == before["State"]["StartedAt"]  # not restarted
    assert any(e.type == "Resized" for e in rt.status("r1").tasks["main"].events)
