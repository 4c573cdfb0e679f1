"""An agent obeys its own cluster only: a controller of another cluster (here: one started on
another store at the same address, in plain text on loopback) neither starts nor stops
anything on it; the agent says so in its log and metrics, and its tasks keep running."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.server import Agent
from controller.server import Controller
from orch.gossip.config import GossipConfig
from tests.integration.synthetic import controller_config, service_job, wait_until

NET = "127.0.47"


def agent_cfg(tmp: Path, ctl: Controller) -> AgentConfig:
    return AgentConfig(name="agent-1", bind=f"{NET}.2:0", rpc_addr=f"{NET}.2:0",
                       data_dir=str(tmp / "agent"), metrics_addr="", lb_bind=f"{NET}.2",
                       controllers=[ctl.rpc_address], drivers=["process"],
                       gossip=GossipConfig.fast(), task_user="root", allow_root_tasks=True)


async def test_a_controller_of_another_cluster_removes_no_task(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = Controller(controller_config(tmp_path / "ctl-a", bind=f"{NET}.1:0",
                                         rpc_addr=f"{NET}.1:0", metrics_addr=""))
    await first.start()
    port = first.rpc_address.rsplit(":", 1)[1]
    agent = Agent(agent_cfg(tmp_path, first))
    await agent.start()
    try:
        await wait_until(lambda: first.cluster.connected(agent.node_id), within=15)
        await first.jobs.register(service_job("web", count=2, args=("600",)))
        await wait_until(lambda: sum(s.client_status == "running"
                                     for s in agent.runtime.statuses()) == 2, within=30)
        ours = {s.alloc_id for s in agent.runtime.statuses()}
        pinned = first.cluster.state.meta["cluster_id"]
        assert agent.pins is not None
        assert agent.pins.pin.cluster_id == pinned
    finally:
        await agent.stop()  # the tasks keep running
        await first.stop(grace=0.5)

    # another cluster's controller at the same address (another store: another cluster id)
    other = Controller(controller_config(tmp_path / "ctl-b", bind=f"{NET}.1:0",
                                         rpc_addr=f"{NET}.1:{port}", metrics_addr=""))
    await other.start()
    agent = Agent(agent_cfg(tmp_path, other))
    caplog.set_level(logging.ERROR, logger="agent")
    await agent.start()
    try:
        assert agent.pins is not None
        await wait_until(lambda: agent.pins is not None and agent.pins.refused["cluster"] >= 1,
                         within=20)
        assert any("refused a desired set" in r.getMessage() and pinned in r.getMessage()
                   for r in caplog.records)
        await agent.runtime.collect_garbage()  # the periodic sweep removes nothing either
        found = {r.identity.alloc_id for d in agent.runtime.drivers.values()
                 for r in await d.recover() if r.running}
        assert found == ours  # every task of its cluster still runs
        assert not other.cluster.connected(agent.node_id) or agent.runtime.version < 0
    finally:
        await agent.stop(stop_tasks=True)
        await other.stop(grace=0.5)
        # the first cluster's tasks: left by the agent (it never applied a set to adopt them)
        for d in agent.runtime.drivers.values():
            await d.open()
            for r in await d.recover():
                if r.running:
                    await d.stop(r.handle, "SIGKILL", 1.0)
                await d.destroy(r.handle)
            await d.close()
