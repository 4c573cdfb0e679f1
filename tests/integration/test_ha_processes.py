"""Highly available controllers as real processes (``bench.ha_cluster``): three
``orch-controller`` processes on etcd and two ``orch-agent`` processes (process
driver) on 127.0.81.x, lease TTL 2 s.

- the leader killed with SIGKILL: another controller accepts writes within the TTL
  plus a second; everything acknowledged before is still there; no allocation runs
  twice (the agents' own Status and their task processes); scheduling resumes;
- the leader paused (SIGSTOP) past its TTL: another takes over meanwhile; when the
  stale one resumes, the write that was waiting in it fails, nothing it attempted
  lands, and it steps down and follows;
- one of three etcd members killed: writes keep succeeding; the member comes back.

Without the etcd binary these skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import cast

import grpc
import pytest

from bench.ha_cluster import Daemon, HaCluster, log_time, sleep_job, wait
from orch.v1 import controller_pb2, node_pb2
from tests.etcd_server import etcd_binary

TTL = 2
NET = "127.0.81"
"""This module's loopback block (the failover benchmark uses 127.0.80.x, other etcd tests
127.0.0.7x)."""

pytestmark = [pytest.mark.etcd, pytest.mark.slow, pytest.mark.timeout(60)]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    etcd_binary()  # skip, or fail under CI=true, before starting anything
    return tmp_path


def cluster(workdir: Path, **kw: object) -> HaCluster:
    return HaCluster(workdir / "ha", ttl=TTL, agents_n=2, net=NET, **kw)  # type: ignore[arg-type]


def register(c: HaCluster, via: Daemon, name: str, count: int,
             meta: dict[str, str] | None = None) -> int:
    reply = c.stub(via).RegisterJob(controller_pb2.RegisterJobRequest(
        job=sleep_job(name, count, meta)), timeout=15)
    return int(reply.version)


def history(c: HaCluster, via: Daemon, name: str) -> dict[int, dict[str, str]]:
    """version -> meta of every stored version of a job."""
    reply = c.stub(via).JobHistory(controller_pb2.JobHistoryRequest(name=name), timeout=10)
    return {v.job.version: dict(v.job.meta) for v in reply.versions}


def last_event(c: HaCluster, via: Daemon) -> int:
    """The index of the last event ``via`` knows."""
    return int(list(c.stub(via).Watch(controller_pb2.WatchRequest(tail=1), timeout=10))[-1].index)


def events_after(c: HaCluster, via: Daemon, index: int) -> list[controller_pb2.Event]:
    """The stored events after ``index``."""
    return list(c.stub(via).Watch(controller_pb2.WatchRequest(since_index=index), timeout=10))


def caught_up(c: HaCluster, via: Daemon, versions: int) -> bool:
    """Whether ``via`` serves ``versions`` versions of the job "config" (a follower reads
    the store every second: until then it may not know the job at all)."""
    try:
        return len(history(c, via, "config")) == versions
    except grpc.RpcError as e:
        if cast(grpc.Call, e).code() is grpc.StatusCode.NOT_FOUND:
            return False
        raise


def run_web(c: HaCluster, leader: Daemon, count: int) -> tuple[dict[str, str], set[int]]:
    """A job of ``count`` sleeping allocations, running: (alloc id -> node id, task pids)."""
    register(c, leader, "web", count)
    wait("the allocations to run", lambda: len(c.running_allocations(leader, "web")) == count, 60)
    wait("the agents to run them", lambda: sum(len(v) for v in c.agents_running().values())
         == count, 30)
    shims = set(c.task_shims())
    assert len(shims) == count
    return c.running_allocations(leader, "web"), shims


def assert_nothing_twice(c: HaCluster, leader: Daemon, before: dict[str, str],
                         shims: set[int]) -> None:
    """The same allocations on the same nodes, each run by one agent, by the same processes."""
    assert c.running_allocations(leader, "web") == before
    per_agent = c.agents_running()
    ids = [a for v in per_agent.values() for a in v]
    assert sorted(ids) == sorted(before), per_agent
    assert set(c.task_shims()) == shims


def test_leader_killed_new_leader_within_ttl_nothing_lost_nothing_twice(workdir: Path) -> None:
    with cluster(workdir) as c:
        leader = c.leader()
        before, shims = run_web(c, leader, 4)
        acked = {register(c, leader, "config", 0, {"v": str(i)}): {"v": str(i)} for i in range(5)}
        assert sorted(acked) == [1, 2, 3, 4, 5]

        mark = last_event(c, leader)
        survivors = [d for d in c.controllers if d is not leader]
        kill_wall = time.time()
        t0 = time.monotonic()
        c.kill(leader)
        new, reply, _ = c.write_until_accepted(
            survivors, lambda n: controller_pb2.RegisterJobRequest(
                job=sleep_job("probe", 0, {"attempt": str(n)})), within=TTL + 30)
        took = time.monotonic() - t0
        elected = [log_time(r) - kill_wall for r in new.log_lines("elected leader")
                   if log_time(r) >= kill_wall - 0.001]
        assert elected, "the new leader logged no election after the kill"
        assert took <= TTL + 1.0, f"the first write took {took:.2f} s (elected after " \
                                  f"{elected[0]:.2f} s)"
        assert reply.version == 1
        info = c.leader_info(new)
        assert info is not None
        assert info.is_self

        # everything acknowledged before the kill is there, as it was
        assert history(c, new, "config") == acked
        wait("the agents to follow the new leader", lambda: c.agents_connected_to(new), 30)
        time.sleep(1.0)  # reports and a scheduling pass on the new leader
        assert_nothing_twice(c, new, before, shims)
        events = events_after(c, new, mark)
        assert [e.key for e in events if e.type == "JobRegistered"] == ["probe"]  # it sees them
        assert not [e for e in events if e.type in ("NodeDown", "AllocationLost")], events

        # the killed controller comes back as a follower; scheduling goes on
        c.start(leader)
        c.wait_follower(leader, new, within=30)
        register(c, new, "web", 5)
        wait("a fifth allocation", lambda: len(c.running_allocations(new, "web")) == 5, 30)
        wait("the agents to run five", lambda: sum(len(v) for v in c.agents_running().values())
             == 5, 30)
        assert len(c.task_shims()) == 5
        wait("the restarted follower to serve the same", lambda: c.running_allocations(
            leader, "web") == c.running_allocations(new, "web"), 10)
        assert set(before) < set(c.running_allocations(leader, "web"))


def test_paused_leader_is_fenced_and_steps_down(workdir: Path) -> None:
    grace = 2.0
    pause = 2 * TTL + grace + 1  # past its TTL, and past the new leader's node grace
    with cluster(workdir, node_grace=grace) as c:
        stale = c.leader()
        before, shims = run_web(c, stale, 2)
        assert register(c, stale, "config", 0, {"v": "1"}) == 1
        stub = c.stub(stale)  # its channel is connected: a write can wait inside it
        others = [d for d in c.controllers if d is not stale]

        c.pause(stale)
        paused_at = time.monotonic()
        in_flight = stub.RegisterJob.future(controller_pb2.RegisterJobRequest(
            job=sleep_job("stale-write", 0)), timeout=60)
        # another controller takes over while it sleeps, and writes
        new, _, _ = c.write_until_accepted(others, lambda n: controller_pb2.RegisterJobRequest(
            job=sleep_job("config", 0, {"v": "2"})), within=TTL + 30)
        assert time.monotonic() - paused_at <= TTL + 1.0
        mark = last_event(c, new)
        # the agents' streams were held by the paused leader: they follow the new one (gossip
        # tags it) well before its node grace is over, so no node is marked down
        wait("the agents to follow the new leader", lambda: c.agents_connected_to(new), grace)
        time.sleep(max(0.0, pause - (time.monotonic() - paused_at)))

        c.resume(stale)
        with pytest.raises(grpc.RpcError) as failed:
            in_flight.result(timeout=30)
        assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION, failed.value
        # it steps down and follows; the agents stay with the new leader
        c.wait_follower(stale, new, within=TTL + 5)
        info = c.leader_info(stale)
        assert info is not None
        assert info.address == new.rpc
        time.sleep(1.0)
        assert c.agents_connected_to(new)

        # nothing the stale leader attempted landed: not the write, not a node marked down
        for d in c.controllers:
            with pytest.raises(grpc.RpcError) as missing:
                c.stub(d).GetJob(controller_pb2.GetJobRequest(name="stale-write"), timeout=10)
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert history(c, new, "config") == {1: {"v": "1"}, 2: {"v": "2"}}
        after = events_after(c, new, mark)
        assert not [e for e in after if "stale-write" in e.message
                    or e.type in ("NodeDown", "AllocationLost", "JobRegistered")], after
        nodes = c.stub(new).ListNodes(controller_pb2.ListNodesRequest(), timeout=10).nodes
        assert [n.status for n in nodes] == [node_pb2.NODE_STATUS_READY] * 2
        assert_nothing_twice(c, new, before, shims)
        # the stale leader refuses writes and names the leader
        with pytest.raises(grpc.RpcError) as refused:
            register(c, stale, "config", 0, {"v": "3"})
        trailers = cast(grpc.Call, refused.value).trailing_metadata() or ()
        assert dict(trailers)["orch-leader"] == new.rpc
        assert stale.log_lines("stepped down")


def test_one_of_three_etcd_members_killed_writes_go_on(workdir: Path) -> None:
    with cluster(workdir, etcd_members=3) as c:
        assert c.etcd is not None
        leader = c.leader()
        assert register(c, leader, "config", 0, {"v": "1"}) == 1
        victim = c.etcd.members[0]  # every controller's first endpoint
        c.etcd.kill(victim)
        t0 = time.monotonic()
        who, reply, _ = c.write_until_accepted(c.controllers, lambda n: controller_pb2.RegisterJobRequest(
            job=sleep_job("config", 0, {"v": "2"})), within=30)
        assert reply.version == 2
        took = time.monotonic() - t0
        assert took < 10, f"writes resumed after {took:.2f} s"
        leader = c.wait_settled(30)
        for i in range(3, 8):  # and keep succeeding
            assert register(c, leader, "config", 0, {"v": str(i)}) == i
        for d in c.controllers:  # followers still read
            wait(f"{d.name} to catch up", functools.partial(caught_up, c, d, 7), 10)

        c.etcd.start_member(victim)
        assert register(c, leader, "config", 0, {"v": "8"}) == 8
        c.etcd.kill(c.etcd.members[1])  # the member back carries the quorum with the third
        leader = c.wait_settled(30)
        who, reply, _ = c.write_until_accepted(c.controllers, lambda n: controller_pb2.RegisterJobRequest(
            job=sleep_job("config", 0, {"v": "9"})), within=30)
        assert reply.version == 9
        assert sorted(history(c, who, "config")) == list(range(1, 10))
