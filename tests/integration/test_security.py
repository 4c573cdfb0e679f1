"""mTLS on every gRPC connection: who may call what, and what is refused."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc
import pytest

from orch import tls
from orch.jobspec import load_job_file
from orch.v1 import controller_pb2, controller_pb2_grpc
from tests.integration.live import live_cluster, make_pki, pki
from tests.integration.synthetic import wait_until

EXAMPLE = Path(__file__).parents[2] / "deploy" / "examples" / "hello.yaml"


async def status_as(addr: str, cfg: tls.TlsConfig | None) -> controller_pb2.ListJobsResponse:
    async with tls.open_channel(addr, cfg) as ch:
        stub = controller_pb2_grpc.ControllerServiceStub(ch)
        return await stub.ListJobs(controller_pb2.ListJobsRequest(), timeout=5)


async def test_mtls_admits_the_right_roles_and_refuses_the_rest(tmp_path: Path) -> None:
    d = make_pki(tmp_path / "pki", agents=1)
    other = tmp_path / "other-ca"
    tls.create_ca(other)
    tls.create_cert(other, other, role="cli", name="cli")
    async with live_cluster(tmp_path, agents=1, tls_dir=d) as (ctl, agents):
        addr = ctl.rpc_address
        # the agent registered over mTLS with its agent certificate
        assert ctl.cluster.connected(agents[0].node_id)
        await ctl.jobs.register(load_job_file(str(EXAMPLE)))
        await wait_until(lambda: sum(a.healthy for a in ctl.cluster.state.allocs.values()) == 3,
                         within=30)
        before = ctl.cluster.state.index
        # a person with a cli certificate from this CA
        assert [j.name for j in (await status_as(addr, pki(d, "cli"))).jobs] == ["hello"]
        # no certificate at all, a certificate from another CA: the handshake fails
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await status_as(addr, None)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await status_as(addr, pki(other, "cli"))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        # an agent's certificate cannot drive the operator API
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await status_as(addr, pki(d, "agent-1"))
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "role cli or controller" in (e.value.details() or "")
        # a person's certificate cannot pose as an agent
        async with tls.open_channel(addr, pki(d, "cli")) as ch:
            stream = controller_pb2_grpc.NodeServiceStub(ch).Connect(iter([
                controller_pb2.NodeMessage(register=agents[0].registration())]))
            with pytest.raises(grpc.aio.AioRpcError) as e:
                async for _ in stream:
                    pass
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # logs still flow: orchctl -> controller -> agent, each hop with its own certificate
        alloc = next(iter(ctl.cluster.state.allocs.values()))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "orchctl.main", "--address", addr,
            "--tls-ca", str(d / "ca.pem"), "--tls-cert", str(d / "cli.pem"),
            "--tls-key", str(d / "cli-key.pem"), "alloc", "status", alloc.id[:8],
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert alloc.id in out.decode()
        # and nothing the refused callers tried changed anything
        assert ctl.cluster.state.index == before
