"""Every daemon of a live cluster serves /metrics that promtool finds clean."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from pathlib import Path

from agent.server import Agent
from controller.server import Controller
from orch.jobspec import load_job_file
from tests.integration.live import live_cluster
from tests.integration.synthetic import wait_until
from tests.metric_names import naming_problems
from tests.promtool import promtool_check

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "deploy" / "examples" / "hello.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "orch.json"
METRIC = re.compile(r"\b(?:orch|container)_[a-zA-Z0-9_]+")


def scrape(host: str, port: int) -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        return str(r.read().decode())


def endpoint(d: Controller | Agent) -> tuple[str, int]:
    assert d.metrics is not None
    return d.metrics.host, d.metrics.port


async def test_every_daemon_serves_clean_metrics(tmp_path: Path) -> None:
    async with live_cluster(tmp_path, agents=2) as (ctl, agents):
        await ctl.jobs.register(load_job_file(str(EXAMPLE)))
        await wait_until(lambda: sum(1 for a in ctl.cluster.state.allocs.values()
                                     if a.healthy) == 3, within=30)
        for a in agents:  # a usage sample now, instead of waiting for the next one
            await a.runtime.sample_usage()
        # the daemons serve on this loop: scrape from a thread
        texts = {"controller": await asyncio.to_thread(scrape, *endpoint(ctl))}
        for a in agents:
            texts[a.cfg.name] = await asyncio.to_thread(scrape, *endpoint(a))
        for name, text in texts.items():
            assert promtool_check(text) == "", f"{name}: {promtool_check(text)}"
            assert naming_problems(text) == [], name
        c = texts["controller"]
        assert "orch_controller_leader 1.0" in c
        assert 'orch_controller_nodes{status="ready"} 2.0' in c
        assert "orch_controller_placements_total 3.0" in c
        assert "orch_controller_scheduling_seconds_bucket" in c
        assert 'orch_gossip_members{state="alive"} 3.0' in c
        both = texts["agent-1"] + texts["agent-2"]
        assert 'orch_allocations{state="running"}' in both
        assert "orch_health_checks_total" in both
        assert "orch_gossip_probe_rtt_seconds_count" in both
        assert 'orch_driver_healthy{driver="process"} 1.0' in both
        assert "# TYPE orch_task_restarts_total counter" in both

        # the dashboard asks only for what the daemons export
        exported = {line.split("{")[0].split(" ")[0] for text in texts.values()
                    for line in text.splitlines() if line and not line.startswith("#")}
        exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"]
                 for t in p["targets"]]
        wanted = {m for e in exprs for m in METRIC.findall(e)}
        assert wanted
        assert wanted <= exported, sorted(wanted - exported)
