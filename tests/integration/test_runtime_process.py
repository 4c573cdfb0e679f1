"""The runtime converging real process tasks: desired sets, restarts, checks, adoption, GC."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agent.runtime.config import RuntimeConfig
from agent.runtime.process import ProcessDriver, group_usage
from agent.runtime.runtime import Runtime
from agent.runtime.state import AllocSpec, AllocStatus
from orch.errors import NotFoundError
from orch.jobspec.model import Check, Group, Network, Port, RestartPolicy, Task
from tests.integration.test_process_driver import kill_leftovers

pytestmark = pytest.mark.timeout(60)
NODE = "node-rt-proc"


def sh(script: str, name: str = "main", **kw: object) -> Task:
    return Task(name=name, driver="process", command="/bin/sh", args=("-c", script),
                kill_timeout=2.0, **kw)  # type: ignore[arg-type]


def alloc(aid: str, *tasks: Task, version: int = 1, desired: str = "run", job_type: str = "service",
          restart: RestartPolicy | None = None, network: Network | None = None) -> AllocSpec:
    group = Group(name="g", tasks=tasks, restart=restart or RestartPolicy(delay=0.05),
                  network=network or Network())
    return AllocSpec(id=aid, name=f"j.g[{aid}]", job="j", job_version=version, group=group,
                     desired=desired, job_type=job_type)  # type: ignore[arg-type]


def make_runtime(data: Path, **kw: object) -> Runtime:
    cfg = RuntimeConfig(node_id=NODE, data_dir=data, usage_interval=0.2, gc_interval=3600, **kw)  # type: ignore[arg-type]
    return Runtime(cfg, {"process": ProcessDriver(data, node_id=NODE, task_user="root",
                                                  allow_root=True)})


@pytest.fixture
async def rt(tmp_path: Path) -> AsyncIterator[Runtime]:
    r = make_runtime(tmp_path)
    await r.start()
    yield r
    await r.close(stop_tasks=True)
    kill_leftovers(tmp_path)


async def until(rt: Runtime, aid: str, want: Callable[[AllocStatus], bool],
                within: float = 15) -> AllocStatus:
    """Wait, on the runtime's own updates, until ``aid``'s status satisfies ``want``."""
    async with asyncio.timeout(within):
        while True:
            with contextlib.suppress(NotFoundError):
                st = rt.status(aid)
                if want(st):
                    return st
            await rt.next_updates()


def running(st: AllocStatus) -> bool:
    return st.client_status == "running"


def events(st: AllocStatus, task: str = "main") -> list[str]:
    return [e.type for e in st.tasks[task].events]


async def test_converges_and_applying_twice_changes_nothing(rt: Runtime) -> None:
    want = [alloc("a1", sh("exec sleep 60")), alloc("a2", sh("exec sleep 60"))]
    assert await rt.apply(1, want)
    s1 = await until(rt, "a1", running)
    s2 = await until(rt, "a2", running)
    ids = (s1.tasks["main"].driver_id, s2.tasks["main"].driver_id)
    assert await rt.apply(2, want)
    await rt.settle()
    assert (rt.status("a1").tasks["main"].driver_id, rt.status("a2").tasks["main"].driver_id) == ids
    assert events(rt.status("a1")).count("Started") == 1


async def test_stale_version_is_ignored(rt: Runtime) -> None:
    assert await rt.apply(5, [alloc("a1", sh("exec sleep 60"))])
    assert not await rt.apply(4, [])
    await rt.settle()
    assert rt.status("a1").client_status in ("pending", "running")


async def test_removed_allocation_is_stopped_and_cleaned(rt: Runtime, tmp_path: Path) -> None:
    await rt.apply(1, [alloc("a1", sh("exec sleep 60")), alloc("a2", sh("exec sleep 60"))])
    await until(rt, "a1", running)
    await until(rt, "a2", running)
    await rt.apply(2, [alloc("a2", sh("exec sleep 60"))])
    await rt.settle()
    with pytest.raises(NotFoundError):
        rt.status("a1")
    assert not (tmp_path / "alloc" / "a1").exists()
    assert rt.status("a2").client_status == "running"


async def test_desired_stop_completes(rt: Runtime) -> None:
    await rt.apply(1, [alloc("a1", sh("exec sleep 60"))])
    await until(rt, "a1", running)
    await rt.apply(2, [alloc("a1", sh("exec sleep 60"), desired="stop")])
    st = await until(rt, "a1", lambda s: s.client_status == "complete")
    assert events(st)[-2:] == ["Killing", "Killed"]


async def test_changed_task_is_replaced_and_new_version_alone_is_in_place(rt: Runtime) -> None:
    await rt.apply(1, [alloc("a1", sh("exec sleep 60"), version=1)])
    first = (await until(rt, "a1", running)).tasks["main"].driver_id
    await rt.apply(2, [alloc("a1", sh("exec sleep 60"), version=2)])
    await rt.settle()
    same = rt.status("a1")
    assert (same.tasks["main"].driver_id, same.job_version) == (first, 2)
    await rt.apply(3, [alloc("a1", sh("exec sleep 61"), version=3)])
    await rt.settle()
    st = await until(rt, "a1", running)
    assert st.tasks["main"].driver_id != first
    assert st.job_version == 3


async def test_restart_policy_then_failure(rt: Runtime) -> None:
    policy = RestartPolicy(attempts=2, interval=60, delay=0.05, mode="fail")
    await rt.apply(1, [alloc("a1", sh("echo try; exit 3"), restart=policy)])
    st = await until(rt, "a1", lambda s: s.client_status == "failed")
    t = st.tasks["main"]
    assert (t.state, t.failed, t.restarts, t.exit_code) == ("dead", True, 2, 3)
    assert events(st) == ["Received", "Started", "Terminated", "Restarting", "Started",
                          "Terminated", "Restarting", "Started", "Terminated", "Not Restarting"]
    assert "Exit Code: 3" in t.events[-2].message
    logs = b"".join([c.data async for c in rt.logs("a1", "main")])
    assert logs == b"try\n" * 3  # the log continues across restarts


async def test_batch_task_exiting_zero_completes(rt: Runtime) -> None:
    await rt.apply(1, [alloc("a1", sh("exit 0"), job_type="batch")])
    st = await until(rt, "a1", lambda s: s.client_status == "complete")
    assert not st.tasks["main"].failed
    assert st.tasks["main"].restarts == 0


async def test_sibling_failure_stops_the_others(rt: Runtime) -> None:
    policy = RestartPolicy(attempts=0, mode="fail")
    await rt.apply(1, [alloc("a1", sh("exec sleep 60", name="web"), sh("exit 1", name="bad"),
                             restart=policy)])
    st = await until(rt, "a1", lambda s: s.tasks["web"].state == "dead")
    assert st.client_status == "failed"
    assert "Sibling Task Failed" in events(st, "web")
    assert not st.tasks["web"].failed


async def test_unknown_driver_fails_the_allocation(rt: Runtime) -> None:
    await rt.apply(1, [alloc("a1", Task(name="main", driver="qemu", command="x"))])
    st = await until(rt, "a1", lambda s: s.client_status == "failed")
    assert "driver 'qemu' is not available on node node-rt-proc" in \
        st.tasks["main"].events[0].message


async def test_http_and_exec_checks_gate_health(rt: Runtime, tmp_path: Path) -> None:
    flag = tmp_path / "ready"
    checks = (Check(type="http", port="http", path="/", interval=0.1, timeout=1),
              Check(type="exec", command="/bin/sh", args=("-c", f"test -f {flag}"),
                    interval=0.1, timeout=1, unhealthy_threshold=2))
    server = Task(name="main", driver="process", command="/bin/sh", checks=checks,
                  args=("-c", f'exec {sys.executable} -m http.server --bind 127.0.0.1 '
                              '"$ORCH_PORT_http"'))
    net = Network(ports=(Port(label="http"),))
    await rt.apply(1, [alloc("a1", server, network=net)])
    st = await until(rt, "a1", running)
    assert not st.healthy  # the exec check cannot pass yet
    flag.touch()
    st = await until(rt, "a1", lambda s: s.healthy)
    verdicts = {c.name: (c.verdict, c.output) for c in st.tasks["main"].checks}
    assert verdicts["main-http-0"][0] == "passing"
    assert "HTTP 200" in verdicts["main-http-0"][1]
    assert 20000 <= st.ports["http"] <= 32000
    flag.unlink()
    st = await until(rt, "a1", lambda s: not s.healthy)
    assert "Health" in events(st)
    assert st.tasks["main"].checks[1].verdict == "failing"


async def test_usage_is_sampled_per_allocation(rt: Runtime) -> None:
    await rt.apply(1, [alloc("a1", sh("while true; do :; done"))])
    await until(rt, "a1", running)
    await asyncio.sleep(0.5)
    got = (await rt.sample_usage())["a1"]
    assert got.cpu_seconds > 0.05
    assert got.memory_bytes > 0
    assert rt.usage()["a1"].sampled_at_ns == got.sampled_at_ns


async def test_manual_restart(rt: Runtime) -> None:
    await rt.apply(1, [alloc("a1", sh("exec sleep 60"))])
    first = (await until(rt, "a1", running)).tasks["main"].driver_id
    assert rt.restart("a1") == ["main"]
    st = await until(rt, "a1", lambda s: running(s) and s.tasks["main"].driver_id != first)
    assert "Restart Signaled" in events(st)
    assert st.tasks["main"].restarts == 1


async def test_a_new_agent_adopts_and_collects_strays(tmp_path: Path) -> None:
    first = make_runtime(tmp_path)
    await first.start()
    try:
        await first.apply(1, [alloc("keep", sh("exec sleep 60")),
                              alloc("gone", sh("exec sleep 60"))])
        keep = (await until(first, "keep", running)).tasks["main"].driver_id
        gone = (await until(first, "gone", running)).tasks["main"].driver_id
        await first.close()  # the agent stops; its tasks do not

        second = make_runtime(tmp_path)
        await second.start()
        await second.apply(2, [alloc("keep", sh("exec sleep 60"))])
        st = await until(second, "keep", running)
        await second.settle()
        assert st.tasks["main"].driver_id == keep
        assert events(st) == ["Reattached"]
        assert not (tmp_path / "alloc" / "gone").exists()
        pid = int(gone.split(":")[1])  # the task's own process group
        assert group_usage({pid})[pid].memory_bytes == 0
        await second.close(stop_tasks=True)
    finally:
        kill_leftovers(tmp_path)
