"""A Docker task finds a service by name through its agent's DNS: the agent answers on the
Docker bridge's gateway (``dns.task_addr = "bridge"``), which bridged containers get as
their resolver with the search domain of their namespace (127.0.56.2, the kv service on
the process driver, busybox's nslookup in the container)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from agent.dns.config import DnsConfig
from controller.state import RUN
from orch.jobspec import parse_job
from tests.docker_engine import docker, remove_node_containers
from tests.integration.live import live_cluster
from tests.integration.synthetic import wait_until
from tests.integration.test_dns import KV, ports

NET = "127.0.56"
pytestmark = [pytest.mark.docker, pytest.mark.timeout(120, method="thread")]

ASK = """
name: ask
type: batch
groups:
  - name: c
    tasks:
      - name: ask
        driver: docker
        image: {image}
        command: /bin/sh
        args: ["-c", {script}]
        resources: {{cpu_millicores: 100, memory_mb: 32}}
"""
SCRIPT = ("cat /etc/resolv.conf; nslookup -type=SRV kv.service.default.orch; "
          "nslookup kv; echo done")


async def test_a_docker_task_resolves_services_through_the_bridge(
        tmp_path: Path, test_image: str) -> None:
    node = ""
    try:
        async with live_cluster(tmp_path, agents=1, net=NET, drivers=("process", "docker"),
                                agent_settings={1: {"dns": DnsConfig(
                                    addr=f"{NET}.2:0", task_addr="bridge")}}) as (ctl, agents):
            agent = agents[0]
            node = agent.node_id
            assert agent.dns is not None
            if len(agent.dns.addresses) < 2:
                pytest.fail("the agent could not listen on the Docker bridge's port 53 "
                            f"(listening on {agent.dns.addresses})")
            await ctl.jobs.register(parse_job(KV.format(count=2), "kv.yaml"))

            async def two() -> bool:
                return len(await ports(agent)) == 2
            await wait_until(two, within=30, every=0.2)
            await ctl.jobs.register(parse_job(ASK.format(
                image=test_image, script=json.dumps(SCRIPT)), "ask.yaml"))
            [alloc] = [a for a in ctl.cluster.state.allocs.values()
                       if a.job == "ask" and a.desired_status == RUN]

            def logs() -> str:
                ids = docker("ps", "-aq", "--filter", f"label=orch.alloc={alloc.id}").split()
                return docker("logs", ids[0]) if ids else ""

            async def finished() -> bool:
                return "done" in await asyncio.to_thread(logs)
            await wait_until(finished, within=60, every=0.5)
            out = await asyncio.to_thread(logs)
            gateway = agent.dns.addresses[1][0]
            assert f"nameserver {gateway}" in out
            assert "search service.default.orch" in out
            kv_ports = {a.ports["http"] for a in ctl.cluster.state.allocs.values()
                        if a.job == "kv" and a.desired_status == RUN}
            for port in kv_ports:  # SRV: each endpoint's port
                assert f" {port} " in out, out
            assert out.count(f"Address: {NET}.2") >= 1, out  # A through the search domain
    finally:
        if node:
            remove_node_containers(node)
