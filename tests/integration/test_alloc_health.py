"""Deployments on agents' health verdicts: the controller takes an agent's verdict
(``deployment_health``) instead of timing the allocation itself, a real agent judges it
with its tasks' checks and the group's min_healthy_time, and the allocation's start and
health cost the store one write each."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from agent.desired import DesiredSet
from orch.v1 import controller_pb2, controller_pb2_grpc, node_pb2
from tests.integration.live import live_cluster
from tests.integration.synthetic import Harness, SyntheticAgent, cluster, service_job, wait_until

RUNNING = node_pb2.CLIENT_STATUS_RUNNING
H_PENDING, HEALTHY, UNHEALTHY = (node_pb2.ALLOC_HEALTH_PENDING, node_pb2.ALLOC_HEALTH_HEALTHY,
                                 node_pb2.ALLOC_HEALTH_UNHEALTHY)


class JudgingAgent(SyntheticAgent):
    """Reports every allocation running, with the verdict the test gives (pending first)."""

    async def _on_desired(self, d: DesiredSet) -> None:
        for a in d.allocations:
            if a.id not in self.running:
                self.verdict(a.id, H_PENDING)

    def verdict(self, alloc_id: str, health: node_pb2.AllocHealth.ValueType) -> None:
        status = node_pb2.Allocation(id=alloc_id, client_status=RUNNING, checks_healthy=True,
                                     deployment_health=health)
        self.running[alloc_id] = status
        self.link.report([status])


async def judging(c: Harness, name: str) -> JudgingAgent:
    a = JudgingAgent(c.ctl.rpc_address, name)
    c.agents[name] = a
    a.start()
    await wait_until(lambda: c.ctl.cluster.connected(a.node.id))
    return a


async def latest_deployment(c: Harness, name: str) -> controller_pb2.Deployment:
    return (await c.status(name)).latest_deployment


async def test_the_deployment_waits_for_the_agents_verdict_not_the_controllers_clock(
        tmp_path: Path) -> None:
    async with cluster(tmp_path, agents=0) as c:
        agent = await judging(c, "judge")
        # min_healthy_time 0.05 s: a controller timing it would call it healthy at once
        await c.api.RegisterJob(controller_pb2.RegisterJobRequest(
            job=service_job(count=2, min_healthy=0.05)))
        await wait_until(lambda: len(agent.running) == 2)
        await wait_until(lambda: _all(c, lambda a: a.client_status == RUNNING))
        await wait_until(lambda: c.ctl.evaluator.queue_depth == 0)
        first, second = sorted(agent.running)
        assert (await latest_deployment(c, "web")).status == "running"
        assert not any(a.healthy for a in (await c.status("web")).allocations)

        agent.verdict(first, HEALTHY)
        await wait_until(lambda: _healthy(c, 1))
        assert (await latest_deployment(c, "web")).status == "running"
        agent.verdict(second, HEALTHY)
        await wait_until(lambda: _deployment_is(c, "successful"))
        st = await c.status("web")
        assert (st.groups[0].running, st.groups[0].healthy) == (2, 2)
        assert {a.deployment_health for a in st.allocations} == {HEALTHY}


async def test_an_unhealthy_verdict_fails_the_deployment(tmp_path: Path) -> None:
    async with cluster(tmp_path, agents=0) as c:
        agent = await judging(c, "judge")
        await c.api.RegisterJob(controller_pb2.RegisterJobRequest(job=service_job(count=1)))
        await wait_until(lambda: len(agent.running) == 1)
        (alloc_id,) = agent.running
        agent.verdict(alloc_id, UNHEALTHY)
        await wait_until(lambda: _deployment_is(c, "failed"))
        dep = await latest_deployment(c, "web")
        assert "was not healthy within 3s (its node's verdict)" in dep.description


async def test_a_real_agent_judges_health_and_the_deployment_completes_on_it(
        tmp_path: Path) -> None:
    async with live_cluster(tmp_path, agents=1) as (ctl, _agents), \
            grpc.aio.insecure_channel(ctl.rpc_address) as ch:
        api = controller_pb2_grpc.ControllerServiceStub(ch)
        writes = ctl.cluster.alloc_writes
        job = service_job(count=1, min_healthy=0.5, args=("3600",))
        job.groups[0].update.healthy_deadline.FromSeconds(30)
        await api.RegisterJob(controller_pb2.RegisterJobRequest(job=job))

        async def deployment() -> str:
            st = await api.GetJob(controller_pb2.GetJobRequest(name="web"))
            return st.latest_deployment.status
        await wait_until(lambda: _is(deployment(), "successful"), within=20)
        (a,) = [a for a in ctl.cluster.state.allocs.values() if a.job == "web"]
        assert (a.client_status, a.healthy, a.deployment_health) == (RUNNING, True, HEALTHY)
        # healthy once it had run for min_healthy_time
        at = {e.type: e.time_ns for e in ctl.cluster.events.recent if e.key == a.id}
        assert at["AllocationHealthy"] - a.tasks["server"].started_at_ns >= 0.45e9
        # placed; then pending, running and healthy in one report (min_healthy_time is
        # within the agent's hold): two writes
        assert ctl.cluster.alloc_writes - writes == 2


async def _is(value: Awaitable[str], want: str) -> bool:
    return await value == want


async def _all(c: Harness, pred: Callable[[node_pb2.Allocation], bool]) -> bool:
    st = await c.status("web")
    return bool(st.allocations) and all(pred(a) for a in st.allocations)


async def _healthy(c: Harness, n: int) -> bool:
    st = await c.status("web")
    return sum(a.healthy for a in st.allocations) == n


async def _deployment_is(c: Harness, status: str) -> bool:
    return (await latest_deployment(c, "web")).status == status


async def test_a_real_agent_calls_an_allocation_unhealthy_past_its_deadline(
        tmp_path: Path) -> None:
    """Its check never passes: the agent's deadline timer reports it unhealthy, and the
    deployment fails on that verdict."""
    async with live_cluster(tmp_path, agents=1) as (ctl, _agents), \
            grpc.aio.insecure_channel(ctl.rpc_address) as ch:
        api = controller_pb2_grpc.ControllerServiceStub(ch)
        job = service_job(count=1, min_healthy=0.2, args=("3600",))
        job.groups[0].update.healthy_deadline.FromMilliseconds(1500)
        check = job.groups[0].tasks[0].checks.add(type="exec", command="/bin/false")
        check.interval.FromMilliseconds(200)
        await api.RegisterJob(controller_pb2.RegisterJobRequest(job=job))

        async def deployment() -> controller_pb2.Deployment:
            st = await api.GetJob(controller_pb2.GetJobRequest(name="web"))
            return st.latest_deployment
        await wait_until(lambda: _failed(deployment()), within=20)
        assert "was not healthy within 1.5s (its node's verdict)" in \
            (await deployment()).description
        (a,) = [a for a in ctl.cluster.state.allocs.values() if a.job == "web"]
        assert (a.client_status, a.healthy, a.deployment_health) == (RUNNING, False, UNHEALTHY)


async def _failed(dep: Awaitable[controller_pb2.Deployment]) -> bool:
    return (await dep).status == "failed"
