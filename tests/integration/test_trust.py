"""A cluster that bootstraps its own trust: the first controller makes a CA, the operator's
credentials and the join tokens; an agent joins with a token and nothing else, runs tasks
as an unprivileged user, renews its certificate without losing its stream, and once removed
can no longer stream. Bad tokens and requests are refused with a clear error and change
nothing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from agent.config import AgentConfig
from agent.server import Agent
from controller.server import Controller
from orch import join, pki
from orch.errors import ConfigError
from orch.gossip.config import GossipConfig
from orch.tls import TlsConfig, open_channel
from orch.v1 import controller_pb2, controller_pb2_grpc, node_pb2
from tests.integration.live import Cli
from tests.integration.synthetic import controller_config, wait_until

NET = "127.0.44"

JOB = """
name: whoami
groups:
  - name: app
    count: 1
    tasks:
      - name: main
        driver: process
        command: /bin/sh
        args: ["-c", "echo uid=$(id -u); exec sleep 600"]
        resources: {cpu_millicores: 50, memory_mb: 32}
"""


@contextlib.asynccontextmanager
async def bootstrapped(tmp: Path, **kw: object) -> AsyncIterator[tuple[Controller, Cli]]:
    ctl = Controller(controller_config(tmp / "ctl", bind=f"{NET}.1:0", rpc_addr=f"{NET}.1:0",
                                       metrics_addr="", bootstrap=True, **kw))
    await ctl.start()
    operator = tmp / "ctl" / "pki" / "operator"
    try:
        await wait_until(lambda: (operator / "management.token").exists(), within=10)
        yield ctl, Cli(ctl.rpc_address, tmp, env={"ORCH_CONFIG": str(operator / "orchctl.toml")})
    finally:
        await ctl.stop(grace=0.5)


def agent_config(tmp: Path, ctl: Controller, token: str, i: int = 1, **kw: object) -> AgentConfig:
    assert ctl.gossip is not None
    host = f"{NET}.{i + 1}"
    return AgentConfig(name=f"agent-{i}", bind=f"{host}:0", rpc_addr=f"{host}:0",
                       join=[f"{ctl.gossip.addr[0]}:{ctl.gossip.addr[1]}"], lb_bind=host,
                       data_dir=str(tmp / f"agent-{i}"), metrics_addr="", drivers=["process"],
                       gossip=GossipConfig.fast(), join_token=token,
                       controllers=[ctl.rpc_address], **kw)  # type: ignore[arg-type]


async def test_bootstrap_join_and_tasks_that_do_not_run_as_root(tmp_path: Path) -> None:
    async with bootstrapped(tmp_path) as (ctl, cli):
        # the operator's credentials work; nothing works without them
        assert ctl.trust is not None
        token = (await cli("cluster", "join-token", "agent", "-q")).strip()
        parsed = pki.JoinToken.parse(token)
        assert parsed.ca_digest == ctl.trust.authority.digest
        assert "an access token is needed" in await Cli(ctl.rpc_address, tmp_path, env={
            "ORCH_CONFIG": str(tmp_path / "none.toml"),
            "ORCH_TLS_CA": str(tmp_path / "ctl/pki/operator/ca.pem"),
            "ORCH_TLS_CERT": str(tmp_path / "ctl/pki/operator/cli.pem"),
            "ORCH_TLS_KEY": str(tmp_path / "ctl/pki/operator/cli-key.pem")})("job", "status",
                                                                              code=1)
        agent = Agent(agent_config(tmp_path, ctl, token))
        await agent.start()
        try:
            await wait_until(lambda: ctl.cluster.connected(agent.node_id), within=15)
            cert = pki.load_cert((tmp_path / "agent-1/pki/cert.pem").read_bytes())
            who = pki.identity_of(cert)
            assert who.roles == {"agent"}
            assert who.node_id == agent.node_id
            assert oct((tmp_path / "agent-1/pki/key.pem").stat().st_mode & 0o777) == "0o600"
            assert (tmp_path / "agent-1/keyring.json").exists()  # the gossip key came along

            job = tmp_path / "whoami.yaml"
            job.write_text(JOB)
            await cli("job", "run", str(job), "--detach")
            await wait_until(lambda: any(
                a.client_status == node_pb2.CLIENT_STATUS_RUNNING
                for a in ctl.cluster.state.allocs_of_job(("default", "whoami"))), within=20)
            alloc = ctl.cluster.state.allocs_of_job(("default", "whoami"))[0]
            logs = await cli("alloc", "logs", alloc.id)
            if os.geteuid() == 0:
                uid = pwd.getpwnam("orch-task" if _has_user("orch-task") else "nobody").pw_uid
                assert f"uid={uid}" in logs
            local = next((tmp_path / "agent-1/alloc").glob("*/main/local"))
            assert oct(local.stat().st_mode & 0o777) == "0o700"
            spec = local.parent / "spec.json"
            assert oct(spec.stat().st_mode & 0o777) == "0o600"
        finally:
            await agent.stop(stop_tasks=True)


async def test_a_task_that_asks_for_root_fails_unless_the_node_allows_it(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run tasks as another user")
    async with bootstrapped(tmp_path) as (ctl, cli):
        token = (await cli("cluster", "join-token", "agent", "-q")).strip()
        agent = Agent(agent_config(tmp_path, ctl, token))
        await agent.start()
        try:
            await wait_until(lambda: ctl.cluster.connected(agent.node_id), within=15)
            job = tmp_path / "root.yaml"
            job.write_text(JOB.replace("name: whoami", "name: asroot").replace(
                "driver: process", "driver: process\n        user: root"))
            await cli("job", "run", str(job), "--detach")
            await wait_until(lambda: any(
                a.client_status == node_pb2.CLIENT_STATUS_FAILED
                for a in ctl.cluster.state.allocs_of_job(("default", "asroot"))), within=20)
            alloc = ctl.cluster.state.allocs_of_job(("default", "asroot"))[0]
            text = await cli("alloc", "status", alloc.id)
            assert "would run as root" in text
        finally:
            await agent.stop(stop_tasks=True)


async def test_bad_join_tokens_are_refused_clearly_and_change_nothing(tmp_path: Path) -> None:
    async with bootstrapped(tmp_path) as (ctl, cli):
        good = pki.JoinToken.parse((await cli("cluster", "join-token", "agent", "-q")).strip())
        bundle = pki.Bundle.of(tmp_path / "x")
        with pytest.raises(ConfigError, match="not an orch join token"):
            pki.JoinToken.parse("SWMTKN-1-abc-def")
        with pytest.raises(ConfigError, match="damaged"):
            pki.JoinToken.parse(str(good)[:-3] + "!!!")
        index = ctl.cluster.state.index
        # another cluster's secret: the TLS handshake itself fails (the controller cannot
        # answer as that secret's holder), so nothing reaches it
        other = pki.JoinToken("agent", good.ca_digest, pki.new_secret())
        with pytest.raises(ConfigError, match="does not know this token's secret"):
            await join.join(other, [ctl.rpc_address], bundle, data_dir=str(tmp_path / "x"),
                            name="intruder", node_id="intruder")
        # the right secret with another CA: refused by the controller
        wrong_ca = pki.JoinToken("agent", "0" * 64, good.secret)
        with pytest.raises(ConfigError, match="not current"):
            await join.join(wrong_ca, [ctl.rpc_address], bundle, data_dir=str(tmp_path / "x"),
                            name="intruder", node_id="intruder")
        # a rotated token stops working at once
        rotated = (await cli("cluster", "join-token", "agent", "--rotate", "-q")).strip()
        assert rotated != str(good)
        await wait_until(lambda: ctl.cluster.state.index > index, within=5)
        index = ctl.cluster.state.index
        with pytest.raises(ConfigError, match="does not know this token's secret"):
            await join.join(good, [ctl.rpc_address], bundle, data_dir=str(tmp_path / "x"),
                            name="late", node_id="late")
        assert ctl.cluster.state.index == index
        assert not bundle.cert.exists()
        # an agent's token does not make a controller
        ctl_token = pki.JoinToken.parse(rotated)
        assert ctl_token.role == "agent"
        # a request naming a node that joined already, with another key: refused
        fresh = pki.JoinToken.parse(rotated)
        await join.join(fresh, [ctl.rpc_address], pki.Bundle.of(tmp_path / "a"),
                        data_dir=str(tmp_path / "a"), name="a", node_id="node-a")
        index = ctl.cluster.state.index
        with pytest.raises(ConfigError, match="a member already, with another key"):
            await join.join(fresh, [ctl.rpc_address], pki.Bundle.of(tmp_path / "b"),
                            data_dir=str(tmp_path / "b"), name="b", node_id="node-a")
        assert ctl.cluster.state.index == index


async def test_a_removed_node_loses_its_stream_and_cannot_come_back(tmp_path: Path) -> None:
    async with bootstrapped(tmp_path) as (ctl, cli):
        token = (await cli("cluster", "join-token", "agent", "-q")).strip()
        agent = Agent(agent_config(tmp_path, ctl, token))
        await agent.start()
        try:
            await wait_until(lambda: ctl.cluster.connected(agent.node_id), within=15)
            out = await cli("node", "rm", agent.node_id, "--keep-gossip-key")
            assert "removed" in out
            await wait_until(lambda: not ctl.cluster.connected(agent.node_id), within=5)
            await asyncio.sleep(3.0)  # the agent keeps trying to reconnect: refused each time
            assert not ctl.cluster.connected(agent.node_id)
            assert ctl.cluster.state.nodes[agent.node_id].status == node_pb2.NODE_STATUS_DOWN
            assert ctl.authz.denied["certificate", "Connect"] >= 1
            # and its certificate opens nothing else either
            tls = TlsConfig.of_bundle(pki.Bundle.of(tmp_path / "agent-1"))
            async with open_channel(ctl.rpc_address, tls, server="controller.orch") as ch:
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await controller_pb2_grpc.NodeServiceStub(ch).Renew(
                        controller_pb2.RenewRequest(), timeout=5)
                assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        finally:
            await agent.stop(stop_tasks=True)


async def test_certificates_are_renewed_without_a_restart_or_a_lost_stream(tmp_path: Path) -> None:
    days = 24.0 / 86400  # a 24 s life: renewed once a third is left (about 16 s in)
    async with bootstrapped(tmp_path, cert_days=days) as (ctl, cli):
        token = (await cli("cluster", "join-token", "agent", "-q")).strip()
        agent = Agent(agent_config(tmp_path, ctl, token, cert_days=days))
        await agent.start()
        try:
            await wait_until(lambda: ctl.cluster.connected(agent.node_id), within=15)
            path = tmp_path / "agent-1/pki/cert.pem"
            first = pki.load_cert(path.read_bytes()).serial_number
            dropped = 0
            for _ in range(300):  # up to 30 s, watching the stream every 0.1 s
                await asyncio.sleep(0.1)
                dropped += not ctl.cluster.connected(agent.node_id)
                if pki.load_cert(path.read_bytes()).serial_number != first:
                    break
            assert pki.load_cert(path.read_bytes()).serial_number != first, "not renewed"
            assert dropped == 0
            assert agent.link.connected
            # the controller renewed its own too, and new connections use it
            own = pki.load_cert((tmp_path / "ctl/pki/cert.pem").read_bytes())
            assert own.not_valid_after_utc > pki.load_cert(path.read_bytes()).not_valid_before_utc
            assert "Leader" in await cli("leader")
        finally:
            await agent.stop(stop_tasks=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
