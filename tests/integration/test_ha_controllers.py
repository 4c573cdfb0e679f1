"""Three controllers on one etcd and real agents, in this process: one leads; followers
serve reads and send writes (and agents) to the leader; when the leader goes, another
takes over within the lease TTL plus a second, with nothing acknowledged lost and no
allocation running twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent.config import AgentConfig
from agent.server import Agent
from controller.server import Controller
from controller.store.base import Changes
from orch import tls
from orch.errors import NotLeaderError
from orch.gossip.coalesce import Delivered
from orch.gossip.config import GossipConfig
from orch.gossip.core import EventKind, MemberEvent
from orch.v1 import controller_pb2, controller_pb2_grpc, node_pb2
from tests.etcd_server import EtcdCluster, etcd_binary
from tests.integration.live import JOB, Cli
from tests.integration.synthetic import controller_config, wait_until

TTL = 2


@asynccontextmanager
async def ha_cluster(tmp: Path, etcd: EtcdCluster, prefix: str, *, controllers: int = 3,
                     agents: int = 2) -> AsyncIterator[tuple[list[Controller], list[Agent]]]:
    ctls: list[Controller] = []
    started: list[Agent] = []
    try:
        for i in range(controllers):
            seeds = [f"{g.addr[0]}:{g.addr[1]}" for g in [ctls[0].gossip] if g] if ctls else []
            c = Controller(controller_config(
                tmp / f"c{i}", name=f"c{i}", bind="127.0.0.1:0", rpc_addr="127.0.0.1:0",
                store="etcd", etcd_endpoints=etcd.endpoints, etcd_prefix=prefix,
                leader_ttl=TTL, follower_refresh=0.2, http_addr="127.0.0.1:0",
                join=seeds))
            await c.start()
            ctls.append(c)
        await wait_until(lambda: sum(c.leader.is_leader for c in ctls) == 1, within=15)
        seed = ctls[0].gossip
        assert seed is not None
        for i in range(1, agents + 1):
            a = Agent(AgentConfig(
                name=f"agent-{i}", bind=f"127.0.0.{i + 1}:0", join=[f"{seed.addr[0]}:{seed.addr[1]}"],
                rpc_addr=f"127.0.0.{i + 1}:0", data_dir=str(tmp / f"agent-{i}"), metrics_addr="",
                lb_bind=f"127.0.0.{i + 1}", drivers=["process"], gossip=GossipConfig.fast(),
                task_user="root", allow_root_tasks=True))
            await a.start()
            started.append(a)
        leader = next(c for c in ctls if c.leader.is_leader)
        await wait_until(lambda: all(leader.cluster.connected(a.node_id) for a in started),
                         within=20)
        yield ctls, started
    finally:
        for a in started:
            await a.stop(stop_tasks=True)
        for c in ctls:
            with contextlib.suppress(Exception):  # one the test killed is already half gone
                await asyncio.wait_for(c.stop(grace=0.2), 20)


def leader_of(ctls: list[Controller]) -> Controller:
    leaders = [c for c in ctls if c.leader.is_leader]
    assert len(leaders) == 1, [c.cfg.name for c in leaders]
    return leaders[0]


async def kill(c: Controller) -> None:
    """As close to kill -9 as in-process gets: the lease is left to expire, nothing is
    handed over, the sockets just close."""
    assert c.leader.election is not None
    for t in c.leader.election._tasks:
        t.cancel()
    await c.leader.election.election.close()  # keepalives stop; no resign
    await c.step_down("killed")
    c.leader.election = None
    if c._server is not None:
        await c._server.stop(0)
    if c.http is not None:
        await c.http.stop()
    if c.gossip is not None:
        await c.gossip.stop()


async def test_followers_read_redirect_and_failover(tmp_path: Path, etcd_server: EtcdCluster,
                                                    etcd_prefix: str) -> None:
    async with ha_cluster(tmp_path, etcd_server, etcd_prefix) as (ctls, agents):
        leader = leader_of(ctls)
        follower = next(c for c in ctls if c is not leader)
        job = tmp_path / "web.yaml"
        job.write_text(JOB.format(name="web", count=2, memory=32))

        # orchctl pointed at a follower: the write is redirected, the read served there
        cli = Cli(follower.rpc_address, tmp_path)
        await cli("job", "run", str(job))
        await wait_until(lambda: sum(a.healthy for a in follower.cluster.state.allocs.values())
                         == 2, within=20)
        assert "web" in await cli("job", "status")
        # a job's logs are read at the follower; a command asked of it runs at the leader's
        # say (which records it)
        assert "hello from 0" in await cli("job", "logs", "web")
        alloc = next(iter(follower.cluster.state.allocs))
        assert await cli("alloc", "exec", alloc, "--", "sh", "-c", "echo ran; exit 6",
                         code=6) == "ran\n"
        assert [e.key for e in leader.cluster.events.recent if e.type == "AllocationExec"] \
            == [alloc]
        text = await cli("leader")
        assert leader.cfg.name in text
        for c in ctls:
            assert c.cfg.name in text
        # a raw client sees the redirect itself
        async with tls.open_channel(follower.rpc_address, None) as ch:
            stub = controller_pb2_grpc.ControllerServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.StopJob(controller_pb2.StopJobRequest(name="web"), timeout=5)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert dict(e.value.trailing_metadata() or ())["orch-leader"] == leader.rpc_address
        # and so does an HTTP client: a follower serves reads and redirects writes (307) to
        # the leader's HTTP address, which it knows from gossip
        assert follower.http is not None
        assert leader.http is not None
        where = leader.http.address
        await wait_until(lambda: follower._http_of(leader.rpc_address) == where, within=10)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{follower.http.url}/v1/jobs") as r:
                assert r.status == 200
                assert "web" in await r.text()
            scale = f"{follower.http.url}/v1/job/web/scale"
            body = json.dumps({"group": "app", "count": 2})
            async with http.post(scale, data=body, allow_redirects=False) as r:
                assert r.status == 307, await r.text()
                assert r.headers["Location"] == f"{leader.http.url}/v1/job/web/scale"
            async with http.post(scale, data=body) as r:  # followed, body and all
                assert r.status == 200, await r.text()
                assert (await r.json())["changed"] is False
        # the follower's web UI reads, and sends an operator to the leader's UI for an action
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as ui:
            async with ui.post(f"{follower.http.url}/ui/login", data={"token": ""}) as r:
                assert "web" in await (await ui.get(f"{follower.http.url}/ui/jobs")).text()
            async with ui.get(f"{follower.http.url}/ui/job/default/web") as r:
                csrf = (await r.text()).split('name="csrf" value="')[1].split('"')[0]
            async with ui.post(f"{follower.http.url}/ui/job/default/web/scale",
                               data={"csrf": csrf, "group": "app", "count": "2"}) as r:
                text = await r.text()
            assert f"the leader&#39;s UI is {leader.http.url}/ui/" in text, text

        before = {a.id: a.node_id for a in leader.cluster.state.allocs.values()}
        acknowledged = leader.cluster.state.index
        rest = [c for c in ctls if c is not leader]
        await wait_until(lambda: all(c.cluster.state.index == acknowledged for c in rest),
                         within=10)
        held = {c.cfg.name: c.cluster.state.allocs for c in rest}

        # the leader dies: another takes over within TTL + 1 s and the agents follow
        t0 = time.monotonic()
        await kill(leader)
        await wait_until(lambda: sum(c.leader.is_leader for c in rest) == 1, within=TTL + 5)
        took = time.monotonic() - t0
        assert took < TTL + 1.5, took
        new = leader_of(rest)
        assert new.cluster.state.index >= acknowledged
        # it held the store's state as of its last write: taken over without reading it again
        assert new.cluster.state.allocs is held[new.cfg.name]
        await wait_until(lambda: all(new.cluster.connected(a.node_id) for a in agents),
                         within=20)
        # nothing ran twice and nothing moved: the same allocations, on the same nodes
        await asyncio.sleep(1.0)
        running = {a.id: a.node_id for a in new.cluster.state.allocs.values()
                   if a.desired_status == node_pb2.DESIRED_STATUS_RUN
                   and a.client_status == node_pb2.CLIENT_STATUS_RUNNING}
        assert running == before
        for a in agents:
            assert len([s for s in a.runtime.statuses() if s.client_status == "running"]) == \
                sum(1 for n in before.values() if n == a.node_id)
        # the new leader writes (through a follower, still)
        cli = Cli(rest[0].rpc_address if rest[0] is not new else rest[1].rpc_address, tmp_path)
        await cli("job", "scale", "web", "app", "3")
        await wait_until(lambda: sum(a.healthy for a in new.cluster.state.allocs.values()) == 3,
                         within=20)


async def _health(addr: str, service: str) -> int:
    async with tls.open_channel(addr, None) as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(reply.status)


async def test_etcd_unavailable_stops_writes_keeps_reads_and_recovers(tmp_path: Path) -> None:
    etcd_binary()
    with EtcdCluster(1, first_host=75) as etcd:
        async with ha_cluster(tmp_path, etcd, "/orch", controllers=2, agents=1) as (ctls, agents):
            leader = leader_of(ctls)
            job = tmp_path / "web.yaml"
            job.write_text(JOB.format(name="web", count=1, memory=32))
            cli = Cli(leader.rpc_address, tmp_path)
            await cli("job", "run", str(job))
            before = {a.id for a in leader.cluster.state.allocs.values()}

            etcd.kill(etcd.members[0])
            # no controller leads or writes; each says the store is gone, and still reads
            await wait_until(lambda: not any(c.leader.is_leader for c in ctls), within=TTL + 3)
            await wait_until(lambda: all(c.leader.election is not None and
                                         not c.leader.election.store_available for c in ctls),
                             within=5)
            for c in ctls:
                assert await _health(c.rpc_address, "orch.store") == \
                    health_pb2.HealthCheckResponse.NOT_SERVING
                assert "web" in await Cli(c.rpc_address, tmp_path)("job", "status")
            text = await Cli(ctls[1].rpc_address, tmp_path)("job", "stop", "web", code=1)
            assert "not the leader" in text
            # the tasks keep running meanwhile
            assert [s.client_status for s in agents[0].runtime.statuses()] == ["running"]

            etcd.start_member(etcd.members[0])
            await wait_until(lambda: sum(c.leader.is_leader for c in ctls) == 1, within=20)
            await wait_until(lambda: all(c.leader.election is not None and
                                         c.leader.election.store_available for c in ctls), within=10)
            new = leader_of(ctls)
            assert await _health(new.rpc_address, "orch.store") == \
                health_pb2.HealthCheckResponse.SERVING
            await wait_until(lambda: new.cluster.connected(agents[0].node_id), within=20)
            assert {a.id for a in new.cluster.state.allocs.values()} == before
            await Cli(ctls[0].rpc_address, tmp_path)("job", "scale", "web", "app", "2")
            await wait_until(lambda: sum(a.healthy for a in new.cluster.state.allocs.values())
                             == 2, within=20)


async def test_only_the_leader_writes(tmp_path: Path, etcd_server: EtcdCluster,
                                      etcd_prefix: str, caplog: pytest.LogCaptureFixture
                                      ) -> None:
    """A follower never writes to the store: not through its write path, and not what gossip
    tells it about agents (the leader records that, once). Found by the process-level HA
    tests: every controller recorded an agent's suspicion, and a follower whose copy of the
    store was fresh wrote it unfenced, so that the leader's next commit failed."""
    async with ha_cluster(tmp_path, etcd_server, etcd_prefix, agents=1) as (ctls, agents):
        leader = leader_of(ctls)
        follower = next(c for c in ctls if c is not leader)
        await wait_until(lambda: follower.cluster.state.index == leader.cluster.state.index,
                         within=10)
        await asyncio.sleep(0.5)  # a follower refresh: its copy of the store is current
        index = await leader.store.index()  # type: ignore[attr-defined]
        with pytest.raises(NotLeaderError) as refused:
            await follower.cluster.write(Changes(meta={"written-by": follower.cfg.name}))
        assert refused.value.leader == leader.rpc_address
        suspect = MemberEvent(EventKind.SUSPECT, agents[0].cfg.name, ("127.0.0.2", 1), 0, 0.0)
        for c in ctls:
            c.gossip_events.on_member(suspect)
            c.gossip_events.record_members([Delivered(1, suspect)])  # as the coalesced batch brings it
        await wait_until(lambda: any(e.type == "NodeSuspect"
                                     for e in leader.cluster.events.recent), within=5)
        await asyncio.sleep(0.5)
        assert await leader.store.index() == index + 1  # type: ignore[attr-defined]
        events = await leader.store.events_since(0)
        assert [e.type for e in events].count("NodeSuspect") == 1
        assert "written-by" not in (await leader.store.load()).meta
        await leader.cluster.write(Changes(meta={"written-by": leader.cfg.name}))  # still can
        # a node event whose write finds this controller not leading (its term ended after
        # the gossip event came) is a warning in its log, not an error nobody retrieves
        caplog.clear()  # (another test may have set the controller's loggers to INFO)
        with caplog.at_level(logging.WARNING, logger="controller"):
            follower.gossip_events.spawn(follower.nodes_monitor.member_event(agents[0].cfg.name,
                                                                "NodeSuspect"))
            await wait_until(lambda: not follower.gossip_events.pending, within=5)
        assert [r.getMessage() for r in caplog.records
                if r.name == "controller" and r.levelno >= logging.WARNING] == [
            "a gossip event about a node was not recorded"]
        assert await leader.store.index() == index + 2  # type: ignore[attr-defined]
