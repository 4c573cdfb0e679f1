"""The routing mesh on a live cluster: a controller on 127.0.6.1 and three agents (process
driver) on 127.0.6.2-4, each hosting the load balancer on the job's published port."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest

from agent.lb.config import LbConfig
from agent.lb.model import ServiceSpec
from agent.server import Agent
from orch.jobspec import parse_job
from tests.integration.live import Cli, live_cluster
from tests.integration.mesh_util import (
    Arrivals,
    Load,
    agent_hosts,
    converged,
    free_port,
    get,
    hold,
    job_yaml,
    refused,
    release,
    running,
    service,
    table,
)
from tests.integration.synthetic import wait_until

pytestmark = pytest.mark.timeout(60)

NET = "127.0.6"
HOSTS = agent_hosts(3, NET)


async def test_any_agents_port_reaches_the_service_here_and_elsewhere(tmp_path: Path) -> None:
    port = free_port(HOSTS)
    async with live_cluster(tmp_path, agents=3, net=NET) as (ctl, agents):
        await ctl.jobs.register(parse_job(job_yaml(tmp_path, port=port, count=2), "mesh.yaml"))
        await wait_until(lambda: converged(ctl, agents, "mesh", "echo", 2), within=30)
        placed = running(ctl, "mesh")  # alloc -> node: two distinct agents (anti-affinity)
        assert len(set(placed.values())) == 2
        for agent, host in zip(agents, HOSTS, strict=True):
            served = {(await get(host, port)).split()[0] for _ in range(8)}
            local = {a for a, node in placed.items() if node == agent.cfg.name}
            if local:  # prefer_local: this node's own allocation takes its traffic
                assert served == local, (agent.cfg.name, served, placed)
            else:  # none here: both allocations, each on another agent
                assert served == set(placed), (agent.cfg.name, served, placed)


async def test_an_endpoint_leaves_every_table_when_it_stops_fails_or_its_node_dies(
        tmp_path: Path) -> None:
    port = free_port(HOSTS)
    cli = Cli("", tmp_path)
    # prefer_local off: every agent sends to every endpoint, so each removal matters everywhere
    async with live_cluster(tmp_path, agents=3, net=NET,
                            lb=LbConfig(prefer_local=False)) as (ctl, agents):
        cli.addr = ctl.rpc_address
        await ctl.jobs.register(parse_job(job_yaml(tmp_path, port=port, count=3,
                                                   shutdown_delay="1s"), "mesh.yaml"))
        await wait_until(lambda: converged(ctl, agents, "mesh", "echo", 3), within=30)
        by_node = {node: a for a, node in running(ctl, "mesh").items()}
        assert set(by_node) == {"agent-1", "agent-2", "agent-3"}
        load = Load([(h, port) for h in HOSTS]).start()
        try:
            # agent-1's allocation fails its check: it leaves every table, and comes back
            sick = tmp_path / "sick" / by_node["agent-1"]
            sick.touch()
            await wait_until(lambda: all(by_node["agent-1"] not in table(a, "echo")
                                         for a in agents), within=10)
            sick.unlink()
            await wait_until(lambda: converged(ctl, agents, "mesh", "echo", 3), within=10)
            # agent-2's allocation is stopped (and replaced): it leaves every table
            await cli("alloc", "stop", by_node["agent-2"])
            await wait_until(lambda: all(by_node["agent-2"] not in table(a, "echo")
                                         for a in agents), within=10)
            await wait_until(lambda: converged(ctl, agents, "mesh", "echo", 3), within=20)
        finally:
            await load.stop()
        load.check()
        assert load.bodies() >= {f"{a} 1" for a in by_node.values()}
        print("check fails, alloc stop:", load.summary())

        # agent-3 stops talking without leaving (as a killed agent would: no goodbye; its
        # tasks live on). Its endpoints leave the survivors' tables once it is suspected,
        # traffic through the survivors' published ports goes on, and its allocation is
        # placed again elsewhere.
        dead, survivors = agents[2], agents[:2]
        assert dead.gossip is not None
        assert dead.mesh is not None
        gossip_addr = dead.gossip.addr
        echo = service(dead, "echo")
        assert echo is not None
        (orphan,) = [e for e in echo.endpoints if e.node == "agent-3"]
        load = Load([(h, port) for h in HOSTS[:2]]).start()
        try:
            agents.remove(dead)  # stopped here, not again by live_cluster
            await dead.stop(leave=False)
            await wait_until(lambda: all(all(
                e.node != "agent-3" for e in (service(a, "echo") or ServiceSpec(
                    name="echo", published_port=0)).endpoints)
                for a in survivors), within=10)
            await wait_until(lambda: converged(ctl, survivors, "mesh", "echo", 3), within=20)
            assert "agent-3" not in running(ctl, "mesh").values()
            # it comes back: it stops what runs elsewhere now, and publishes nothing of it
            back = Agent(replace(dead.cfg, bind=f"{gossip_addr[0]}:{gossip_addr[1]}"))
            agents.append(back)  # live_cluster stops it
            await back.start()
            await wait_until(lambda: ctl.cluster.connected(back.node_id), within=15)
            await wait_until(lambda: converged(ctl, [*survivors, back], "mesh", "echo", 3),
                             within=15)
            await wait_until(lambda: refused(orphan.host, orphan.port), within=15)
            assert running(ctl, "mesh").keys() == table(back, "echo")
        finally:
            await load.stop()
        load.check()
        print("node dies and returns:", load.summary())


async def test_no_request_fails_while_the_job_scales_out_and_in(tmp_path: Path) -> None:
    """orchctl job scale under load: new replicas take traffic only once healthy, removed
    ones leave every table and drain (shutdown_delay) before they are stopped."""
    port = free_port(HOSTS)
    async with live_cluster(tmp_path, agents=3, net=NET,
                            lb=LbConfig(prefer_local=False)) as (ctl, agents):
        cli = Cli(ctl.rpc_address, tmp_path)
        await ctl.jobs.register(parse_job(job_yaml(tmp_path, port=port, count=2,
                                                   shutdown_delay="2s", delay=0.05), "mesh.yaml"))
        await wait_until(lambda: converged(ctl, agents, "mesh", "echo", 2), within=30)
        arrivals = Arrivals(agents, "echo")
        load = Load([(h, port) for h in HOSTS]).start()
        seen: set[str] = set()
        try:
            for count in (5, 1, 3):
                await cli("job", "scale", "mesh", "web", str(count))
                await wait_until(partial(converged, ctl, agents, "mesh", "echo", count),
                                 within=10)
                now = set(running(ctl, "mesh"))
                seen |= now
                # every allocation takes traffic
                await wait_until(partial(load.answered_by, now), within=5)
        finally:
            await load.stop()
        load.check()
        assert load.allocs() == seen
        assert not arrivals.early, arrivals.early
        assert len(arrivals.seen) >= 3 * 4  # the 3 + 1 new replicas joined every table
        job = ctl.jobs.history(("default", "mesh"))
        assert [v.job.groups[0].count for v in reversed(job.versions)] == [2, 5, 1, 3]
        print("scale 2 -> 5 -> 1 -> 3:", load.summary())


async def test_no_request_fails_during_a_rolling_update(tmp_path: Path) -> None:
    port = free_port(HOSTS)
    async with live_cluster(tmp_path, agents=3, net=NET,
                            lb=LbConfig(prefer_local=False)) as (ctl, agents):
        def job(version: int) -> str:
            return job_yaml(tmp_path, port=port, count=3, version=version, shutdown_delay="2s",
                            delay=0.05)

        await ctl.jobs.register(parse_job(job(1), "mesh.yaml"))
        await wait_until(lambda: converged(ctl, agents, "mesh", "echo", 3), within=30)
        old = set(running(ctl, "mesh"))
        arrivals = Arrivals(agents, "echo")
        load = Load([(h, port) for h in HOSTS]).start()
        try:
            await ctl.jobs.register(parse_job(job(2), "mesh.yaml"))
            await wait_until(lambda: converged(ctl, agents, "mesh", "echo", 3)
                             and not old & set(running(ctl, "mesh")), within=40)
        finally:
            await load.stop()
        load.check()
        assert {b.split()[1] for b in load.bodies()} == {"1", "2"}
        assert not arrivals.early, arrivals.early
        assert len(arrivals.seen) >= 3 * 3
        print("rolling update of 3:", load.summary())


async def test_active_connections_scale_the_group_out_and_quiet_scales_it_back_in(
        tmp_path: Path) -> None:
    """A scaling block on the load balancer's active connections per allocation: 12 held
    connections against a target of 4 scale 1 -> 2 -> 3 (at most doubling per step, no
    further than max); once they close the group goes back to min after the cooldown and
    the stabilization window. A light load runs throughout and nothing fails."""
    port = free_port(HOSTS)
    scaling = "{enabled: true, metric: connections, target: 4, min: 1, max: 3, cooldown: 2s}"
    async with live_cluster(tmp_path, agents=3, net=NET, usage_interval=1.0,
                            autoscale_interval=1.0, autoscale_stabilization=3.0) as (
            ctl, agents):
        key = ("default", "mesh")
        await ctl.jobs.register(parse_job(job_yaml(tmp_path, port=port, count=1, scaling=scaling,
                                                   shutdown_delay="1s"), "mesh.yaml"))
        await wait_until(lambda: converged(ctl, agents, "mesh", "echo", 1), within=30)

        def count() -> int:
            job = ctl.cluster.state.job(key)
            return job.groups[0].count if job is not None else -1

        load = Load([(h, port) for h in HOSTS], clients=2, pause=0.1).start()
        held = await hold(HOSTS[0], port, 12)
        try:
            await wait_until(lambda: count() == 3, within=20)
            assert "connections" in ctl.autoscaler.verdict(key, "web")
            await wait_until(lambda: converged(ctl, agents, "mesh", "echo", 3), within=10)
        finally:
            await release(held)
        try:
            await wait_until(lambda: count() == 1, within=20)
            await wait_until(lambda: converged(ctl, agents, "mesh", "echo", 1), within=10)
        finally:
            await load.stop()
        load.check()
        counts = [v.job.groups[0].count for v in reversed(ctl.jobs.history(key).versions)]
        assert counts == [1, 2, 3, 1]
        scaled = [e.message for e in ctl.cluster.events.recent if e.type == "JobScaled"]
        assert len(scaled) == 3, scaled
        assert all("autoscaler: connections" in m for m in scaled), scaled
        print("autoscaler:", scaled, load.summary())
