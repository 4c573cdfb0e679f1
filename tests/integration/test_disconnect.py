"""The disconnect block with real agents in this process: an agent that hears no controller
for stop_after stops those tasks itself (and reports them lost when it hears one again), and
a node that comes back beside its replacements keeps one copy of each by the stated rule,
with events that say which and why. (A real network partition: tests/e2e/test_partition.py.)"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from agent.server import Agent
from controller.server import Controller
from orch.jobspec import parse_job
from tests.integration.live import live_cluster
from tests.integration.synthetic import wait_until

pytestmark = pytest.mark.timeout(120)

JOB = """
name: {name}
groups:
  - name: app
    count: {count}
{disconnect}
    tasks:
      - name: main
        driver: process
        command: /bin/sleep
        args: ["600"]
        resources: {{cpu_millicores: 50, memory_mb: 16}}
"""


def job(name: str, disconnect: str = "", count: int = 1) -> object:
    return parse_job(JOB.format(name=name, count=count, disconnect=disconnect))


def where(ctl: Controller, name: str) -> dict[str, str]:
    """alloc id -> node id of the job's allocations that are to run."""
    return {a.id: a.node_id for a in ctl.cluster.state.allocs_of_job(("default", name))
            if a.desired_status == 1}


def running_on(agent: Agent) -> set[str]:
    return {s.alloc_id for s in agent.runtime.statuses() if s.client_status == "running"}


async def test_an_agent_cut_off_stops_its_tasks_after_stop_after(tmp_path: Path) -> None:
    async with live_cluster(tmp_path, agents=1, net="127.0.51") as (ctl, agents):
        agent = agents[0]
        await ctl.jobs.register(job("careful", "    disconnect: {stop_after: 2s}"))  # type: ignore[arg-type]
        await ctl.jobs.register(job("plain"))  # type: ignore[arg-type]
        await wait_until(lambda: len(running_on(agent)) == 2, within=30)
        careful = next(iter(where(ctl, "careful")))
        plain = next(iter(where(ctl, "plain")))
        await agent.link.stop()  # no controller is heard from now on
        cut = time.monotonic()
        await wait_until(lambda: careful not in running_on(agent), within=10)
        stopped_after = time.monotonic() - cut
        assert 1.5 <= stopped_after <= 3.5, stopped_after
        assert plain in running_on(agent)  # no disconnect block: it runs on
        st = agent.runtime.status(careful)
        assert st.client_status == "lost"
        assert "disconnect.stop_after 2s" in st.description
        # the controllers are heard again: the stopped allocation is reported lost and replaced
        agent.link.start()
        await wait_until(lambda: any(a.id == careful and a.client_status == 5
                                     for a in ctl.cluster.state.allocs.values()), within=20)
        await wait_until(lambda: len(where(ctl, "careful")) == 1
                         and careful not in where(ctl, "careful")
                         and set(where(ctl, "careful")) <= running_on(agent), within=30)


@pytest.mark.parametrize(("rule", "kept"), [("keep_original", "original"),
                                            ("keep_replacement", "replacement")])
async def test_a_node_back_beside_its_replacement_keeps_one_copy_by_the_rule(
        tmp_path: Path, rule: str, kept: str) -> None:
    async with live_cluster(tmp_path, agents=2, net="127.0.52") as (ctl, agents):
        spec = f"    disconnect: {{lost_after: 1m, replace: true, reconcile: {rule}}}"
        await ctl.jobs.register(job("web", spec))  # type: ignore[arg-type]
        await wait_until(lambda: any(running_on(a) for a in agents), within=30)
        original, node = next(iter(where(ctl, "web").items()))
        cut = next(a for a in agents if a.node_id == node)
        other = next(a for a in agents if a is not cut)
        await cut.link.stop()  # a partition, as the controller sees it: the stream is gone
        await wait_until(lambda: ctl.cluster.state.nodes[node].status == 3, within=20)
        await wait_until(lambda: bool(running_on(other)), within=60)
        replacement = next(iter(running_on(other)))
        assert original in running_on(cut)  # unknown, not stopped: it may come back
        assert where(ctl, "web") == {original: node, replacement: other.node_id}
        cut.link.start()  # the partition heals
        survivor = original if kept == "original" else replacement
        loser = replacement if kept == "original" else original
        await wait_until(lambda: set(where(ctl, "web")) == {survivor}, within=30)
        await wait_until(lambda: loser not in running_on(cut) | running_on(other), within=30)
        assert survivor in running_on(cut) | running_on(other)
        said = [e.message for e in ctl.cluster.events.recent
                if e.type == "AllocationStopped" and e.key == loser]
        assert any(f"kept the {kept}" in m and rule in m for m in said), said


async def test_heartbeats_spaced_for_a_large_fleet_keep_the_stream_and_the_tasks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The leader spaces each stream's heartbeats as more agents stream to it (here as if
    one agent were a fleet: one every 6 s, past the agent's base silence of 5 s). The agent
    takes the interval it is given: it keeps its stream, and a task with a short stop_after
    keeps running."""
    from agent import controller_link
    from controller.api import node

    monkeypatch.setattr(node, "MAX_HEARTBEATS_PER_SECOND", 1 / 6)
    async with live_cluster(tmp_path, agents=1, net="127.0.52") as (ctl, agents):
        agent = agents[0]
        await ctl.jobs.register(job("careful", "    disconnect: {stop_after: 2s}"))  # type: ignore[arg-type]
        await wait_until(lambda: len(running_on(agent)) == 1, within=30)
        await wait_until(lambda: agent.link._beat == 6.0, within=15)
        assert agent.link._silence == 3 * 6.0 > controller_link.SILENCE
        before = agent.link.controller
        stream = ctl.cluster._feeds[agent.node_id]
        for _ in range(16):  # 8 s: past the base silence, across a heartbeat
            await asyncio.sleep(0.5)
            assert agent.link.offline_for() < 1.0  # a heartbeat may come a little late
        assert ctl.cluster._feeds.get(agent.node_id) is stream  # the same stream all along
        assert agent.link.controller == before
        assert len(running_on(agent)) == 1


async def test_heartbeats_spaced_further_as_agents_join_keep_the_stream(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When more agents stream and each stream's heartbeats are spaced further apart, the
    next heartbeat still comes within the interval the last one named (and names the
    longer one): an agent that joined a small fleet keeps its stream as the fleet grows."""
    from controller.api import node

    async with live_cluster(tmp_path, agents=1, net="127.0.57") as (ctl, agents):
        agent = agents[0]
        await wait_until(lambda: agent.link._heartbeats and agent.link._beat == 1.0, within=15)
        stream = ctl.cluster._feeds[agent.node_id]
        monkeypatch.setattr(node, "MAX_HEARTBEATS_PER_SECOND", 1 / 8)  # the fleet grew
        for _ in range(16):  # 8 s: past the silence the agent was told (5 s)
            await asyncio.sleep(0.5)
            assert agent.link.offline_for() < 1.5
        assert agent.link._beat == 8.0
        assert ctl.cluster._feeds.get(agent.node_id) is stream  # the same stream all along
