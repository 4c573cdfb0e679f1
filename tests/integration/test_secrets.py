"""Secrets on a live controller: put, get, list, rm through orchctl; sealed in the store;
sent to the agents whose allocations read them (and to no other); never shown in a job,
an allocation, an event, the store or the logs; guarded by the secret capabilities; and the
cluster's key reaches a controller that joins."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest

from orch import join, pki
from orch.v1 import controller_pb2, job_pb2
from tests.integration.live import Cli
from tests.integration.synthetic import cluster, service_job, wait_until
from tests.integration.test_trust import bootstrapped

Q = controller_pb2
VALUE = b"s3cr3t-\xe2\x9c\x93-value"
NEW = b"rotated-value-2"


def _job() -> job_pb2.Job:
    job = service_job("web", count=1)
    task = job.groups[0].tasks[0]
    task.secrets.add(name="db", env="DB_PASSWORD")
    task.templates.add(destination="secrets/app.conf", data='key={{ secret("api") }}\n')
    return job


async def test_secrets_from_orchctl_to_the_agents_that_need_them(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with cluster(tmp_path, agents=2) as c:
        cli = Cli(c.ctl.rpc_address, tmp_path)
        src = tmp_path / "value"
        src.write_bytes(VALUE)
        text = await cli("secret", "put", "db", "-f", str(src))
        assert "version 1" in text
        assert await cli("secret", "put", "db", "inline-value", code=2)
        assert (await cli("secret", "get", "db")).encode() == VALUE
        listed = await cli("secret", "list")
        assert "db" in listed
        assert VALUE.decode() not in listed
        # a job that reads a secret nobody put: refused, nothing stored
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await c.api.RegisterJob(Q.RegisterJobRequest(job=_job()))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert "'api'" in (e.value.details() or "")
        assert ("default", "web") not in c.ctl.cluster.state.jobs
        src.write_bytes(b"api-key")
        await cli("secret", "put", "api", "-f", str(src))
        await c.api.RegisterJob(Q.RegisterJobRequest(job=_job()))
        await wait_until(lambda: any(a.running for a in c.agents.values()))
        holder = next(a for a in c.agents.values() if a.running)
        other = next(a for a in c.agents.values() if a is not holder)
        assert holder.secrets == {("default", "db"): (1, VALUE),
                                  ("default", "api"): (1, b"api-key")}
        assert other.secrets == {}
        # a new version reaches the agent that runs its reader, and no other
        src.write_bytes(NEW)
        await cli("secret", "put", "db", "-f", str(src), "--cas", "1")
        await wait_until(lambda: holder.secrets.get(("default", "db")) == (2, NEW))
        assert other.secrets == {}
        assert "2" in await cli("secret", "put", "db", "-f", str(src), "--cas", "1", code=1)
        assert (await cli("secret", "get", "db", "--version", "1")).encode() == VALUE
        info = await cli.json("secret", "list")
        assert info[0]["used_by"] == ["web"] or info[1]["used_by"] == ["web"]
        # never in a job, an allocation, an event, the store or the logs
        shown = [await c.api.GetJob(Q.GetJobRequest(name="web")),
                 await c.api.JobHistory(Q.JobHistoryRequest(name="web")),
                 await c.api.ListAllocations(Q.ListAllocationsRequest())]
        events = c.api.Watch(Q.WatchRequest(tail=1000))
        shown += [ev async for ev in events]
        for msg in shown:
            blob = msg.SerializeToString()
            assert VALUE not in blob
            assert NEW not in blob
        store = b"".join(p.read_bytes() for p in (tmp_path / "ctl").rglob("*")
                         if p.is_file() and p.name != "secrets.key")
        assert VALUE not in store
        assert NEW not in store
        assert VALUE.decode() not in caplog.text
        assert NEW.decode() not in caplog.text
        # a secret a running job reads stays; once the job is gone it can be removed
        assert "used by" in await cli("secret", "rm", "db", code=1)
        await c.api.StopJob(Q.StopJobRequest(name="web", purge=True))
        await cli("secret", "rm", "db")
        await cli("secret", "get", "db", code=1)


async def test_secret_capabilities(tmp_path: Path) -> None:
    async with cluster(tmp_path, agents=1, acl=True) as c:
        boot = await c.api.BootstrapAcl(Q.BootstrapAclRequest())
        admin = (("authorization", f"Bearer {boot.secret}"),)
        await c.api.PutSecret(Q.PutSecretRequest(name="db", value=VALUE), metadata=admin)
        await c.api.PutSecret(Q.PutSecretRequest(name="api", value=b"k"), metadata=admin)

        async def token(policy: str) -> tuple[tuple[str, str], ...]:
            t = await c.api.CreateToken(Q.CreateTokenRequest(name=policy, policies=[policy]),
                                        metadata=admin)
            return (("authorization", f"Bearer {t.secret}"),)
        submit = await token("namespace:default:read,submit,driver-process")
        reader = await token("namespace:default:secret-read")
        writer = await token("namespace:default:secret-write")
        # who may not read a secret may not run a job that reads one, nor read it
        for refused in (c.api.RegisterJob(Q.RegisterJobRequest(job=_job()), metadata=submit),
                        c.api.GetSecret(Q.GetSecretRequest(name="db"), metadata=submit),
                        c.api.GetSecret(Q.GetSecretRequest(name="db"), metadata=writer),
                        c.api.PutSecret(Q.PutSecretRequest(name="db", value=b"x"),
                                        metadata=reader)):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await refused
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert ("default", "web") not in c.ctl.cluster.state.jobs
        listed = await c.api.ListSecrets(Q.ListSecretsRequest(), metadata=submit)
        assert sorted(s.name for s in listed.secrets) == ["api", "db"]
        assert (await c.api.GetSecret(Q.GetSecretRequest(name="db"), metadata=reader)).value \
            == VALUE
        await c.api.PutSecret(Q.PutSecretRequest(name="db", value=NEW), metadata=writer)
        both = await token("namespace:default:read,submit,driver-process,secret-read")
        await c.api.RegisterJob(Q.RegisterJobRequest(job=_job()), metadata=both)


async def test_a_joining_controller_receives_the_clusters_secrets_key(tmp_path: Path) -> None:
    async with bootstrapped(tmp_path) as (ctl, cli):
        own = (tmp_path / "ctl" / "pki" / "secrets.key").read_bytes()
        assert (tmp_path / "ctl" / "pki" / "secrets.key").stat().st_mode & 0o777 == 0o600
        text = (await cli("cluster", "join-token", "controller", "-q")).strip()
        bundle = pki.Bundle.of(tmp_path / "joiner")
        await join.join(pki.JoinToken.parse(text), [ctl.rpc_address], bundle,
                        data_dir=str(tmp_path / "joiner"), name="ctl-2", ips=["127.0.0.1"])
        assert bundle.secrets_key.read_bytes() == own
        # an agent's join carries no key
        text = (await cli("cluster", "join-token", "agent", "-q")).strip()
        agent = pki.Bundle.of(tmp_path / "agent")
        await join.join(pki.JoinToken.parse(text), [ctl.rpc_address], agent,
                        data_dir=str(tmp_path / "agent"), name="agent-9", node_id="n-9")
        assert not agent.secrets_key.exists()
        assert not agent.ca_key.exists()
