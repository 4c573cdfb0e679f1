"""A controller and real agents (process driver) in this process, on 127.0.0.x."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.gossip.config import GossipConfig
from agent.server import Agent
from controller.server import Controller
from tests.integration.synthetic import controller_config, wait_until


@asynccontextmanager
async def live_cluster(tmp: Path, agents: int = 1, *, usage_interval: float = 10.0,
                       **ctl_kw: Any) -> AsyncIterator[tuple[Controller, list[Agent]]]:
    ctl = Controller(controller_config(tmp / "ctl", bind="127.0.0.1:0", **ctl_kw))
    await ctl.start()
    assert ctl.gossip is not None
    seed = f"{ctl.gossip.addr[0]}:{ctl.gossip.addr[1]}"
    started: list[Agent] = []
    try:
        for i in range(1, agents + 1):
            a = Agent(AgentConfig(name=f"agent-{i}", bind=f"127.0.0.{i + 1}:0", join=[seed],
                                  rpc_addr=f"127.0.0.{i + 1}:0", data_dir=str(tmp / f"agent-{i}"),
                                  metrics_addr=f"127.0.0.{i + 1}:0",
                                  usage_interval=usage_interval,
                                  drivers=["process"], gossip=GossipConfig.fast()))
            await a.start()
            started.append(a)
        ids = [a.node_id for a in started]
        await wait_until(lambda: all(ctl.cluster.connected(i) for i in ids), within=15)
        yield ctl, started
    finally:
        for a in started:
            await a.stop(stop_tasks=True)
        await ctl.stop(grace=0.5)
