"""Every orchctl command against a live cluster: a controller and a real agent (process
driver) in this process, orchctl as a real subprocess; tables, JSON and exit codes."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.server import Agent
from controller.server import Controller
from tests.integration.live import Cli, live_cluster
from tests.integration.synthetic import wait_until


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[tuple[Controller, Agent, Cli]]:
    async with live_cluster(tmp_path, agents=1) as (ctl, agents):
        yield ctl, agents[0], Cli(ctl.rpc_address, tmp_path)


async def test_job_commands(live: tuple[Controller, Agent, Cli]) -> None:
    ctl, _, cli = live
    # plan of a new job: changes would be made (4)
    text = await cli("job", "plan", cli.job_file(count=2), code=4)
    assert "create" in text
    assert "new job" in text
    # run follows the deployment to success (0)
    text = await cli("job", "run", cli.job_file(count=2))
    assert "registered: version 1" in text
    assert "successful" in text
    # the same plan now changes nothing (0); a bigger count would (4)
    await cli("job", "plan", cli.job_file(count=2), code=0)
    text = await cli("job", "plan", cli.job_file(count=3), code=4)
    assert "groups[app].count: 2 => 3" in text
    # more memory than the node has: not placeable (3), for plan and for run
    text = await cli("job", "plan", cli.job_file(count=2, memory=10_000_000), code=3)
    assert "exhausted memory" in text
    st = await cli.json("job", "status", "web")
    assert st["job"]["version"] == "1"  # 64-bit integers are strings in protobuf's JSON
    assert st["groups"][0]["running"] == 2
    listed = await cli.json("job", "status")
    assert [j["name"] for j in listed] == ["web"]
    table = await cli("job", "status")
    assert "web" in table
    assert "2/2" in table
    # a new version, its history, a revert
    await cli("job", "run", cli.job_file(count=3))
    history = await cli.json("job", "history", "web")
    assert [v["version"] for v in history] == ["2", "1"]
    assert "Version 2" in await cli("job", "history", "web")
    reverted = await cli.json("job", "revert", "web", "1")
    assert reverted["version"] == "3"
    await wait_until(lambda: _running(ctl, "web") == 2, within=20)
    # stop, then purge
    await cli("job", "stop", "web")
    await wait_until(lambda: _running(ctl, "web") == 0, within=20)
    await cli("job", "stop", "web", "--purge")
    await cli("job", "status", "web", code=1)
    # a bad job file: every problem, exit 1; a missing file; usage errors: 2
    bad = cli.tmp / "bad.yaml"
    bad.write_text("name: bad\ngroups:\n  - name: g\n    count: -1\n    tasks: []\n")
    text = await cli("job", "run", str(bad), code=1)
    assert "groups[0].count" in text
    assert "tasks" in text
    await cli("job", "run", str(cli.tmp / "nope.yaml"), code=1)
    await cli("job", "frobnicate", code=2)


def _running(ctl: Controller, job: str) -> int:
    return sum(1 for a in ctl.cluster.state.allocs_of_job(("default", job))
               if a.desired_status == 1 and a.client_status == 2)


async def test_alloc_node_and_cluster_commands(live: tuple[Controller, Agent, Cli]) -> None:
    ctl, agent, cli = live
    await cli("job", "run", cli.job_file(count=1))
    st = await cli.json("job", "status", "web")
    alloc_id = st["allocations"][0]["id"]
    shown = await cli.json("alloc", "status", alloc_id[:6])  # a unique prefix is enough
    assert shown["id"] == alloc_id
    assert "Task 'server': running" in await cli("alloc", "status", alloc_id[:6])
    await cli("alloc", "status", "zzzz", code=1)
    # logs come from the agent, through the controller
    await wait_until(lambda: _has_output(agent, alloc_id), within=10)
    assert "hello from 0" in await cli("alloc", "logs", alloc_id[:8])
    assert "oops" in await cli("alloc", "logs", alloc_id[:8], "--stderr")
    assert "hello from 0" in await cli("alloc", "logs", alloc_id[:8], "--tail", "1")
    restarted = await cli.json("alloc", "restart", alloc_id[:8])
    assert restarted["id"] == alloc_id
    stopped = await cli.json("alloc", "stop", alloc_id[:8])
    assert stopped["desired_status"] == "DESIRED_STATUS_STOP"
    await wait_until(lambda: _running(ctl, "web") == 1, within=20)  # replaced
    # nodes
    nodes = await cli.json("node", "list")
    assert [n["name"] for n in nodes] == ["agent-1"]
    node = await cli.json("node", "status", "agent-1")
    assert node["member_status"] == "alive"
    assert "agent-1" in await cli("node", "list")
    await cli.json("node", "eligibility", "agent-1", "--disable")
    assert not ctl.cluster.state.nodes[agent.node_id].eligible
    await cli.json("node", "eligibility", "agent-1", "--enable")
    await cli("node", "drain", "agent-1", "--deadline", "5")
    await wait_until(lambda: _running(ctl, "web") == 0, within=20)
    await cli("node", "drain", "agent-1", "--disable")
    await cli("node", "status", "no-such-node", code=1)
    # the cluster
    members = await cli.json("members")
    assert {m["name"] for m in members} == {"ctl", "agent-1"}
    assert "controller" in await cli("members")
    assert ctl.gossip is not None
    await wait_until(lambda: ctl.gossip is not None and ctl.gossip.core is not None
                     and ctl.gossip.core.coordinate("agent-1") is not None, within=10)
    est = await cli.json("rtt", "ctl", "agent-1")
    assert 0 < est["rtt_seconds"] < 0.5
    assert "ms" in await cli("members", "--rtt")
    await cli("rtt", "ctl", "nobody", code=1)
    leader = await cli.json("leader")
    assert leader["is_self"]
    services = await cli.json("service", "list")
    assert services == []
    events = await cli("events")
    assert "JobRegistered" in events
    assert "NodeDrain" in events
    lines = (await cli("-o", "json", "events", "--topic", "job")).splitlines()
    assert all(json.loads(line)["topic"] == "job" for line in lines)


def _has_output(agent: Agent, alloc_id: str) -> bool:
    return any((agent.data_dir / "alloc" / alloc_id).rglob("*stdout*"))


async def test_an_unreachable_controller_is_a_clear_error(tmp_path: Path) -> None:
    text = await Cli("127.0.0.1:1", tmp_path)("job", "status", code=1)
    assert "cannot reach the controller at 127.0.0.1:1" in text


CRASHER = """
name: crasher
groups:
  - name: app
    restart: {attempts: 10, interval: 5m, delay: 1s, mode: delay}
    tasks:
      - name: server
        driver: process
        command: /bin/sh
        args: ["-c", "echo run $$; echo err $$ >&2; sleep 0.5; exit 1"]
        resources: {cpu_millicores: 50, memory_mb: 16}
"""


async def test_logs_follow_a_task_across_its_restarts(live: tuple[Controller, Agent, Cli]) -> None:
    ctl, _, cli = live
    path = cli.tmp / "crasher.yaml"
    path.write_text(CRASHER)
    await cli("job", "run", str(path), "--detach")
    await wait_until(lambda: bool(ctl.cluster.state.allocs_of_job(("default", "crasher"))))
    alloc = ctl.cluster.state.allocs_of_job(("default", "crasher"))[0]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchctl.main", "--address", cli.addr, "alloc", "logs", alloc.id,
        "-f", "--all", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    await asyncio.sleep(4.5)  # at least three runs: 0.5 s each, 1 s apart
    proc.terminate()
    out, err = await proc.communicate()
    runs = [line for line in out.decode().splitlines() if line.startswith("run ")]
    assert len(set(runs)) >= 2, out.decode()  # one follower saw several runs (pids differ)
    assert "err " in err.decode()  # --all: standard error on its own stream
