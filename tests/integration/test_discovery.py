"""Endpoints travel through gossip: every agent sees every healthy endpoint of the cluster."""

from __future__ import annotations

from pathlib import Path

from agent.lb.discovery import endpoint_table
from agent.server import Agent
from orch.jobspec import load_job_file
from tests.integration.live import live_cluster
from tests.integration.synthetic import wait_until

EXAMPLE = Path(__file__).parents[2] / "deploy" / "examples" / "hello.yaml"


HELLO = "default/hello/web/hello"


def table_of(agent: Agent) -> dict[str, int]:
    assert agent.gossip is not None
    built = endpoint_table(agent.gossip.members(), agent.cfg.name, agent.endpoints.expected)
    return {spec.name: len(spec.endpoints) for spec in built.services.values()}


async def test_every_agent_sees_every_healthy_endpoint(tmp_path: Path) -> None:
    async with live_cluster(tmp_path, agents=2) as (ctl, agents):
        job = load_job_file(str(EXAMPLE))
        await ctl.jobs.register(job)
        await wait_until(lambda: all(table_of(a) == {"hello": 3} for a in agents), within=30)
        assert agents[0].gossip is not None
        spec = endpoint_table(agents[0].gossip.members(), "agent-1",
                              agents[0].endpoints.expected).services[HELLO]
        assert spec.published_port == 8080
        assert {e.node for e in spec.endpoints} == {"agent-1", "agent-2"}
        assert any(e.local for e in spec.endpoints)
        mine = sum(e.node == "agent-1" for e in spec.endpoints)
        # agent-2 falls silent (its gossip stops, no goodbye): once it is suspected, its
        # endpoints leave agent-1's table
        assert agents[1].gossip is not None
        await agents[1].gossip.stop()
        await wait_until(lambda: table_of(agents[0]) == {"hello": mine}, within=30)
        # the job stops: agent-1 withdraws its own endpoints
        await ctl.jobs.stop(("default", "hello"), purge=False)
        await wait_until(lambda: table_of(agents[0]) == {}, within=30)
