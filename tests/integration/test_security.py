"""mTLS on every gRPC connection: who may call what, and what is refused."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path

import grpc
import pytest

from orch import tls
from orch.gossip.config import GossipConfig
from orch.gossip.crypto import Keyring, new_key
from orch.gossip.transport import GossipNode
from orch.jobspec import load_job_file
from orch.pki import create_ca, create_cert
from orch.v1 import controller_pb2, controller_pb2_grpc
from tests.integration.live import live_cluster, make_pki, pki, settled
from tests.integration.synthetic import wait_until

EXAMPLE = Path(__file__).parents[2] / "deploy" / "examples" / "hello.yaml"


async def status_as(addr: str, cfg: tls.TlsConfig | None,
                    token: str = "") -> controller_pb2.ListJobsResponse:
    meta = (("authorization", f"Bearer {token}"),) if token else ()
    async with tls.open_channel(addr, cfg) as ch:
        stub = controller_pb2_grpc.ControllerServiceStub(ch)
        return await stub.ListJobs(controller_pb2.ListJobsRequest(), timeout=5, metadata=meta)


async def test_mtls_admits_the_right_roles_and_refuses_the_rest(tmp_path: Path) -> None:
    d = make_pki(tmp_path / "pki", agents=1)
    other = tmp_path / "other-ca"
    create_ca(other)
    create_cert(other, other, role="cli", name="cli")
    async with live_cluster(tmp_path, agents=1, tls_dir=d) as (ctl, agents):
        addr = ctl.rpc_address
        # the agent registered over mTLS with its agent certificate
        assert ctl.cluster.connected(agents[0].node_id)
        await ctl.jobs.register(load_job_file(str(EXAMPLE)))
        await wait_until(lambda: sum(a.healthy for a in ctl.cluster.state.allocs.values()) == 3,
                         within=30)
        await wait_until(lambda: settled(ctl, "hello"), within=30)  # judged in batches
        _, root, made = ctl.acl.bootstrap()  # with TLS every operator call needs a token
        await ctl.cluster.write(made)
        before = ctl.cluster.state.index
        # a person with a cli certificate from this CA
        assert [j.name for j in (await status_as(addr, pki(d, "cli"), root)).jobs] == ["hello"]
        # no certificate at all, a certificate from another CA: the handshake fails
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await status_as(addr, None)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await status_as(addr, pki(other, "cli"))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        # an agent's certificate cannot drive the operator API
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await status_as(addr, pki(d, "agent-1"), root)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "role cli or controller" in (e.value.details() or "")
        # a person's certificate cannot pose as an agent
        async with tls.open_channel(addr, pki(d, "cli")) as ch:
            stream = controller_pb2_grpc.NodeServiceStub(ch).Connect()
            # the gate may end the call before the registration is sent: the status it
            # ended with is what counts, not the failed write
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                await stream.write(controller_pb2.NodeMessage(register=agents[0].registration()))
            assert await stream.code() == grpc.StatusCode.PERMISSION_DENIED
        # logs still flow: orchctl -> controller -> agent, each hop with its own certificate
        alloc = next(iter(ctl.cluster.state.allocs.values()))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "orchctl.main", "--address", addr,
            "--tls-ca", str(d / "ca.pem"), "--tls-cert", str(d / "cli.pem"),
            "--tls-key", str(d / "cli-key.pem"), "alloc", "status", alloc.id[:8],
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "ORCH_TOKEN": root})
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert alloc.id in out.decode()
        # and nothing the refused callers tried changed anything
        assert ctl.cluster.state.index == before


async def test_refused_callers_change_nothing(tmp_path: Path) -> None:
    """mTLS, tokens and gossip encryption all on: an anonymous client, a revoked token, a
    certificate from another CA and a gossip peer with the wrong key are all turned away,
    and the cluster's state and membership stay as they were."""
    d = make_pki(tmp_path / "pki", agents=2)
    other = tmp_path / "other-ca"
    create_ca(other)
    create_cert(other, other, role="cli", name="cli")
    key = new_key()
    async with live_cluster(tmp_path, agents=2, tls_dir=d, keys=[key], acl=True) as (ctl, _):
        addr, cli = ctl.rpc_address, pki(d, "cli")
        async with tls.open_channel(addr, cli) as ch:
            stub = controller_pb2_grpc.ControllerServiceStub(ch)
            root = (await stub.BootstrapAcl(controller_pb2.BootstrapAclRequest())).secret
            admin = (("authorization", f"Bearer {root}"),)
            made = await stub.CreateToken(controller_pb2.CreateTokenRequest(
                name="ci", policies=["submit"]), metadata=admin)
            await stub.RevokeToken(controller_pb2.RevokeTokenRequest(
                accessor=made.token.accessor), metadata=admin)
            job = load_job_file(str(EXAMPLE))
            await stub.RegisterJob(controller_pb2.RegisterJobRequest(job=job), metadata=admin)
        await wait_until(lambda: sum(a.healthy for a in ctl.cluster.state.allocs.values()) == 3,
                         within=30)
        await wait_until(lambda: settled(ctl, "hello"), within=30)  # judged in batches
        assert ctl.gossip is not None
        members = {(m.name, str(m.status)) for m in ctl.gossip.members()}
        before = ctl.cluster.state.index
        stop = controller_pb2.StopJobRequest(name="hello")

        async def attempt(cfg: tls.TlsConfig | None, token: str) -> grpc.StatusCode:
            meta = (("authorization", f"Bearer {token}"),) if token else ()
            async with tls.open_channel(addr, cfg) as ch:
                stub = controller_pb2_grpc.ControllerServiceStub(ch)
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await stub.StopJob(stop, timeout=5, metadata=meta)
            return e.value.code()

        assert await attempt(cli, "") == grpc.StatusCode.UNAUTHENTICATED
        assert await attempt(cli, made.secret) == grpc.StatusCode.UNAUTHENTICATED
        assert await attempt(cli, "not-a-token") == grpc.StatusCode.UNAUTHENTICATED
        assert await attempt(pki(other, "cli"), root) == grpc.StatusCode.UNAVAILABLE
        assert await attempt(None, root) == grpc.StatusCode.UNAVAILABLE
        assert await attempt(pki(d, "agent-1"), root) == grpc.StatusCode.PERMISSION_DENIED

        intruder = GossipNode(GossipConfig.fast(), name="intruder", bind=("127.0.0.9", 0),
                              keyring=Keyring([new_key()]),
                              state={"role": "controller", "rpc": "127.0.0.9:1"})
        await intruder.start()
        try:
            intruder.join([ctl.gossip.addr])
            await wait_until(lambda: ctl.gossip is not None and
                             ctl.gossip.wire.dropped.get("decrypt", 0) >= 1, within=10)
            await asyncio.sleep(1.0)
        finally:
            await intruder.stop()
        assert {(m.name, str(m.status)) for m in ctl.gossip.members()} == members
        assert ctl.cluster.state.index == before
        assert ctl.cluster.state.job(("default", "hello")) is not None
        assert sum(a.healthy for a in ctl.cluster.state.allocs.values()) == 3
