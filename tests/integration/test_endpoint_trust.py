"""Endpoints in gossip are taken only as the controller placed them, on a live cluster (a
controller and two agents on 127.0.91.x) with a hostile gossip member: what it publishes
of its own, and what it forges in an agent's name, reaches no load balancer. Two jobs
cannot claim one published port, and nodes report the ports nothing may be placed on."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from agent.server import Agent
from orch.errors import RequestError
from orch.gossip import codec
from orch.gossip.config import GossipConfig
from orch.gossip.messages import StateDelta
from orch.gossip.transport import GossipNode
from orch.jobspec import parse_job
from tests.integration.live import live_cluster
from tests.integration.mesh_util import free_port
from tests.integration.synthetic import wait_until

EXAMPLE = Path(__file__).parents[2] / "deploy" / "examples" / "hello.yaml"
NET = "127.0.91"
HELLO = "default/hello/web/hello"

pytestmark = pytest.mark.timeout(120, method="thread")


def endpoints(agent: Agent) -> dict[str, set[tuple[str, str, int]]]:
    """Every service in the agent's load balancer: (allocation, node, host:port)."""
    assert agent.mesh is not None
    return {key: {(e.alloc_id, e.node, e.port) for e in s.endpoints}
            for key, s in agent.mesh.table.items()}


async def test_only_what_the_controller_placed_reaches_the_load_balancers(
        tmp_path: Path) -> None:
    async with live_cluster(tmp_path, agents=2, net=NET) as (ctl, agents):
        hosts = [a.cfg.lb_bind for a in agents]
        port = free_port(hosts)
        text = EXAMPLE.read_text().replace("published_port: 8080", f"published_port: {port}")
        await ctl.jobs.register(parse_job(text, str(EXAMPLE)))
        await wait_until(lambda: all(len(endpoints(a).get(HELLO, ())) == 3 for a in agents),
                         within=30)
        honest = endpoints(agents[0])
        assert honest == endpoints(agents[1])
        real = {a.id: a for a in ctl.cluster.state.allocs.values()}
        on_2 = next(a for a in real.values()
                    if ctl.cluster.state.nodes[a.node_id].name == "agent-2")

        # a member holding the cluster's (absent) key joins and publishes endpoints of its own
        rogue = GossipNode(GossipConfig.fast(), name="rogue", bind=(f"{NET}.50", 0), state={
            "ep:hello:fake-alloc": [f"{NET}.50", 9, port, "tcp", "round_robin", 1, False],
            f"ep:hello:{on_2.id}": [f"{NET}.50", 9, port, "tcp", "round_robin", 1, False],
            "ep:evil:zz": [f"{NET}.50", 9, port + 1, "tcp", "round_robin", 1, False]})
        await rogue.start()
        try:
            assert ctl.gossip is not None
            rogue.join([ctl.gossip.addr])
            await wait_until(lambda: all(a.gossip is not None and any(
                m.name == "rogue" for m in a.gossip.alive()) for a in agents), within=20)
            # and forges a delta in agent-2's name: its allocation, at another host
            assert agents[1].gossip is not None
            assert agents[1].gossip.core is not None
            v = agents[1].gossip.core.me.state_version
            forged = StateDelta("agent-2", v, v + 1, {f"ep:hello:{on_2.id}": [
                f"{NET}.50", 9, port, "tcp", "round_robin", 1, False]})
            assert agents[0].gossip is not None
            rogue._sendto(agents[0].gossip.addr, codec.pack([codec.encode(forged)]))
            table = agents[0].endpoints
            await wait_until(lambda: table.table.refused["unexpected"] >= 2
                             and table.table.refused["node"] >= 1, within=20)
            await asyncio.sleep(0.5)  # a few more table builds
            for a in agents:
                assert endpoints(a) == honest
                assert sum(a.endpoints.table.refused.values()) >= 3
                assert a.mesh is not None
                assert not any(s.listening and s.port == port + 1
                               for s in a.mesh.stats().values())
        finally:
            await rogue.stop()


async def test_two_jobs_cannot_claim_one_published_port(tmp_path: Path) -> None:
    async with live_cluster(tmp_path, agents=1, net="127.0.92") as (ctl, agents):
        port = free_port([agents[0].cfg.lb_bind])
        text = EXAMPLE.read_text().replace("published_port: 8080", f"published_port: {port}")
        await ctl.jobs.register(parse_job(text, str(EXAMPLE)))
        other = parse_job(text.replace("name: hello\n", "name: other\n", 1), "other.yaml")
        other.namespace = "team"
        await ctl.cluster.commit(ctl.evaluator.namespaces.apply("team", time.time_ns())[1])
        with pytest.raises(RequestError, match=f"published port {port} is already published "
                                               "by job 'hello' in namespace 'default'"):
            await ctl.jobs.register(other)
        with pytest.raises(RequestError, match="already published"):
            ctl.jobs.plan(other)
        # the job itself may change, and another port is fine
        await ctl.jobs.register(parse_job(text.replace("count: 3", "count: 2"), str(EXAMPLE)))
        free = free_port([agents[0].cfg.lb_bind])
        other2 = parse_job(text.replace("name: hello\n", "name: other\n", 1).replace(
            f"published_port: {port}", f"published_port: {free}"), "other.yaml")
        await ctl.jobs.register(other2)


async def test_nodes_report_the_ports_they_listen_on_and_publish(tmp_path: Path) -> None:
    async with live_cluster(tmp_path, agents=1, net="127.0.93") as (ctl, agents):
        a = agents[0]
        port = free_port([a.cfg.lb_bind])
        text = EXAMPLE.read_text().replace("published_port: 8080", f"published_port: {port}")
        await ctl.jobs.register(parse_job(text, str(EXAMPLE)))
        assert a.gossip is not None
        assert a.metrics is not None
        own = {a.gossip.addr[1], int(a.rpc_address.rsplit(":", 1)[1]), a.metrics.port}
        await wait_until(lambda: own | {port} <= set(
            ctl.cluster.state.nodes[a.node_id].reserved_ports), within=20)
