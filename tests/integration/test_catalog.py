"""The service catalog in the controller's API, on a live cluster (127.0.54.x): services
listed with their endpoints and health, a blocking watch that answers when the list
changes (and only then), and ``orchctl service`` as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import grpc
import pytest

from orch.jobspec import parse_job
from orch.v1 import controller_pb2, controller_pb2_grpc
from tests.integration.live import Cli, live_cluster
from tests.integration.synthetic import wait_until
from tests.integration.test_dns import KV

NET = "127.0.54"
pytestmark = pytest.mark.timeout(120, method="thread")


async def test_list_and_watch_services(tmp_path: Path) -> None:
    async with live_cluster(tmp_path, agents=1, net=NET) as (ctl, _agents):
        await ctl.jobs.register(parse_job(KV.format(count=1), "kv.yaml"))
        async with grpc.aio.insecure_channel(ctl.rpc_address) as channel:
            stub = controller_pb2_grpc.ControllerServiceStub(channel)

            async def listed() -> controller_pb2.ListServicesResponse:
                return await stub.ListServices(controller_pb2.ListServicesRequest(
                    namespace="default"))

            async def one_healthy() -> bool:
                r = await listed()
                return len(r.services) == 1 and [e.healthy for e in r.services[0].endpoints] \
                    == [True]
            await wait_until(one_healthy, within=30, every=0.2)
            first = await listed()
            [svc] = first.services
            assert (svc.name, svc.namespace, svc.job, svc.group) == ("kv", "default", "kv",
                                                                     "store")
            assert (await stub.ListServices(controller_pb2.ListServicesRequest(
                namespace="other"))).services == []

            # a watch at the current index waits; one at an older index answers at once
            quick = await stub.WatchServices(controller_pb2.WatchServicesRequest(
                namespace="default", index=first.index - 1, wait_seconds=10))
            assert quick.index == first.index
            loop = asyncio.get_running_loop()
            started = loop.time()
            same = await stub.WatchServices(controller_pb2.WatchServicesRequest(
                namespace="default", index=first.index, wait_seconds=0.5))
            assert loop.time() - started >= 0.45
            assert same.index == first.index
            watch = asyncio.ensure_future(stub.WatchServices(controller_pb2.WatchServicesRequest(
                namespace="default", index=first.index, wait_seconds=30)))
            await asyncio.sleep(0.5)
            assert not watch.done()
            await ctl.jobs.scale(("default", "kv"), "store", 2)
            changed = await asyncio.wait_for(watch, 20)
            assert changed.index > first.index
            assert len(changed.services[0].endpoints) == 2

        cli = Cli(ctl.rpc_address, tmp_path)
        text = await cli("service", "list")
        assert "kv" in text
        assert "store" in text
        every = json.loads(await cli("-o", "json", "service", "list", "-A"))
        assert [s["namespace"] for s in every] == ["default"]
        shown = await cli("service", "show", "kv")
        assert "kv.service.default.orch" in shown
        await cli("service", "show", "nope", code=1)

        # service list --watch prints the list, then again when it changes (and only then)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "orchctl.main", "--address", ctl.rpc_address, "service",
            "list", "--watch", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out = proc.stdout
        assert out is not None
        try:
            async def printed() -> list[str]:
                lines: list[str] = []
                while not (lines and lines[-1].startswith("(index ")):
                    lines.append((await asyncio.wait_for(out.readline(), 30)).decode().rstrip())
                return lines
            before = await printed()
            assert sum(line.startswith("kv ") for line in before) == 1
            assert "2/2" in "\n".join(before)
            await ctl.jobs.scale(("default", "kv"), "store", 1)
            after = await printed()
            assert "1/1" in "\n".join(after)
            assert after[-1] != before[-1]  # a new index
        finally:
            proc.terminate()
            await proc.wait()
