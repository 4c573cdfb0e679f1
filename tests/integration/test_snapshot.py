"""Backups of a bootstrapped cluster's store, taken and restored with orchctl as an operator
would: the restored state is the snapshot's, the agents follow it (a restore advances the
store epoch, so a lower version is applied), a damaged file changes nothing, and a store
wiped and restored comes back whole. SQLite here; etcd in test_snapshot_etcd below."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.server import Agent
from controller.server import Controller
from controller.state import ClusterState
from orch.v1 import node_pb2
from tests.etcd_server import EtcdCluster
from tests.integration.synthetic import controller_config, wait_until
from tests.integration.test_trust import NET, agent_config, bootstrapped

JOB = """
name: {name}
update: {{min_healthy_time: 0s}}
groups:
  - name: app
    count: {count}
    tasks:
      - name: main
        driver: process
        command: /bin/sh
        args: ["-c", "exec sleep 600"]
        resources: {{cpu_millicores: 50, memory_mb: 16}}
"""
RUNNING = node_pb2.CLIENT_STATUS_RUNNING


def job_file(tmp: Path, name: str, count: int) -> str:
    path = tmp / f"{name}-{count}.yaml"
    path.write_text(JOB.format(name=name, count=count))
    return str(path)


def running(ctl: Controller, name: str) -> set[str]:
    return {a.id for a in ctl.cluster.state.allocs_of_job(("default", name))
            if a.desired_status == node_pb2.DESIRED_STATUS_RUN and a.client_status == RUNNING}


def on_agent(agent: Agent) -> Callable[[], set[str]]:
    """The allocations whose tasks run on the agent now."""
    return lambda: {s.alloc_id for s in agent.runtime.statuses() if s.client_status == "running"}


def records(state: ClusterState) -> tuple[object, ...]:
    return (sorted(state.jobs), {k: [v.version for v in vs] for k, vs in state.jobs.items()},
            sorted(state.allocs), sorted(state.deployments))


async def test_restore_brings_the_snapshot_back_and_the_agent_follows(tmp_path: Path) -> None:
    async with bootstrapped(tmp_path) as (ctl, cli):
        token = (await cli("cluster", "join-token", "agent", "-q")).strip()
        agent = Agent(agent_config(tmp_path, ctl, token, task_user="root", allow_root_tasks=True))
        await agent.start()
        try:
            await wait_until(lambda: ctl.cluster.connected(agent.node_id), within=15)
            await cli("job", "run", job_file(tmp_path, "keep", 2), "--detach")
            await wait_until(lambda: len(running(ctl, "keep")) == 2, within=60)
            kept = running(ctl, "keep")
            snap = tmp_path / "backup.snap"
            await cli("operator", "snapshot", "save", str(snap))
            assert snap.read_bytes().startswith(b"orch-snapshot 1 ")
            assert oct(snap.stat().st_mode & 0o777) == "0o600"  # it holds the join secrets
            saved = records(ctl.cluster.state)

            # after the snapshot: another job, and the first one stopped
            await cli("job", "run", job_file(tmp_path, "later", 1), "--detach")
            await cli("job", "stop", "keep")
            await wait_until(lambda: len(running(ctl, "later")) == 1
                             and on_agent(agent)() == running(ctl, "later"), within=60)
            epoch = agent.pins.pin.epoch if agent.pins else 0

            # a damaged file is refused whole and changes nothing
            bad = tmp_path / "bad.snap"
            data = bytearray(snap.read_bytes())
            data[-100] ^= 0xFF
            bad.write_bytes(bytes(data))
            index = ctl.cluster.state.index
            out = await cli("operator", "snapshot", "restore", str(bad), code=1)
            assert "SHA-256" in out
            assert ctl.cluster.state.index == index

            out = await cli("operator", "snapshot", "restore", str(snap))
            assert "restored a snapshot of the sqlite store" in out
            assert records(ctl.cluster.state) == saved
            # the agent follows the restored state: the first job's tasks again, not the other's
            await wait_until(lambda: on_agent(agent)() == kept, within=60)
            assert agent.pins is not None
            assert agent.pins.pin.epoch > epoch
            types = [e.type for e in ctl.cluster.events.recent]
            assert "SnapshotRestored" in types
            # the operator's token still works after the restore
            await cli("job", "status")
        finally:
            await agent.stop(stop_tasks=True)


async def test_a_lost_store_restored_at_start_comes_back_and_no_task_restarts(
        tmp_path: Path) -> None:
    snap = tmp_path / "backup.snap"
    async with bootstrapped(tmp_path) as (ctl, cli):
        port = ctl.rpc_address.rsplit(":", 1)[1]
        token = (await cli("cluster", "join-token", "agent", "-q")).strip()
        agent = Agent(agent_config(tmp_path, ctl, token, task_user="root", allow_root_tasks=True))
        await agent.start()
        try:
            await wait_until(lambda: ctl.cluster.connected(agent.node_id), within=15)
            await cli("job", "run", job_file(tmp_path, "web", 3), "--detach")
            await wait_until(lambda: len(running(ctl, "web")) == 3, within=60)
            kept = running(ctl, "web")
            cluster_id = ctl.cluster.state.meta["cluster_id"]
            await cli("operator", "snapshot", "save", str(snap))
            saved = records(ctl.cluster.state)
            # more happens after the backup: the agent applies sets of higher versions
            for _ in range(3):
                await cli("job", "run", job_file(tmp_path, "other", 1), "--detach")
                await cli("job", "stop", "other")
            await wait_until(lambda: not running(ctl, "other"), within=60)
            old_version, old_epoch = agent.runtime.version, agent.runtime.epoch
            started = {s.alloc_id: s.tasks["main"].started_at_ns
                       for s in agent.runtime.statuses() if s.alloc_id in kept}
            await ctl.stop(grace=0.5)
            os.unlink(tmp_path / "ctl" / "controller.db")  # the disk is lost; pki was kept
            # the agent keeps its tasks while no controller answers
            ctl2 = Controller(controller_config(
                tmp_path / "ctl", bind=f"{NET}.1:0", rpc_addr=f"{NET}.1:{port}", metrics_addr="",
                restore_snapshot=str(snap)))
            await ctl2.start()
            try:
                assert ctl2.cluster.state.meta["cluster_id"] == cluster_id
                assert records(ctl2.cluster.state) == saved
                await wait_until(lambda: ctl2.cluster.connected(agent.node_id), within=60)
                await wait_until(lambda: agent.runtime.epoch > old_epoch, within=15)
                # a lower version than the agent had applied, of a newer store epoch: applied
                assert agent.runtime.version < old_version
                assert on_agent(agent)() == kept
                now = {s.alloc_id: s.tasks["main"].started_at_ns
                       for s in agent.runtime.statuses() if s.alloc_id in kept}
                assert now == started  # nothing was stopped, nothing started twice
                await wait_until(lambda: running(ctl2, "web") == kept, within=20)
            finally:
                await ctl2.stop(grace=0.5)
        finally:
            await agent.stop(stop_tasks=True)


@pytest.mark.etcd
async def test_an_etcd_store_snapshot_restores(tmp_path: Path, etcd_server: EtcdCluster,
                                               etcd_prefix: str) -> None:
    kw = {"store": "etcd", "etcd_endpoints": etcd_server.endpoints, "etcd_prefix": etcd_prefix,
          "leader_ttl": 2}
    async with bootstrapped(tmp_path, **kw) as (ctl, cli):
        await wait_until(lambda: ctl.leader.leading, within=15)
        await cli("job", "run", job_file(tmp_path, "web", 0), "--detach")
        snap = tmp_path / "etcd.snap"
        await cli("operator", "snapshot", "save", str(snap))
        saved = records(ctl.cluster.state)
        await cli("job", "run", job_file(tmp_path, "other", 0), "--detach")
        await cli("job", "stop", "web", "--purge")
        assert records(ctl.cluster.state) != saved
        out = await cli("operator", "snapshot", "restore", str(snap))
        assert "restored a snapshot of the etcd store" in out
        assert records(ctl.cluster.state) == saved
        assert records(ClusterState.from_store(await ctl.store.load())) == saved
