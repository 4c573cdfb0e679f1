"""Namespaces and quotas on a live controller (synthetic agents speaking the real node
protocol), through the API and through orchctl as a subprocess."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from orch.v1 import controller_pb2
from tests.integration.live import JOB, Cli
from tests.integration.synthetic import cluster, service_job, wait_until

Q = controller_pb2


async def _unplaced(api: object, name: str, namespace: str) -> str:
    st = await api.GetJob(Q.GetJobRequest(name=name, namespace=namespace))  # type: ignore[attr-defined]
    return " ".join(g.unplaced_reason for g in st.groups)


async def test_quota_bounds_placements_names_itself_and_frees_when_raised(tmp_path: Path) -> None:
    async with cluster(tmp_path, agents=2) as c:
        api = c.api
        # a job in a namespace nobody made: refused, nothing stored
        job = service_job("web", count=3, memory=64)
        job.namespace = "team"
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await api.RegisterJob(Q.RegisterJobRequest(job=job))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert "orchctl namespace apply team" in (e.value.details() or "")
        assert ("team", "web") not in c.ctl.cluster.state.jobs
        with pytest.raises(grpc.aio.AioRpcError):
            await api.PlanJob(Q.PlanJobRequest(job=job))

        ns = await api.ApplyNamespace(Q.ApplyNamespaceRequest(name="team", description="a team",
                                                              memory_mb=128))
        assert ns.quota.memory_mb == 128
        assert ns.description == "a team"
        # the plan already says what the quota allows
        plan = await api.PlanJob(Q.PlanJobRequest(job=job))
        assert "quota of namespace 'team' exhausted" in plan.plan.failures[0].explanation
        resp = await api.RegisterJob(Q.RegisterJobRequest(job=job))
        assert [(f.wanted, f.placed) for f in resp.plan.failures] == [(3, 2)]
        await wait_until(lambda: len(_live(c, "team", "web")) == 2)
        assert "memory 128 of 128 MB in use" in await _unplaced(api, "web", "team")
        listed = {n.name: n for n in (await api.ListNamespaces(Q.ListNamespacesRequest()))
                  .namespaces}
        assert set(listed) == {"default", "team"}
        assert (listed["team"].used.memory_mb, listed["team"].used.allocations) == (128, 2)
        assert listed["team"].jobs == 1
        # the same job in another namespace is another job, unbounded there
        other = service_job("web", count=3, memory=64)
        await api.RegisterJob(Q.RegisterJobRequest(job=other))
        await wait_until(lambda: len(_live(c, "default", "web")) == 3)

        # raising the quota (the description stays) places the rest without a new version
        ns = await api.ApplyNamespace(Q.ApplyNamespaceRequest(name="team", memory_mb=256))
        assert ns.description == "a team"
        await wait_until(lambda: len(_live(c, "team", "web")) == 3)
        assert c.ctl.cluster.state.job(("team", "web")).version == 1  # type: ignore[union-attr]

        # a namespace with jobs stays; once they are purged it can go
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await api.DeleteNamespace(Q.DeleteNamespaceRequest(name="team"))
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "web" in (e.value.details() or "")
        await api.StopJob(Q.StopJobRequest(name="web", namespace="team", purge=True))
        await api.DeleteNamespace(Q.DeleteNamespaceRequest(name="team"))
        names = [n.name for n in (await api.ListNamespaces(Q.ListNamespacesRequest())).namespaces]
        assert names == ["default"]
        for bad, code in ((Q.DeleteNamespaceRequest(name="default"),
                           grpc.StatusCode.FAILED_PRECONDITION),
                          (Q.DeleteNamespaceRequest(name="nope"), grpc.StatusCode.NOT_FOUND)):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await api.DeleteNamespace(bad)
            assert e.value.code() == code
        for bad_apply in (Q.ApplyNamespaceRequest(name="Bad Name"),
                          Q.ApplyNamespaceRequest(name="ok", memory_mb=-1),
                          Q.ApplyNamespaceRequest(name="ok", description="x" * 2000)):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await api.ApplyNamespace(bad_apply)
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "namespace/ok" not in c.ctl.cluster.state.meta


def _live(c: object, namespace: str, job: str) -> list[object]:
    state = c.ctl.cluster.state  # type: ignore[attr-defined]
    return [a for a in state.allocs_of_job((namespace, job))
            if a.desired_status == 1 and a.client_status == 2]


async def test_orchctl_acts_in_the_namespace_it_is_given(tmp_path: Path) -> None:
    async with cluster(tmp_path, agents=1) as c:
        cli = Cli(c.ctl.rpc_address, tmp_path)
        await cli("namespace", "apply", "team", "--description", "the team", "--allocations", "1")
        table = await cli("namespace", "list")
        assert "team" in table
        assert "0/1" in table
        # -n, or ORCH_NAMESPACE, puts the job file's job there
        await cli("-n", "team", "job", "run", "--detach", cli.job_file("api", count=1))
        assert ("team", "api") in c.ctl.cluster.state.jobs
        env = Cli(c.ctl.rpc_address, tmp_path, env={"ORCH_NAMESPACE": "team"})
        assert "api" in await env("job", "status")
        assert "api" not in await cli("job", "status")  # the default namespace has none
        every = await cli("job", "status", "-A")
        assert "Namespace" in every
        assert "team" in every
        st = await env.json("job", "status", "api")
        assert st["job"]["namespace"] == "team"
        # past the quota: exit 3, and the reason names it
        text = await env("job", "run", "--detach", cli.job_file("more", count=1), code=3)
        assert "quota of namespace 'team'" in text
        # a file that names another namespace than the command: refused before any call
        named = tmp_path / "named.yaml"
        named.write_text(JOB.format(name="x", count=1, memory=32)
                         .replace("name: x", "name: x\nnamespace: other", 1))
        text = await env("job", "run", str(named), code=2)
        assert "namespace 'other'" in text
        assert "rm" in await cli("namespace", "--help")
        text = await cli("namespace", "rm", "team", code=1)
        assert "purge" in text
        await env("job", "stop", "--purge", "api")
        await env("job", "stop", "--purge", "more")
        await cli("namespace", "rm", "team")
        assert "team" not in await cli("namespace", "list")


async def test_a_namespace_token_lists_its_namespace_only(tmp_path: Path) -> None:
    async with cluster(tmp_path, agents=1, acl=True) as c:
        boot = await c.api.BootstrapAcl(Q.BootstrapAclRequest())
        admin = (("authorization", f"Bearer {boot.secret}"),)
        await c.api.ApplyNamespace(Q.ApplyNamespaceRequest(name="team"), metadata=admin)
        made = await c.api.CreateToken(Q.CreateTokenRequest(
            name="team", policies=["namespace:team:read,submit,driver-process"]), metadata=admin)
        team = (("authorization", f"Bearer {made.secret}"),)
        job = service_job("api", count=1)
        job.namespace = "team"
        await c.api.RegisterJob(Q.RegisterJobRequest(job=job), metadata=team)
        listed = await c.api.ListJobs(Q.ListJobsRequest(namespace="team"), metadata=team)
        assert [j.name for j in listed.jobs] == ["api"]
        for refused in (c.api.ListJobs(Q.ListJobsRequest(), metadata=team),
                        c.api.ListNamespaces(Q.ListNamespacesRequest(), metadata=team),
                        c.api.ApplyNamespace(Q.ApplyNamespaceRequest(name="team", memory_mb=1),
                                             metadata=team)):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await refused
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        allocs = await c.api.ListAllocations(Q.ListAllocationsRequest(namespace="team"),
                                             metadata=team)
        assert {a.job for a in allocs.allocations} == {"api"}
