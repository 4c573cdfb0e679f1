"""Prometheus discovers a live cluster (a controller, two agents on 127.0.55.x, a task with
a port labelled ``metrics``) through one agent's HTTP service discovery, with the example
configuration (deploy/prometheus.yml), and scrapes every target; promtool finds the example
valid."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from orch.jobspec import parse_job
from tests.components import require
from tests.integration.live import live_cluster
from tests.integration.mesh_util import free_port
from tests.integration.synthetic import wait_until
from tests.promtool import HOW, promtool

NET = "127.0.55"
EXAMPLE = Path(__file__).parents[2] / "deploy" / "prometheus.yml"
pytestmark = pytest.mark.timeout(150, method="thread")

EXPORTER = """
name: exporter
update: {{min_healthy_time: 0s, healthy_deadline: 30s}}
groups:
  - name: x
    count: 2
    network:
      ports: [{{label: metrics}}]
    tasks:
      - name: serve
        driver: process
        command: /bin/sh
        args: ["-c", "printf 'demo_up 1\\\\n' > metrics;
                exec python3 -m http.server $ORCH_PORT_metrics --bind ${{ORCH_ADDR_metrics%:*}}"]
        resources: {{cpu_millicores: 100, memory_mb: 64}}
"""


def test_the_example_configuration_is_valid() -> None:
    out = subprocess.run([promtool(), "check", "config", str(EXAMPLE)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


async def _get(url: str) -> Any:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s, \
            s.get(url) as r:
        return await r.json()


async def test_prometheus_discovers_and_scrapes_the_cluster(tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    require("prometheus", binary is not None, HOW)
    assert binary is not None
    async with live_cluster(tmp_path, agents=2, net=NET) as (ctl, agents):
        await ctl.jobs.register(parse_job(EXPORTER.format(), "exporter.yaml"))
        sd_agent = agents[0]
        assert sd_agent.metrics is not None
        sd = f"http://{sd_agent.cfg.metrics_addr.rsplit(':', 1)[0]}:{sd_agent.metrics.port}" \
             "/v1/sd/prometheus"

        async def five() -> bool:
            return len(await _get(sd)) == 5
        await wait_until(five, within=30, every=0.3)
        groups = await _get(sd)
        roles = sorted(g["labels"]["role"] for g in groups)
        assert roles == ["agent", "agent", "controller", "task", "task"]
        tasks = [g["labels"] for g in groups if g["labels"]["role"] == "task"]
        assert {(t["job"], t["group"], t["namespace"]) for t in tasks} == {
            ("exporter", "x", "default")}
        assert {t["node"] for t in tasks} <= {"agent-1", "agent-2"}

        config = yaml.safe_load(EXAMPLE.read_text())
        config["global"]["scrape_interval"] = "1s"
        sdc = config["scrape_configs"][0]["http_sd_configs"][0]
        sdc["url"], sdc["refresh_interval"] = sd, "1s"
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port([f"{NET}.100"])
        web = f"{NET}.100:{port}"
        proc = await asyncio.create_subprocess_exec(
            binary, f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address={web}",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            async def all_up() -> bool:
                try:
                    active = (await _get(f"http://{web}/api/v1/targets"))["data"][
                        "activeTargets"]
                except aiohttp.ClientError:
                    return False
                return len(active) == 5 and all(t["health"] == "up" for t in active)
            await wait_until(all_up, within=60, every=0.5)
            active = (await _get(f"http://{web}/api/v1/targets"))["data"]["activeTargets"]
            jobs = sorted(t["labels"]["job"] for t in active)
            assert jobs == ["exporter", "exporter", "orch-agent", "orch-agent",
                            "orch-controller"]

            async def scraped() -> bool:  # a task's own series, labelled as discovered
                found = (await _get(f"http://{web}/api/v1/query?query=demo_up"))["data"][
                    "result"]
                return len(found) == 2 and all(r["metric"]["namespace"] == "default"
                                               for r in found)
            await wait_until(scraped, within=20, every=0.5)
        finally:
            proc.terminate()
            await proc.wait()

