"""``orchctl job logs`` on real sockets and real processes: every allocation's lines, each
prefixed with its allocation and task; by group, task and stream; since a time; following
allocations that start while it runs; JSON lines; a job that does not exist. And Docker's
logs from a time (the engine's own timestamps)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from agent.runtime import labels, logfiles
from agent.runtime.docker import DockerDriver
from agent.runtime.driver import TaskConfig
from controller.server import Controller
from orch.jobspec.model import Network, Task
from tests.integration.live import Cli, live_cluster
from tests.integration.synthetic import wait_until

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")

SERVER = ('echo "early $ORCH_ALLOC_NAME/$ORCH_TASK_NAME"; echo "oops $ORCH_ALLOC_NAME" >&2; '
          'sleep 6; echo "late $ORCH_ALLOC_NAME/$ORCH_TASK_NAME"; exec sleep 600')
SHOP = """
name: shop
update: {min_healthy_time: 0s, healthy_deadline: 60s, progress_deadline: 90s}
groups:
  - name: web
    count: 2
    tasks:
      - name: server
        driver: process
        command: /bin/sh
        args: ["-c", {server}]
        resources: {cpu_millicores: 20, memory_mb: 16}
      - name: sidecar
        driver: process
        command: /bin/sh
        args: ["-c", "echo \\"early $ORCH_ALLOC_NAME/$ORCH_TASK_NAME\\"; exec sleep 600"]
        resources: {cpu_millicores: 20, memory_mb: 16}
  - name: db
    tasks:
      - name: kv
        driver: process
        command: /bin/sh
        args: ["-c", "echo \\"early $ORCH_ALLOC_NAME/$ORCH_TASK_NAME\\"; exec sleep 600"]
        resources: {cpu_millicores: 20, memory_mb: 16}
"""


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[tuple[Controller, Cli]]:
    async with live_cluster(tmp_path, agents=2, net="127.0.24") as (ctl, _):
        cli = Cli(ctl.rpc_address, tmp_path)
        job = tmp_path / "shop.yaml"
        job.write_text(SHOP.replace("{server}", json.dumps(SERVER)))
        await cli("job", "run", str(job))
        yield ctl, cli


def parse(text: str) -> list[tuple[str, str, str, str]]:
    """(allocation name, id prefix, task, line) of each line ``job logs`` printed."""
    out = []
    for line in text.splitlines():
        prefix, _, rest = line.partition(" | ")
        name, short, task = prefix.split()
        out.append((name, short, task, rest))
    return out


async def test_every_allocation_and_task_each_line_prefixed(
        shop: tuple[Controller, Cli]) -> None:
    ctl, cli = shop
    ids = {a.name: a.id[:8] for a in ctl.cluster.state.allocs_of_job(("default", "shop"))}
    expected = {("shop.web[0]", "server"), ("shop.web[0]", "sidecar"), ("shop.web[1]", "server"),
                ("shop.web[1]", "sidecar"), ("shop.db[0]", "kv")}

    async def early() -> set[tuple[str, str]]:
        got = parse(await cli("job", "logs", "shop"))
        for name, short, task, line in got:
            assert ids[name] == short
            assert line.endswith(f"{name}/{task}")  # each line under its own prefix
        return {(name, task) for name, _, task, _ in got}
    await wait_until_async(lambda: early(), expected)
    assert {(n, t) for n, _, t, _ in parse(await cli("job", "logs", "shop", "--group", "db"))} \
        == {("shop.db[0]", "kv")}
    assert {(n, t) for n, _, t, _ in parse(await cli("job", "logs", "shop", "--task", "sidecar"))} \
        == {("shop.web[0]", "sidecar"), ("shop.web[1]", "sidecar")}
    errors = await orchctl(cli, "job", "logs", "shop", "--stderr")
    assert sorted(line for *_, line in parse(errors[2])) == ["oops shop.web[0]", "oops shop.web[1]"]
    assert errors[1] == ""
    _, out, err = await orchctl(cli, "job", "logs", "shop", "--all", "--task", "server")
    assert {line.split()[0] for *_, line in parse(out)} <= {"early", "late"}
    assert {line.split()[0] for *_, line in parse(err)} == {"oops"}
    docs = [json.loads(line) for line in (await cli("-o", "json", "job", "logs", "shop",
                                                     "--group", "db")).splitlines()]
    (db,) = [a for a in ctl.cluster.state.allocs_of_job(("default", "shop")) if a.group == "db"]
    assert docs == [{"alloc_id": db.id, "alloc": "shop.db[0]", "task": "kv", "stream": "stdout",
                     "line": "early shop.db[0]/kv"}]
    code, _, err = await orchctl(cli, "job", "logs", "nope")
    assert (code, err) == (1, "orchctl: job 'nope' not found in namespace 'default'\n")


async def test_since_shows_only_what_came_after(shop: tuple[Controller, Cli],
                                                tmp_path: Path) -> None:
    _, cli = shop

    def late_marks() -> list[int]:  # when each server wrote "late" (its log's time marks)
        folders = list(tmp_path.glob("agent-*/alloc/*/server/logs"))
        marks = [logfiles.read_marks(f, "server.stdout") for f in folders]
        return [m[-1][0] for m in marks if len(m) == 2]
    late = await wait_until_value(late_marks, lambda got: len(got) == 2)
    # "late" came 6 s after "early": from 2 s before the first "late", only the late lines
    when = dt.datetime.fromtimestamp(min(late) / 1e9 - 2, dt.UTC).isoformat()
    recent = [line for *_, line in parse(await cli("job", "logs", "shop", "--task", "server",
                                                   "--since", when))]
    assert sorted(recent) == ["late shop.web[0]/server", "late shop.web[1]/server"]
    assert [line for *_, line in parse(await cli("job", "logs", "shop", "--task", "server",
                                                 "--since", "1h"))].count(
        "early shop.web[0]/server") == 1
    code, _, err = await orchctl(cli, "job", "logs", "shop", "--since", "soon")
    assert code == 2
    assert "--since: not a duration" in err


async def test_follow_picks_up_allocations_that_start(shop: tuple[Controller, Cli]) -> None:
    _, cli = shop
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchctl.main", "--address", cli.addr, "job", "logs", "shop",
        "-f", "--task", "sidecar", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=ROOT)
    seen: list[str] = []
    assert proc.stdout is not None

    async def read() -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            seen.append(line.decode())
    reader = asyncio.ensure_future(read())
    try:
        await wait_until(lambda: len(seen) >= 2, within=20)
        await cli("job", "scale", "shop", "web", "3")
        await wait_until(lambda: any("early shop.web[2]/sidecar" in s for s in seen), within=30)
        assert proc.returncode is None  # still following
        assert {p[0] for p in parse("".join(seen))} == {"shop.web[0]", "shop.web[1]",
                                                       "shop.web[2]"}
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        await proc.wait()
        reader.cancel()


async def wait_until_value(get: Callable[[], T], ok: Callable[[T], bool],
                           within: float = 30) -> T:
    deadline = time.monotonic() + within
    while not ok(value := get()):
        assert time.monotonic() < deadline, f"waited {within}s; last {value!r}"
        await asyncio.sleep(0.1)
    return value


async def wait_until_async(check: object, expected: object, within: float = 30) -> None:
    """Until ``await check()`` returns ``expected``."""
    deadline = time.monotonic() + within
    last: object = None
    while time.monotonic() < deadline:
        last = await check()  # type: ignore[operator]
        if last == expected:
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"waited {within}s for {expected!r}; last {last!r}")


async def orchctl(cli: Cli, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchctl.main", "--address", cli.addr, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.docker
async def test_docker_logs_start_at_a_time(node_id: str, docker_url: str, test_image: str,
                                           tmp_path: Path) -> None:
    d = DockerDriver(node_id=node_id, url=docker_url)
    await d.open()
    task = Task(name="t", image=test_image, command="/bin/sh",
                args=("-c", "echo early; sleep 2; echo late; sleep 60"), kill_timeout=1)
    net = Network()
    spec = labels.spec_hash(task, net, {})
    cfg = TaskConfig(alloc_id="a1", task=task, network=net, ports={}, env={},
                     labels=labels.task_labels(alloc_id="a1", alloc_name="j.g[0]",
                                               namespace="default", job="j", job_version=1,
                                               group="g", task=task, node=node_id, spec=spec),
                     spec_hash=spec, task_dir=tmp_path, node_name=node_id)
    h = await d.start(cfg)
    try:
        async def text(offset: int) -> bytes:
            return b"".join([c.data async for c in d.logs(h, "stdout", offset=offset)])
        began = time.time_ns()
        await wait_until_async(lambda: text(0), b"early\nlate\n")
        assert await d.log_offset(h, "stdout", began - 10**9) == 0
        middle = await d.log_offset(h, "stdout", began + 10**9)
        assert await text(middle) == b"late\n"
        assert await d.log_offset(h, "stdout", time.time_ns() + 10**9) == len(b"early\nlate\n")
    finally:
        await d.stop(h, "SIGKILL", 1)
        await d.destroy(h)
        await d.close()
