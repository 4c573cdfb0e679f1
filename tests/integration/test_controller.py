"""The controller with synthetic agents on real sockets: scheduling, deployments, failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from controller.server import Controller
from orch.gossip.core import EventKind, MemberEvent
from orch.v1 import controller_pb2, job_pb2, node_pb2
from tests.integration.synthetic import (
    Harness,
    cluster,
    controller_config,
    service_job,
    wait_until,
)

RUN = node_pb2.DESIRED_STATUS_RUN


async def register(c: Harness, job: job_pb2.Job) -> controller_pb2.RegisterJobResponse:
    return await c.api.RegisterJob(controller_pb2.RegisterJobRequest(job=job))


async def deployment_status(c: Harness, name: str, version: int) -> str:
    """The deployment's status once it has settled (succeeded, failed...), else ""."""
    st = await c.status(name)
    d = st.latest_deployment
    settled = d.job_version == version and d.status not in ("running", "")
    return d.status if settled else ""


async def test_a_job_runs_and_its_deployment_succeeds(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        resp = await register(c, service_job(count=3))
        assert resp.version == 1
        assert resp.changed
        assert [ch.kind for ch in resp.plan.changes] == ["create"] * 3
        await wait_until(lambda: deployment_status(c, "web", 1), within=10)
        assert await deployment_status(c, "web", 1) == "successful"
        st = await c.status("web")
        assert (st.groups[0].desired, st.groups[0].running, st.groups[0].healthy) == (3, 3, 3)
        # job anti-affinity: three replicas on three nodes
        assert len({a.node_id for a in st.allocations}) == 3
        assert st.job.stable
        # registering the same spec again changes nothing
        again = await register(c, service_job(count=3))
        assert (again.version, again.changed, again.plan.changes_anything) == (1, False, False)


async def test_scaling_up_and_down(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await register(c, service_job(count=2))
        await wait_until(lambda: _count_running(c, "web", 2))
        up = await register(c, service_job(count=5))
        assert sum(ch.kind == "create" for ch in up.plan.changes) == 3
        await wait_until(lambda: _count_running(c, "web", 5))
        down = await register(c, service_job(count=1))
        stops = [ch for ch in down.plan.changes if ch.kind == "stop"]
        assert len(stops) == 4
        assert all(ch.reason == "count reduced" for ch in stops)
        await wait_until(lambda: _count_running(c, "web", 1))
        (last,) = await c.running("web")
        assert last.index == 0  # the highest indexes stop first


async def _count_running(c: Harness, name: str, n: int) -> bool:
    return len(await c.running(name)) == n


async def test_a_failing_update_rolls_back_to_the_last_stable_version(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await register(c, service_job(count=3, auto_revert=True))
        await wait_until(lambda: deployment_status(c, "web", 1))
        assert await deployment_status(c, "web", 1) == "successful"
        bad = await register(c, service_job(count=3, auto_revert=True, args=("fail",)))
        assert bad.version == 2
        # max_parallel 1: one replacement at a time, and it fails
        assert sum(ch.kind == "replace" for ch in bad.plan.changes) == 1
        # the controller registers version 1's spec again as version 3 and rolls it out
        await wait_until(lambda: deployment_status(c, "web", 3), within=15)
        assert await deployment_status(c, "web", 3) == "successful"
        await wait_until(lambda: _all_version(c, "web", 3), within=15)
        (failed,) = [d for d in c.ctl.cluster.state.deployments.values() if d.job_version == 2]
        assert failed.status == "failed"
        assert "rolling back to version 1" in failed.description
        st = await c.status("web")
        assert st.job.version == 3
        assert list(st.job.groups[0].tasks[0].args) == ["serve"]
        assert sum(a.desired_status == RUN for a in st.allocations) == 3


async def _all_version(c: Harness, name: str, version: int) -> bool:
    running = await c.running(name)
    return len(running) == 3 and all(a.job_version == version for a in running)


async def test_allocations_of_a_lost_node_are_rescheduled_and_not_run_twice(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await register(c, service_job(count=3))
        await wait_until(lambda: _count_running(c, "web", 3))
        victim = c.agents["agent-2"]
        lost = set(victim.running)
        await victim.stop()
        await wait_until(lambda: c.ctl.cluster.state.nodes[victim.node.id].status
                         == node_pb2.NODE_STATUS_DOWN, within=5)
        await wait_until(lambda: _count_running(c, "web", 3))
        running = await c.running("web")
        assert not lost & {a.id for a in running}
        assert victim.node.id not in {a.node_id for a in running}
        # the node returns: the controller does not give it back what runs elsewhere
        victim.start()
        await wait_until(lambda: c.ctl.cluster.state.nodes[victim.node.id].status
                         == node_pb2.NODE_STATUS_READY)
        await wait_until(lambda: not set(victim.running) & lost)
        assert len(await c.running("web")) == 3


async def test_a_member_gossip_declares_dead_loses_its_node_even_with_its_stream_open(
        tmp_path: Path) -> None:
    """A frozen or cut-off agent's stream can look open for minutes: gossip's verdict counts.
    When gossip sees it alive again, the node is ready again and stops what moved."""
    async with cluster(tmp_path) as c:
        await register(c, service_job(count=3))
        await wait_until(lambda: _count_running(c, "web", 3))
        victim = c.agents["agent-2"]
        lost = set(victim.running)
        c.ctl.gossip_events.on_member(MemberEvent(EventKind.DEAD, "agent-2", ("127.0.0.1", 1), 1, 0.0))
        assert c.ctl.cluster.connected(victim.node.id)
        await wait_until(lambda: c.ctl.cluster.state.nodes[victim.node.id].status
                         == node_pb2.NODE_STATUS_DOWN, within=5)
        await wait_until(lambda: _count_running(c, "web", 3))
        assert not lost & {a.id for a in await c.running("web")}
        # it refutes: ready again over the same stream, without what now runs elsewhere
        c.ctl.gossip_events.on_member(MemberEvent(EventKind.ALIVE, "agent-2", ("127.0.0.1", 1), 2, 0.0))
        await wait_until(lambda: c.ctl.cluster.state.nodes[victim.node.id].status
                         == node_pb2.NODE_STATUS_READY)
        await wait_until(lambda: not set(victim.running) & lost)
        assert len(await c.running("web")) == 3


async def test_draining_a_node_moves_its_allocations(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await register(c, service_job(count=3))
        await wait_until(lambda: _count_running(c, "web", 3))
        node = c.agents["agent-1"].node
        await c.api.DrainNode(controller_pb2.DrainNodeRequest(id="agent-1", enable=True))
        await wait_until(lambda: not any(a.node_id == node.id and a.desired_status == RUN
                                         for a in c.ctl.cluster.state.allocs.values()), within=10)
        await wait_until(lambda: _count_running(c, "web", 3))
        await wait_until(lambda: not c.ctl.cluster.state.nodes[node.id].HasField("drain"))
        assert not c.ctl.cluster.state.nodes[node.id].eligible


async def test_a_system_job_follows_nodes(tmp_path: Path) -> None:
    async with cluster(tmp_path, agents=2) as c:
        await register(c, service_job("agentd", count=1, type_="system"))
        await wait_until(lambda: _count_running(c, "agentd", 2))
        await c.add_agent("agent-9")
        await wait_until(lambda: _count_running(c, "agentd", 3))
        nodes = {a.node_id for a in await c.running("agentd")}
        assert nodes == {a.node.id for a in c.agents.values()}


async def test_unplaceable_work_is_explained(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        resp = await register(c, service_job(count=2, memory=100_000))
        (failure,) = resp.plan.failures
        assert failure.placed == 0
        assert "exhausted memory" in failure.explanation
        st = await c.status("web")
        assert "exhausted memory" in st.groups[0].unplaced_reason


async def test_bad_jobs_get_every_problem_at_once(tmp_path: Path) -> None:
    async with cluster(tmp_path, agents=0) as c:
        job = service_job(count=-2, memory=-5)
        job.groups[0].tasks[0].driver = "podman"
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await register(c, job)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        for problem in ("groups[0].count", "memory_mb", "driver"):
            assert problem in (e.value.details() or "")


async def test_a_restarted_controller_keeps_everything(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await register(c, service_job(count=3))
        await wait_until(lambda: _count_running(c, "web", 3))
        before = {a.id: a.node_id for a in await c.running("web")}
        await c.ctl.stop(grace=0.5)
        ctl = Controller(controller_config(tmp_path / "ctl"))
        await ctl.start()
        try:
            state = ctl.cluster.state
            assert {i: a.node_id for i, a in state.allocs.items() if a.desired_status == RUN} == before
            assert state.job(("default", "web")) is not None
            # the agents come back to the new controller; nothing is placed again
            for a in c.agents.values():
                a.link._addresses = lambda addr=ctl.rpc_address: [addr]  # type: ignore[misc]
            await wait_until(lambda: all(ctl.cluster.connected(a.node.id) for a in c.agents.values()),
                             within=10)
            ev = await ctl.evaluator.evaluate_now(("default", "web"), "test")
            assert not ev.plan.changes
        finally:
            await ctl.stop(grace=0.5)
            c.ctl = Controller(controller_config(tmp_path / "ctl2"))
            await c.ctl.start()


async def test_a_restarted_controller_waits_for_agents_that_are_slow_to_reconnect(
        tmp_path: Path) -> None:
    """After a restart, nodes known from before get the failover grace to reconnect (their
    agents back off for longer than the node grace), then are marked down if they do not."""
    async with cluster(tmp_path) as c:
        await register(c, service_job(count=3))
        await wait_until(lambda: _count_running(c, "web", 3))
        before = {a.id: a.node_id for a in await c.running("web")}
        await c.ctl.stop(grace=0.5)
        ctl = Controller(controller_config(tmp_path / "ctl", failover_grace=3.0))
        await ctl.start()
        try:
            await asyncio.sleep(1.5)  # three times the node grace, and nobody came back
            nodes = ctl.cluster.state.nodes
            assert all(n.status == node_pb2.NODE_STATUS_READY for n in nodes.values())
            late = c.agents["agent-3"]
            for a in c.agents.values():
                if a is not late:
                    a.link._addresses = lambda addr=ctl.rpc_address: [addr]  # type: ignore[misc]
            await wait_until(lambda: nodes[late.node.id].status == node_pb2.NODE_STATUS_DOWN,
                             within=5)
            others = [a for a in c.agents.values() if a is not late]
            assert all(nodes[a.node.id].status == node_pb2.NODE_STATUS_READY for a in others)
            still = {i: n for i, n in before.items() if n != late.node.id}
            running = {a.id: a.node_id for a in ctl.cluster.state.allocs.values()
                       if a.desired_status == RUN}
            assert still.items() <= running.items()
        finally:
            await ctl.stop(grace=0.5)
            c.ctl = Controller(controller_config(tmp_path / "ctl2"))
            await c.ctl.start()


async def test_standard_health_and_reflection_services_answer(tmp_path: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with cluster(tmp_path, agents=0) as c:
        health = health_pb2_grpc.HealthStub(c.channel)
        for service in ("", "orch.v1.ControllerService", "orch.v1.NodeService"):
            r = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert r.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(c.channel)

        async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        async for resp in refl.ServerReflectionInfo(ask()):
            names = {s.name for s in resp.list_services_response.service}
            break
        assert {"orch.v1.ControllerService", "orch.v1.NodeService",
                "grpc.health.v1.Health"} <= names


async def test_canaries_wait_for_promotion(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await register(c, service_job(count=3, canary=1))
        await wait_until(lambda: deployment_status(c, "web", 1))
        resp = await register(c, service_job(count=3, canary=1, args=("serve", "v2")))
        assert [ch.reason for ch in resp.plan.changes] == ["canary"]
        await wait_until(lambda: deployment_status(c, "web", 2))
        assert await deployment_status(c, "web", 2) == "paused"  # healthy, waiting
        running = await c.running("web")
        assert len(running) == 4  # the canary beside the three of version 1
        assert sum(a.canary for a in running) == 1
        st = await c.status("web")
        await c.api.PromoteDeployment(controller_pb2.PromoteDeploymentRequest(
            deployment_id=st.latest_deployment.id[:8]))
        await wait_until(lambda: _all_version(c, "web", 2), within=15)
        await wait_until(lambda: deployment_status(c, "web", 2))
        assert await deployment_status(c, "web", 2) == "successful"
        assert not any(a.canary for a in await c.running("web"))


async def test_scaling_changes_only_the_count_as_a_new_version(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await register(c, service_job(count=2))
        await wait_until(lambda: _count_running(c, "web", 2))
        resp = await c.api.ScaleJob(controller_pb2.ScaleJobRequest(
            name="web", group="app", count=4, reason="more traffic"))
        assert resp.version == 2
        assert sum(ch.kind == "create" for ch in resp.plan.changes) == 2
        await wait_until(lambda: _count_running(c, "web", 4))
        history = await c.api.JobHistory(controller_pb2.JobHistoryRequest(name="web"))
        (change,) = history.versions[0].diff.fields
        assert (change.path, change.old, change.new) == ("groups[app].count", "2", "4")
        events = [e for e in c.ctl.cluster.events.recent if e.type == "JobScaled"]
        assert "scaled app to 4: more traffic" in events[-1].message
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await c.api.ScaleJob(controller_pb2.ScaleJobRequest(name="web", group="nope",
                                                                count=1))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


async def test_an_agent_stream_that_ends_leaves_no_task_behind(tmp_path: Path) -> None:
    """The stream's wait for the next desired set is cancelled with the stream (it was left
    pending, and asyncio complained "Task was destroyed but it is pending!" at exit)."""
    async with cluster(tmp_path, agents=1) as c:
        agent = c.agents["agent-1"]
        await agent.stop()
        await wait_until(lambda: not c.ctl.cluster.connected(agent.node.id), within=5)
        await asyncio.sleep(0.05)  # cancellations take a loop turn
        waiting = [t for t in asyncio.all_tasks() if not t.done()
                   and getattr(t.get_coro(), "__qualname__", "") == "Queue.get"]
        assert waiting == []
