"""Following with orchctl as a person does: ``alloc logs -f`` across a Docker task's restarts
(Docker starts the same container again: its id does not change), and ``events -f`` as
things happen. orchctl runs as a real subprocess against a live cluster."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

import pytest

from tests.integration.live import Cli, live_cluster
from tests.integration.synthetic import wait_until

DOCKER_CRASHER = """
name: crasher
groups:
  - name: app
    restart: {{attempts: 10, interval: 5m, delay: 1s, mode: delay}}
    tasks:
      - name: server
        driver: docker
        image: {image}
        command: /bin/sh
        args: ["-c", "echo run $(cat /proc/uptime); echo err >&2; sleep 0.5; exit 1"]
        resources: {{cpu_millicores: 50, memory_mb: 32}}
"""

SLEEPER = """
name: sleeper
groups:
  - name: app
    count: 2
    tasks:
      - name: main
        driver: process
        command: /bin/sleep
        args: ["600"]
        resources: {cpu_millicores: 50, memory_mb: 16}
"""


async def orchctl(addr: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchctl.main", "--address", addr, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def lines_until(proc: asyncio.subprocess.Process, done: object, within: float) -> list[str]:
    """Lines of ``proc``'s output until ``done(lines)`` holds (or ``within`` seconds)."""
    assert proc.stdout is not None
    got: list[str] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            while not done(got):  # type: ignore[operator]
                line = await proc.stdout.readline()
                if not line:
                    break
                got.append(line.decode().rstrip("\n"))
    proc.terminate()
    await proc.wait()
    return got


@pytest.mark.docker
async def test_logs_follow_a_docker_task_across_its_restarts(tmp_path: Path,
                                                              test_image: str) -> None:
    async with live_cluster(tmp_path, agents=1, drivers=("docker",), net="127.0.48") as (
            ctl, _):
        cli = Cli(ctl.rpc_address, tmp_path)
        job = tmp_path / "crasher.yaml"
        job.write_text(DOCKER_CRASHER.format(image=test_image))
        await cli("job", "run", str(job), "--detach")
        await wait_until(lambda: any(a.client_status == 2 for a in
                                     ctl.cluster.state.allocs_of_job(("default", "crasher"))),
                         within=60)
        alloc = ctl.cluster.state.allocs_of_job(("default", "crasher"))[0]
        proc = await orchctl(ctl.rpc_address, "alloc", "logs", alloc.id, "-f")
        runs = await lines_until(proc, lambda got: len({g for g in got if g.startswith("run ")})
                                 >= 3, within=30)
        starts = [line for line in runs if line.startswith("run ")]
        assert len(set(starts)) >= 3, runs  # one follower, three runs of the same container
        assert len(starts) == len(set(starts)), runs  # nothing said twice


async def test_events_follow_prints_what_happens_as_it_happens(tmp_path: Path) -> None:
    async with live_cluster(tmp_path, agents=1, net="127.0.49") as (ctl, _):
        cli = Cli(ctl.rpc_address, tmp_path)
        proc = await orchctl(ctl.rpc_address, "events", "-f", "--topic", "job",
                             "--topic", "allocation")
        await asyncio.sleep(1.0)  # the watch is open before anything happens
        job = tmp_path / "sleeper.yaml"
        job.write_text(SLEEPER)
        await cli("job", "run", str(job), "--detach")

        def seen(got: list[str]) -> bool:
            text = "\n".join(got)
            return "JobRegistered" in text and text.count("AllocationRunning") >= 2
        got = await lines_until(proc, seen, within=30)
        text = "\n".join(got)
        assert "JobRegistered" in text, text
        assert text.count("AllocationPlaced") == 2, text
        assert text.count("AllocationRunning") >= 2, text
        assert "NodeRegistered" not in text  # only the topics asked for
