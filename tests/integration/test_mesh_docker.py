"""The routing mesh with the Docker driver: three agents on 127.0.7.2-4 running busybox httpd
containers (the locally built test image), reached through every agent's published port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.lb.config import LbConfig
from agent.server import Agent
from controller.server import Controller
from orch.jobspec import parse_job
from tests.docker_engine import remove_node_containers
from tests.integration.live import live_cluster
from tests.integration.mesh_util import (
    Arrivals,
    Load,
    Tables,
    agent_hosts,
    converged,
    free_port,
    get,
    job_yaml,
    running,
)
from tests.integration.synthetic import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.timeout(60)]

NET = "127.0.7"
HOSTS = agent_hosts(3, NET)


@asynccontextmanager
async def docker_cluster(tmp: Path, **kw: Any) -> AsyncIterator[tuple[Controller, list[Agent]]]:
    """live_cluster on the Docker driver; every container of its agents removed afterwards."""
    nodes: list[str] = []
    try:
        async with live_cluster(tmp, agents=3, net=NET, drivers=("docker",), **kw) as (ctl, agents):
            nodes.extend(a.node_id for a in agents)
            yield ctl, agents
    finally:
        for node in nodes:
            remove_node_containers(node)


async def test_any_agents_port_reaches_containers_here_and_elsewhere(
        tmp_path: Path, test_image: str) -> None:
    port = free_port(HOSTS)
    async with docker_cluster(tmp_path) as (ctl, agents):
        await ctl.jobs.register(parse_job(job_yaml(tmp_path, port=port, count=2,
                                                   image=test_image), "mesh.yaml"))
        await wait_until(lambda: converged(ctl, agents, "mesh", "echo", 2), within=30)
        placed = running(ctl, "mesh")
        assert len(set(placed.values())) == 2
        for agent, host in zip(agents, HOSTS, strict=True):
            served = {(await get(host, port)).split()[0] for _ in range(8)}
            local = {a for a, node in placed.items() if node == agent.cfg.name}
            if local:  # prefer_local: this node's own container takes its traffic
                assert served == local, (agent.cfg.name, served, placed)
            else:  # none here: both containers, each on another agent
                assert served == set(placed), (agent.cfg.name, served, placed)


async def test_no_request_fails_while_containers_are_replaced(
        tmp_path: Path, test_image: str) -> None:
    """A rolling update, then a scale-in, under load; with shutdown_delay nothing fails
    (Docker's port proxy accepts connections for a container that is stopping, so the
    load balancer cannot retry them: only the delay saves those requests)."""
    port = free_port(HOSTS)
    async with docker_cluster(tmp_path, lb=LbConfig(prefer_local=False)) as (ctl, agents):
        def job(version: int) -> str:
            return job_yaml(tmp_path, port=port, count=3, image=test_image, version=version,
                            shutdown_delay="2s")

        await ctl.jobs.register(parse_job(job(1), "mesh.yaml"))
        await wait_until(lambda: converged(ctl, agents, "mesh", "echo", 3), within=20)
        old = set(running(ctl, "mesh"))
        tables = Tables(agents, "echo")
        arrivals = Arrivals(agents, "echo", "/index.html")
        load = Load([(h, port) for h in HOSTS]).start()
        load.t0 = tables.t0
        try:
            await ctl.jobs.register(parse_job(job(2), "mesh.yaml"))
            await wait_until(lambda: converged(ctl, agents, "mesh", "echo", 3)
                             and not old & set(running(ctl, "mesh")), within=25)
            await ctl.jobs.scale(("default", "mesh"), "web", 1)
            await wait_until(lambda: converged(ctl, agents, "mesh", "echo", 1), within=10)
        finally:
            await load.stop()
        assert load.failed == 0, f"{load.summary()}\n{tables}\n{tables.events(ctl)}"
        load.check()
        assert {b.split()[1] for b in load.bodies()} == {"1", "2"}
        assert not arrivals.early, arrivals.early
        print("rolling update of 3, scale in to 1:", load.summary())
