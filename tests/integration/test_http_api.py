"""The HTTP API on a live cluster (a controller and a real agent on 127.0.0.x): a job run,
watched and stopped over HTTP; logs that follow; events as server-sent events that resume
after Last-Event-ID; blocking queries that wake on a change and time out without one;
errors as statuses; the rate limit; the listener's headers; plain HTTP refused off
loopback; the token never needed in a URL."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509

from controller.http.api import MAX_STREAMS
from controller.server import Controller
from orch.errors import ConfigError
from tests.integration.live import JOB, live_cluster
from tests.integration.synthetic import controller_config, wait_until
from tests.integration.test_trust import bootstrapped

NET = "127.0.46"


def _deployment(ctl: Controller, name: str = "web") -> str:
    dep = ctl.cluster.state.latest_deployment(("default", name))
    return dep.status if dep is not None else ""


async def _json(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> Any:
    async with http.request(method, url, **kw) as r:
        assert r.status == 200, f"{method} {url}: {r.status} {await r.text()}"
        return await r.json()


async def test_a_job_run_followed_and_stopped_over_http(tmp_path: Path) -> None:
    async with live_cluster(tmp_path, 1, net=NET, http_addr=f"{NET}.1:0") as (ctl, _):
        assert ctl.http is not None
        base = ctl.http.url
        async with aiohttp.ClientSession() as http:
            # a job file (YAML) as the body, as orchctl job run reads it
            text = JOB.format(name="web", count=2, memory=32)
            plan = await _json(http, "POST", f"{base}/v1/jobs/plan", data=text,
                               headers={"Content-Type": "application/yaml"})
            assert [c["kind"] for c in plan["plan"]["changes"]] == ["create", "create"]
            reg = await _json(http, "POST", f"{base}/v1/jobs", data=text)
            assert reg["version"] == "1"
            assert reg["changed"] is True
            await wait_until(lambda: sum(a.healthy for a in ctl.cluster.state.allocs.values())
                             == 2, within=20)
            await wait_until(lambda: _deployment(ctl) == "successful", within=20)  # batched
            status = await _json(http, "GET", f"{base}/v1/job/web")
            assert status["latest_deployment"]["status"] == "successful"
            assert [g["running"] for g in status["groups"]] == [2]
            alloc = status["allocations"][0]["id"]

            usage = await _json(http, "GET", f"{base}/v1/allocation/{alloc[:8]}/usage")
            assert usage["alloc_id"] == alloc
            assert set(usage) >= {"reported", "cpu_cores", "memory_bytes", "active_connections"}

            # a list a page at a time
            async with http.get(f"{base}/v1/allocations?per_page=1") as r:
                first_page = (await r.json())["allocations"]
                token = r.headers["X-Orch-Next-Token"]
            async with http.get(f"{base}/v1/allocations?per_page=1&next_token={token}") as r:
                second_page = (await r.json())["allocations"]
                assert "X-Orch-Next-Token" not in r.headers
            assert len(first_page) == len(second_page) == 1
            assert first_page[0]["id"] != second_page[0]["id"]
            async with http.get(f"{base}/v1/job/web?per_page=1") as r:  # two lists: no paging
                assert r.status == 400

            # the task's log, followed: the line it printed, then the stream stays open
            async with http.get(f"{base}/v1/allocation/{alloc[:8]}/logs?follow=true") as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("text/plain")
                line = await asyncio.wait_for(r.content.readline(), 10)
                assert line.startswith(b"hello from ")
            async with http.get(f"{base}/v1/allocation/{alloc}/logs?stderr=true") as r:
                assert (await r.read()).startswith(b"oops")

            # events: one JSON object a line; and as server-sent events that resume
            async with http.get(f"{base}/v1/events?tail=50&topics=job") as r:
                lines = [json.loads(x) for x in (await r.text()).splitlines()]
            assert any(e["type"] == "JobRegistered" for e in lines)
            first = int(lines[0]["index"])
            async with http.get(f"{base}/v1/events/stream",
                                headers={"Last-Event-ID": str(first)}) as r:
                assert r.headers["Content-Type"] == "text/event-stream"
                head = await asyncio.wait_for(r.content.readline(), 10)
                assert head == f"id: {first + 1}\n".encode()

            # a command in the task: its output and exit code, one JSON object a line
            async with http.post(f"{base}/v1/allocation/{alloc[:8]}/exec", data=json.dumps(
                    {"command": ["/bin/sh", "-c", "echo in $ORCH_ALLOC_ID; exit 3"]})) as r:
                assert r.status == 200, await r.text()
                frames = [json.loads(x) for x in (await r.text()).splitlines()]
            out = b"".join(base64.b64decode(f["stdout"]) for f in frames if f.get("stdout"))
            assert out == f"in {alloc}\n".encode()
            assert frames[-1]["exit"]["code"] == 3
            async with http.post(f"{base}/v1/allocation/{alloc[:8]}/exec",
                                 data=json.dumps({"command": []})) as r:
                assert r.status == 400  # refused by the endpoint, before anything ran

            # a snapshot, saved and restored over HTTP
            async with http.get(f"{base}/v1/operator/snapshot") as r:
                assert r.headers["Content-Type"] == "application/octet-stream"
                snap = await r.read()
            assert snap.startswith(b"orch-snapshot")
            restored = await _json(http, "POST", f"{base}/v1/operator/snapshot", data=snap)
            assert int(restored["jobs"]) == 1
            assert int(restored["epoch"]) > 0
            async with http.post(f"{base}/v1/operator/snapshot", data=b"not one") as r:
                assert r.status == 400

            # scale, then stop
            scaled = await _json(http, "POST", f"{base}/v1/job/web/scale",
                                 data=json.dumps({"group": "app", "count": 1}))
            assert scaled["version"] == "2"
            versions = await _json(http, "GET", f"{base}/v1/job/web/versions")
            assert [v["version"] for v in versions["versions"]] == ["2", "1"]  # newest first
            stopped = await _json(http, "DELETE", f"{base}/v1/job/web")
            assert int(stopped["version"]) == 3
            await wait_until(lambda: not any(
                a.desired_status == 1 for a in ctl.cluster.state.allocs.values()), within=20)


async def test_blocking_queries_wake_on_a_change_and_end_after_wait(tmp_path: Path) -> None:
    async with live_cluster(tmp_path, 1, net=NET, http_addr=f"{NET}.1:0") as (ctl, _):
        assert ctl.http is not None
        base = ctl.http.url
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/v1/jobs") as r:
                index = int(r.headers["X-Orch-Index"])
            t0 = time.monotonic()
            async with http.get(f"{base}/v1/jobs?index={index}&wait=0.5s") as r:
                assert r.status == 200
                assert int(r.headers["X-Orch-Index"]) == index
            assert 0.5 <= time.monotonic() - t0 < 5

            async def wait() -> tuple[float, Any, int]:
                async with http.get(f"{base}/v1/jobs?index={index}&wait=60s") as r:
                    return time.monotonic(), await r.json(), int(r.headers["X-Orch-Index"])
            waiting = asyncio.create_task(wait())
            await asyncio.sleep(0.5)
            assert not waiting.done()
            t1 = time.monotonic()
            await _json(http, "POST", f"{base}/v1/jobs", data=JOB.format(name="b", count=1,
                                                                          memory=32))
            woke, body, new_index = await asyncio.wait_for(waiting, 10)
            assert woke - t1 < 5
            assert new_index > index
            assert [j["name"] for j in body["jobs"]] == ["b"]
            async with http.get(f"{base}/v1/jobs?index=soon") as r:
                assert r.status == 400
                assert "X-Orch-Index" in (await r.json())["message"]


async def test_errors_limits_and_headers(tmp_path: Path) -> None:
    async with live_cluster(tmp_path, 1, net=NET, http_addr=f"{NET}.1:0", rate_limit=2.0,
                            rate_burst=20.0) as (ctl, _):
        assert ctl.http is not None
        base = ctl.http.url
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/v1/job/nope") as r:
                assert r.status == 404
                assert await r.json() == {"code": "NOT_FOUND", "message": "job 'nope' not found "
                                          "in namespace 'default'"}
                assert r.headers["Content-Security-Policy"].startswith("default-src 'none'")
                assert r.headers["X-Content-Type-Options"] == "nosniff"
                assert r.headers["Cache-Control"] == "no-store"
            async with http.post(f"{base}/v1/jobs", data="name: x\ngroups: []\n") as r:
                assert r.status == 400
                assert "groups" in (await r.json())["message"]
            async with http.put(f"{base}/v1/jobs") as r:
                assert r.status == 405
                assert r.headers["Allow"] == "GET, POST"
            async with http.get(f"{base}/v1/openapi.json") as r:
                doc = await r.json()
                assert doc["paths"]["/v1/jobs"]["post"]["operationId"] == "RegisterJob"
            async with http.get(f"{base}/") as r:
                assert str(r.url).endswith("/ui/login")
            # the same rate limit as gRPC: a burst, then 429 with Retry-After
            statuses = []
            for _ in range(40):
                async with http.get(f"{base}/v1/leader") as r:
                    statuses.append(r.status)
                    if r.status == 429:
                        assert r.headers["Retry-After"] == "1"
                        assert "too many requests" in (await r.json())["message"]
            assert statuses[0] == 200
            assert 429 in statuses
            assert ctl.authz.denied["rate", "GetLeader"] >= 1
        assert MAX_STREAMS > 0


async def test_plain_http_is_refused_off_loopback(tmp_path: Path) -> None:
    ctl = Controller(controller_config(tmp_path / "ctl", http_addr="0.0.0.0:0"))
    with pytest.raises(ConfigError, match=r"HTTP API and web UI on 0\.0\.0\.0 in plain text"):
        await ctl.start()


async def test_the_ui_reads_without_javascript_and_refuses_forged_forms(tmp_path: Path) -> None:
    """Pages are server-rendered HTML (links, tables, forms): a client without JavaScript
    reads them; an action needs the session's CSRF token and the page's own origin."""
    async with live_cluster(tmp_path, 1, net=NET, http_addr=f"{NET}.1:0") as (ctl, agents):
        assert ctl.http is not None
        base = ctl.http.url
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as http:
            async with http.get(f"{base}/ui/nodes") as r:  # no session: to the login page
                assert str(r.url).endswith("/ui/login")
                assert r.headers["Content-Security-Policy"].startswith("default-src 'none'; "
                                                                       "script-src 'self';")
                assert "unsafe-inline" not in r.headers["Content-Security-Policy"]
            async with http.post(f"{base}/ui/login", data={"token": ""},
                                 allow_redirects=False) as r:
                assert r.status == 303
                cookie = r.headers["Set-Cookie"]
                assert "HttpOnly" in cookie
                assert "SameSite=Strict" in cookie
                assert "Path=/ui" in cookie
            await _json(http, "POST", f"{base}/v1/jobs", data=JOB.format(name="web", count=1,
                                                                          memory=32))
            await wait_until(lambda: any(a.client_status == 2 for a in
                                         ctl.cluster.state.allocs.values()), within=20)
            node = agents[0].node_id
            pages = {"/ui/": ["agent-1", "Controllers", "Gossip members"],
                     "/ui/nodes": ["agent-1"], f"/ui/node/{node}": ["Drain", "web.app[0]"],
                     "/ui/jobs": ['href="/ui/job/default/web"'],
                     "/ui/job/default/web": ["web.app[0]", "Versions", "Stop the job"],
                     "/ui/allocations": ["web.app[0]"], "/ui/events": ["JobRegistered"],
                     "/ui/services": ["No services"], "/ui/jobs/new": ["Plan", "Run"]}
            for path, wanted in pages.items():
                async with http.get(base + path) as r:
                    text = await r.text()
                    assert r.status == 200, (path, text)
                    for w in wanted:
                        assert w in text, (path, w)
                    assert "<script>" not in text  # nothing inline
            alloc = next(iter(ctl.cluster.state.allocs))
            async with http.get(f"{base}/ui/allocation/{alloc}/logs?task=server") as r:
                assert (await r.text()).startswith("hello from")
            async with http.get(f"{base}/ui/job/default/web") as r:
                csrf = (await r.text()).split('name="csrf" value="')[1].split('"')[0]

            # the operator's actions on a job, as forms: scale, revert, promote, stop
            async def act(path: str, **form: str) -> str:
                async with http.post(base + path, data={"csrf": csrf, **form}) as r:
                    assert r.status == 200, await r.text()
                    return await r.text()
            key = ("default", "web")
            assert "scaled to 2" in await act("/ui/job/default/web/scale", group="app", count="2")
            assert ctl.cluster.state.job(key).groups[0].count == 2  # type: ignore[union-attr]
            assert "reverted to version 1" in await act("/ui/job/default/web/revert", version="1")
            assert ctl.cluster.state.job(key).groups[0].count == 1  # type: ignore[union-attr]
            await wait_until(lambda: _deployment(ctl) == "successful", within=20)
            canary = JOB.format(name="web", count=1, memory=32).replace(
                "healthy_deadline: 20s", "healthy_deadline: 20s, canary: 1").replace(
                "hello from", "hello again from")
            await _json(http, "POST", f"{base}/v1/jobs", data=canary)
            await wait_until(lambda: _deployment(ctl) == "paused", within=20)
            dep = ctl.cluster.state.latest_deployment(key)
            assert dep is not None
            page = await act("/ui/job/default/web/promote", deployment_id=dep.id)
            assert f"deployment {dep.id[:8]} promoted" in page
            await wait_until(lambda: _deployment(ctl) == "successful", within=20)
            running = next(a for a in ctl.cluster.state.allocs_of_job(key)
                           if a.desired_status == 1 and a.client_status == 2)
            page = await act(f"/ui/allocation/{running.id}/restart")
            assert f"allocation {running.id[:8]}: restarted" in page
            assert f"allocation {running.name}: stopped" in await act(
                f"/ui/allocation/{running.id}/stop")
            assert ctl.cluster.state.allocs[running.id].desired_status != 1
            assert "stopped" in await act("/ui/job/default/web/stop")
            assert ctl.cluster.state.job(key).stop  # type: ignore[union-attr]

            # forged: no CSRF token, or another site's page: refused, the node as it was
            async with http.post(f"{base}/ui/node/{node}/drain", data={"enable": "true"}) as r:
                assert r.status == 403
                assert "CSRF" in await r.text()
            async with http.get(f"{base}/ui/node/{node}") as r:
                csrf = (await r.text()).split('name="csrf" value="')[1].split('"')[0]
            async with http.post(f"{base}/ui/node/{node}/drain",
                                 data={"enable": "true", "csrf": csrf},
                                 headers={"Origin": "https://evil.example"}) as r:
                assert r.status == 403
            assert not ctl.cluster.state.nodes[node].HasField("drain")
            assert ctl.cluster.state.nodes[node].eligible
            # the real form works
            async with http.post(f"{base}/ui/node/{node}/eligibility",
                                 data={"eligible": "false", "csrf": csrf}) as r:
                assert r.status == 200
                assert "ineligible" in await r.text()
            assert not ctl.cluster.state.nodes[node].eligible


async def test_https_with_the_cluster_trust_and_client_certificates_when_required(
        tmp_path: Path) -> None:
    """A bootstrapped controller serves HTTPS with its own certificate; with
    http_verify_client a request must present a certificate from the cluster CA, as on gRPC."""
    async with bootstrapped(tmp_path, http_addr="127.0.44.1:0",
                            http_verify_client=True) as (ctl, _):
        assert ctl.http is not None
        assert ctl.http.url.startswith("https://")
        op = tmp_path / "ctl/pki/operator"
        token = (op / "management.token").read_text().strip()
        bare = ssl.create_default_context(cafile=str(op / "ca.pem"))
        bare.check_hostname = False
        async with aiohttp.ClientSession() as http:
            with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
                async with http.get(f"{ctl.http.url}/v1/leader", ssl=bare) as r:
                    await r.read()
            cert = ssl.create_default_context(cafile=str(op / "ca.pem"))
            cert.check_hostname = False
            cert.load_cert_chain(op / "cli.pem", op / "cli-key.pem")
            headers = {"X-Orch-Token": token}
            async with http.get(f"{ctl.http.url}/v1/nodes", ssl=cert, headers=headers) as r:
                assert r.status == 200
                assert r.headers["Strict-Transport-Security"].startswith("max-age=")
            async with http.get(f"{ctl.http.url}/v1/nodes", ssl=cert) as r:
                assert r.status == 401  # the certificate alone is not enough, as on gRPC

        # a renewed certificate is served to new connections, with no restart
        where = (ctl.http.host, ctl.http.port)

        def served_serial() -> int:
            with socket.create_connection(where, timeout=5) as raw, \
                    cert.wrap_socket(raw) as tls:
                der = tls.getpeercert(binary_form=True)
            assert der is not None
            return x509.load_der_x509_certificate(der).serial_number
        assert ctl.trust is not None
        before = await asyncio.to_thread(served_serial)
        assert not await ctl.http.reload_tls()
        await asyncio.sleep(0.01)  # a new modification time
        assert await asyncio.to_thread(ctl.trust.renew_own, 1.01)
        assert await ctl.http.reload_tls()
        assert await asyncio.to_thread(served_serial) != before
