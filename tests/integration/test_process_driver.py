"""The process driver on real processes: lifecycle, stop semantics, logs, adoption."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.runtime import labels
from agent.runtime.cgroups import CgroupError, Hierarchy, TaskCgroup, cpu_shares, cpu_weight
from agent.runtime.driver import TaskConfig, TaskHandle
from agent.runtime.process import ProcessDriver, group_usage
from orch.errors import StartError
from orch.jobspec.model import Network, Resources, Task
from tests.integration.runtime_util import until

pytestmark = pytest.mark.timeout(30)
NODE = "node-proc-test"


def config(data: Path, task: Task, alloc_id: str = "a1") -> TaskConfig:
    net = Network()
    spec = labels.spec_hash(task, net, {})
    return TaskConfig(
        alloc_id=alloc_id, task=task, network=net, ports={}, env={"GREETING": "hello"},
        labels=labels.task_labels(alloc_id=alloc_id, alloc_name="j.g[0]", namespace="default",
                                  job="j", job_version=1, group="g", task=task, node=NODE,
                                  spec=spec),
        spec_hash=spec, task_dir=data / "alloc" / alloc_id / task.name, node_name=NODE)


def sh(name: str, script: str, **kw: object) -> Task:
    return Task(name=name, driver="process", command="/bin/sh", args=("-c", script), **kw)  # type: ignore[arg-type]


@pytest.fixture
async def driver(tmp_path: Path) -> AsyncIterator[ProcessDriver]:
    d = ProcessDriver(tmp_path, node_id=NODE, log_max_bytes=1000, log_max_files=3,
                      task_user="root", allow_root=True)
    await d.open()
    yield d
    await d.close()
    kill_leftovers(tmp_path)


def kill_leftovers(data: Path) -> None:
    """Leave no process behind, whatever a test did."""
    for state in data.glob("alloc/*/*/state.json"):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(json.loads(state.read_text())["pgid"], signal.SIGKILL)


async def read_all(d: ProcessDriver, h: TaskHandle, stream: str = "stdout") -> bytes:
    return b"".join([c.data async for c in d.logs(h, stream)])  # type: ignore[arg-type]


async def test_runs_to_exit_with_code_env_and_logs(driver: ProcessDriver, tmp_path: Path) -> None:
    h = await driver.start(config(tmp_path, sh("t", 'echo "$GREETING"; echo oops >&2; exit 3')))
    assert h.pid > 0
    result = await driver.wait(h)
    assert result.exit_code == 3
    assert not result.lost
    assert await read_all(driver, h) == b"hello\n"
    assert await read_all(driver, h, "stderr") == b"oops\n"


async def test_stop_sends_the_signal_then_waits(driver: ProcessDriver, tmp_path: Path) -> None:
    script = 'trap "echo bye; exit 0" TERM; echo up; while true; do sleep 0.05; done'
    h = await driver.start(config(tmp_path, sh("t", script)))
    await wait_for_log(driver, h, b"up")
    await driver.stop(h, "SIGTERM", grace=5)
    result = await driver.wait(h)
    assert (result.exit_code, result.signal) == (0, 0)
    assert await read_all(driver, h) == b"up\nbye\n"


async def test_stop_kills_after_grace_and_takes_the_whole_group(driver: ProcessDriver,
                                                                tmp_path: Path) -> None:
    h = await driver.start(config(tmp_path, sh("t", 'trap "" TERM; sleep 100 & echo up; wait')))
    await wait_for_log(driver, h, b"up")
    pgid = int(h.extra["pgid"])
    assert group_usage({pgid})[pgid].memory_bytes > 0
    began = time.monotonic()
    await driver.stop(h, "TERM", grace=0.5)
    assert time.monotonic() - began >= 0.5
    result = await driver.wait(h)
    assert (result.exit_code, result.signal) == (137, 9)
    await group_gone(pgid)  # nothing of the group is left


async def test_grandchildren_die_with_the_main_process(driver: ProcessDriver,
                                                       tmp_path: Path) -> None:
    h = await driver.start(config(tmp_path, sh("t", "sleep 100 & exit 0")))
    pgid = int(h.extra["pgid"])
    assert (await driver.wait(h)).exit_code == 0
    await group_gone(pgid)


async def test_missing_program_is_an_unrecoverable_start_error(driver: ProcessDriver,
                                                               tmp_path: Path) -> None:
    task = Task(name="t", driver="process", command="/nonexistent/prog")
    with pytest.raises(StartError, match="cannot run '/nonexistent/prog': No such file") as e:
        await driver.start(config(tmp_path, task))
    assert not e.value.recoverable


async def test_follow_yields_lines_while_they_are_written(driver: ProcessDriver,
                                                          tmp_path: Path) -> None:
    h = await driver.start(config(tmp_path, sh(
        "t", "for i in 1 2 3 4 5; do echo line$i; sleep 0.2; done")))
    seen: list[bytes] = []
    first_seen_running = None
    async for chunk in driver.logs(h, "stdout", follow=True):
        if first_seen_running is None:
            first_seen_running = not (Path(h.extra["task_dir"]) / "exit.json").exists()
        seen.append(chunk.data)
    assert b"".join(seen) == b"".join(b"line%d\n" % i for i in range(1, 6))
    assert first_seen_running
    assert len(seen) >= 3  # it came in pieces, as written


async def test_logs_rotate_and_keep_offsets(driver: ProcessDriver, tmp_path: Path) -> None:
    # 5000 bytes into 1000-byte files, 3 kept: bytes 2000..4999 remain.
    h = await driver.start(config(tmp_path, sh("t", "i=0; while [ $i -lt 500 ]; do "
                                                    "echo 123456789; i=$((i+1)); done")))
    await driver.wait(h)
    chunks = [c async for c in driver.logs(h, "stdout")]
    assert chunks[0].offset == 2000
    assert len(b"".join(c.data for c in chunks)) == 3000
    tail = [c async for c in driver.logs(h, "stdout", offset=-10)]
    assert (tail[0].offset, tail[0].data) == (4990, b"123456789\n")


async def test_exec_runs_in_the_task_environment(driver: ProcessDriver, tmp_path: Path) -> None:
    h = await driver.start(config(tmp_path, sh("t", "sleep 30")))
    r = await driver.exec(h, ["/bin/sh", "-c", 'echo "$GREETING"; exit 4'])
    assert (r.exit_code, r.output) == (4, b"hello\n")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await driver.exec(h, ["/bin/sleep", "30"])
    await driver.stop(h, "SIGKILL", grace=1)


async def test_usage_counts_cpu_time(driver: ProcessDriver, tmp_path: Path) -> None:
    h = await driver.start(config(tmp_path, sh("t", "while true; do :; done")))
    await asyncio.sleep(0.5)
    u = await driver.usage(h)
    assert u is not None
    assert u.cpu_seconds > 0.05
    assert u.memory_bytes > 100_000
    await driver.stop(h, "SIGKILL", grace=1)
    assert await driver.usage(h) is None


async def test_a_new_driver_adopts_the_running_task(tmp_path: Path,
                                                    driver: ProcessDriver) -> None:
    cfg = config(tmp_path, sh("t", "echo up; exec sleep 60"))
    h = await driver.start(cfg)
    await wait_for_log(driver, h, b"up")
    await driver.close()  # the agent goes away; the task does not

    again = ProcessDriver(tmp_path, node_id=NODE, task_user="root", allow_root=True)
    await again.open()
    found = await again.recover()
    assert [(r.identity.alloc_id, r.identity.task, r.running) for r in found] == [("a1", "t", True)]
    h2 = await again.start(cfg)  # same spec: adopted, not started twice
    assert (h2.id, h2.pid) == (h.id, h.pid)
    await again.stop(h2, "SIGTERM", grace=2)
    assert (await again.wait(h2)).signal == signal.SIGTERM
    await again.close()


async def test_exit_while_no_agent_watched_is_found(tmp_path: Path,
                                                    driver: ProcessDriver) -> None:
    h = await driver.start(config(tmp_path, sh("t", "exec sleep 60")))
    await driver.close()
    os.killpg(int(h.extra["pgid"]), signal.SIGKILL)
    exit_file = Path(h.extra["task_dir"]) / "exit.json"
    await until(exit_file.exists, "the shim writes exit.json as the task dies")
    again = ProcessDriver(tmp_path, node_id=NODE, task_user="root", allow_root=True)
    await again.open()
    (found,) = await again.recover()
    assert not found.running
    assert found.exit is not None
    assert found.exit.exit_code == 137
    await again.close()


async def test_supervisor_killed_means_task_lost(driver: ProcessDriver, tmp_path: Path) -> None:
    h = await driver.start(config(tmp_path, sh("t", "exec sleep 60")))
    os.kill(int(h.extra["shim_pid"]), signal.SIGKILL)
    result = await driver.wait(h)
    assert result.lost
    assert "supervisor died" in result.error
    pgid = int(h.extra["pgid"])
    await group_gone(pgid)


async def test_destroy_removes_the_task_folder(driver: ProcessDriver, tmp_path: Path) -> None:
    h = await driver.start(config(tmp_path, sh("t", "true")))
    await driver.wait(h)
    await driver.destroy(h)
    assert not (tmp_path / "alloc" / "a1").exists()


async def wait_for_log(d: ProcessDriver, h: TaskHandle, want: bytes) -> None:
    async for chunk in d.logs(h, "stdout", follow=True):
        if want in chunk.data:
            return
    raise AssertionError(f"{want!r} never appeared")


async def group_gone(pgid: int) -> None:
    await until(lambda: not group_usage({pgid})[pgid].memory_bytes,
                f"every process of group {pgid} is gone")


# --- limits: cgroups (root, cgroup v1 or v2 with cpu and memory) ----------------------

def cgroups_or_skip() -> Hierarchy:
    try:
        return Hierarchy.detect()
    except (CgroupError, OSError) as e:
        pytest.skip(f"cgroups cannot be made here: {e}")


def cgroup_of(data: Path, alloc: str, task: str) -> TaskCgroup:
    doc = json.loads((data / "alloc" / alloc / task / "spec.json").read_text())["cgroup"]
    return TaskCgroup.from_doc(doc)


def limits_of(cg: TaskCgroup) -> tuple[int, int]:
    """(memory limit in bytes, CPU shares or weight) as the kernel holds them."""
    if cg.version == 2:
        return int(cg.paths[0].joinpath("memory.max").read_text()), int(
            cg.paths[0].joinpath("cpu.weight").read_text())
    return int(cg.paths[0].joinpath("memory.limit_in_bytes").read_text()), int(
        cg.paths[1].joinpath("cpu.shares").read_text())


async def test_limits_are_set_resized_in_place_and_removed(driver: ProcessDriver,
                                                           tmp_path: Path) -> None:
    h_ = cgroups_or_skip()
    assert driver.attributes() == {"driver.process.limits": f"cgroup-v{h_.version}"}
    task = sh("t", "echo up; exec sleep 60", resources=Resources(cpu_millicores=250, memory_mb=48))
    h = await driver.start(config(tmp_path, task))
    await wait_for_log(driver, h, b"up")
    cg = cgroup_of(tmp_path, "a1", "t")
    assert h.pid in cg.pids()
    assert limits_of(cg) == (48 << 20, cpu_shares(250) if cg.version == 1 else cpu_weight(250))
    assert await driver.resize(h, Resources(cpu_millicores=500, memory_mb=96))
    assert limits_of(cg) == (96 << 20, cpu_shares(500) if cg.version == 1 else cpu_weight(500))
    assert h.pid in cg.pids()  # the same process, new limits
    await driver.stop(h, "SIGTERM", grace=5)
    await driver.wait(h)
    assert not any(p.exists() for p in cg.paths)


async def test_a_task_above_its_memory_is_oom_killed(driver: ProcessDriver,
                                                     tmp_path: Path) -> None:
    cgroups_or_skip()
    grow = "b = bytearray(256 << 20); import time; time.sleep(30)"  # 256 MiB, touched
    task = Task(name="hog", driver="process", command=sys.executable, args=("-c", grow),
                resources=Resources(memory_mb=32))
    h = await driver.start(config(tmp_path, task))
    result = await driver.wait(h)
    assert (result.signal, result.oom_killed) == (signal.SIGKILL, True)
    assert "OOM Killed: true" in result.describe()


async def test_what_left_the_process_group_dies_with_the_task(driver: ProcessDriver,
                                                             tmp_path: Path) -> None:
    cgroups_or_skip()
    script = "setsid sleep 60 >/dev/null 2>&1 & echo $!; sleep 0.3; exit 0"
    h = await driver.start(config(tmp_path, sh("t", script)))
    result = await driver.wait(h)
    assert result.exit_code == 0
    escaped = int((await read_all(driver, h)).split()[0])
    await until(lambda: not os.path.exists(f"/proc/{escaped}"),
                "the process in its own session is gone")


async def test_the_task_runs_as_its_user_and_groups(driver: ProcessDriver,
                                                    tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to change user")
    h = await driver.start(config(tmp_path, sh("t", "id -u; id -g; id -G", user="nobody")))
    assert (await driver.wait(h)).exit_code == 0
    nobody = pwd.getpwnam("nobody")
    uid, gid, groups = (await read_all(driver, h)).decode().split("\n")[:3]
    assert (int(uid), int(gid)) == (nobody.pw_uid, nobody.pw_gid)
    assert "0" not in groups.split()  # root's group is not kept


async def test_without_limits_the_node_says_so(tmp_path: Path) -> None:
    d = ProcessDriver(tmp_path, node_id=NODE, limits=False, task_user="root",
                      allow_root=True)
    await d.open()
    try:
        assert d.attributes() == {"driver.process.limits": "none"}
        assert "limits none" in d.status.detail
        h = await d.start(config(tmp_path, sh("t", "exit 0")))
        assert (await d.wait(h)).exit_code == 0
        spec = json.loads((tmp_path / "alloc/a1/t/spec.json").read_text())
        assert spec["cgroup"] is None
    finally:
        await d.close()
