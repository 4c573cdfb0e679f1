"""Access tokens on a live cluster, driven with orchctl: bootstrap, policies, revocation,
denials logged with who and what; the per-client rate limit."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest

from orch import tls
from orch.v1 import controller_pb2, controller_pb2_grpc
from tests.integration.live import Cli, live_cluster, settled
from tests.integration.synthetic import wait_until


def _secret(text: str) -> str:
    return next(line.split()[-1] for line in text.splitlines() if line.startswith("Secret"))


async def test_tokens_and_policies(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="api.authz")
    async with live_cluster(tmp_path, agents=1, acl=True) as (ctl, agents):
        anon = Cli(ctl.rpc_address, tmp_path)
        # without a token nothing but the leader and the bootstrap is open
        text = await anon("job", "status", code=1)
        assert "an access token is needed" in text
        assert "Leader" in await anon("leader")
        root = _secret(await anon("acl", "bootstrap"))
        assert "already bootstrapped" in await anon("acl", "bootstrap", code=1)
        admin = Cli(ctl.rpc_address, tmp_path, env={"ORCH_TOKEN": root})
        assert "bootstrap" in await admin("acl", "token", "self")

        tokens = {}
        for name, policy in (("viewer", "read"), ("web-team", "submit:prefix=web-"),
                             ("ops", "node"), ("staging", "submit:ns=staging")):
            out = await admin("acl", "token", "create", "--name", name, "--policy", policy)
            tokens[name] = Cli(ctl.rpc_address, tmp_path, env={"ORCH_TOKEN": _secret(out)})
        assert "unknown policy 'root'" in await admin(
            "acl", "token", "create", "--name", "x", "--policy", "root", code=1)
        listed = await admin.json("acl", "token", "list")
        assert [t["name"] for t in listed] == ["bootstrap", "viewer", "web-team", "ops", "staging"]
        assert all("secret" not in t for t in listed)

        # submit:prefix=web- may run web-* jobs and nothing else
        await tokens["web-team"]("job", "run", "--detach", anon.job_file("web-a", count=1))
        text = await tokens["web-team"]("job", "run", anon.job_file("api", count=1), code=1)
        assert "permission denied" in text
        assert "may not call RegisterJob job default/api" in text
        # read may look but not touch
        assert "web-a" in await tokens["viewer"]("job", "status")
        assert "permission denied" in await tokens["viewer"]("job", "stop", "web-a", code=1)
        node = agents[0].node_id
        assert "permission denied" in await tokens["viewer"](
            "node", "eligibility", node, "--disable", code=1)
        assert "permission denied" in await tokens["viewer"](
            "acl", "token", "list", code=1)
        # node may drain and set eligibility, not run jobs
        await tokens["ops"]("node", "eligibility", node, "--disable")
        await tokens["ops"]("node", "eligibility", node, "--enable")
        assert "permission denied" in await tokens["ops"](
            "job", "run", anon.job_file("web-b", count=1), code=1)
        # the namespace policy holds its namespace only
        assert "may not call StopJob job default/web-a" in await tokens["staging"](
            "job", "stop", "web-a", code=1)

        # revoked: refused at once, everywhere
        accessor = next(t["accessor"] for t in listed if t["name"] == "web-team")
        await admin("acl", "token", "revoke", accessor[:8])
        await wait_until(lambda: settled(ctl, "web-a"), within=30)
        before = ctl.cluster.state.index
        text = await tokens["web-team"]("job", "stop", "web-a", code=1)
        assert "unknown or revoked" in text
        assert ctl.cluster.state.index == before
        assert ctl.cluster.state.job(("default", "web-a")) is not None

    denials = [r for r in caplog.records if r.getMessage().startswith("denied")]
    assert {(getattr(r, "token", ""), getattr(r, "method", "")) for r in denials} >= {
        ("anonymous", "ListJobs"), ("web-team", "RegisterJob"), ("viewer", "StopJob"),
        ("viewer", "ListTokens"), ("ops", "RegisterJob"), ("staging", "StopJob")}
    assert any(getattr(r, "target", "") == "default/api" for r in denials)


async def test_denials_are_counted_in_metrics(tmp_path: Path) -> None:
    async with live_cluster(tmp_path, agents=0, acl=True) as (ctl, _):
        cli = Cli(ctl.rpc_address, tmp_path)
        await cli("node", "list", code=1)
        assert ctl.authz.denied["unauthenticated", "ListNodes"] == 1


async def _list_jobs(stub: controller_pb2_grpc.ControllerServiceAsyncStub, token: str) -> str:
    try:
        await stub.ListJobs(controller_pb2.ListJobsRequest(), timeout=5,
                            metadata=(("authorization", f"Bearer {token}"),) if token else ())
        return "ok"
    except grpc.aio.AioRpcError as e:
        limited = e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and \
            "at most 5/s" in (e.details() or "")
        return "limited" if limited else f"{e.code()}: {e.details()}"


async def test_rate_limit_per_client(tmp_path: Path) -> None:
    async with live_cluster(tmp_path, agents=0, acl=True, rate_limit=5.0,
                            rate_burst=5.0) as (ctl, _):
        async with tls.open_channel(ctl.rpc_address, None) as ch:
            stub = controller_pb2_grpc.ControllerServiceStub(ch)
            boot = await stub.BootstrapAcl(controller_pb2.BootstrapAclRequest())
            made = await stub.CreateToken(controller_pb2.CreateTokenRequest(
                name="other", policies=["read"]), metadata=(
                ("authorization", f"Bearer {boot.secret}"),))
            first = [await _list_jobs(stub, boot.secret) for _ in range(12)]
            # a burst of 5 (two spent above), then about 5 a second
            assert first.count("limited") >= 5
            # another token has a bucket of its own
            assert await _list_jobs(stub, made.secret) == "ok"
        assert ctl.authz.denied["rate", "ListJobs"] >= 5


async def test_oversized_and_invalid_requests_are_refused_clearly(tmp_path: Path) -> None:
    big = [("grpc.max_send_message_length", 64 << 20)]
    async with live_cluster(tmp_path, agents=0) as (ctl, _), \
            tls.open_channel(ctl.rpc_address, None, big) as ch:
        stub = controller_pb2_grpc.ControllerServiceStub(ch)
        job = controller_pb2.RegisterJobRequest()
        job.job.name = "big"
        job.job.meta["blob"] = "x" * (17 << 20)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.RegisterJob(job, timeout=10)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        job = controller_pb2.RegisterJobRequest()
        job.job.name = "huge"
        g = job.job.groups.add(name="web", count=1_000_000)
        g.tasks.add(name="t", driver="process", command="/bin/true")
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.RegisterJob(job, timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "groups[0].count: must be <= 10,000" in (e.value.details() or "")
        # and the controller is fine
        assert (await stub.ListJobs(controller_pb2.ListJobsRequest(), timeout=5)).jobs == []
