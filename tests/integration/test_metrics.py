"""Every daemon of a live cluster serves /metrics that promtool finds clean, named by the
Prometheus conventions; the load balancer's series move with real traffic; the dashboard
asks only for what the daemons export."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import urllib.request
from pathlib import Path

from prometheus_client import generate_latest

from agent.server import Agent
from controller.server import Controller
from orch.jobspec import parse_job
from orch.metrics import render
from tests.integration.live import live_cluster
from tests.integration.synthetic import wait_until
from tests.metric_names import naming_problems
from tests.promtool import promql_problems, promtool_check

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "deploy" / "examples" / "hello.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "orch.json"
METRIC = re.compile(r"\b(?:orch|container)_[a-zA-Z0-9_]+")
REQUESTS = 4
"""HTTP requests sent through each agent's published port."""
HELLO = "default/hello/web/hello"
"""The load balancer's name for the example's service: namespace, job, group, name."""
LB_PANEL_METRICS = {
    "orch_lb_connections_active", "orch_lb_connections_total", "orch_lb_received_bytes_total",
    "orch_lb_sent_bytes_total", "orch_lb_connect_duration_seconds_bucket",
    "orch_lb_connect_failures_total", "orch_lb_connect_retries_total", "orch_lb_endpoints",
    "orch_lb_ejections_total"}


def scrape(host: str, port: int) -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        return str(r.read().decode())


def get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as r:
        r.read()
        return int(r.status)


def endpoint(d: Controller | Agent) -> tuple[str, int]:
    assert d.metrics is not None
    return d.metrics.host, d.metrics.port


def free_port_on(*hosts: str) -> int:
    """A TCP port free on every one of ``hosts`` (the published port: never a fixed one, so
    that another run on this machine cannot collide with this one)."""
    while True:
        with socket.socket() as first:
            first.bind((hosts[0], 0))
            port = int(first.getsockname()[1])
            try:
                for h in hosts[1:]:
                    with socket.socket() as s:
                        s.bind((h, port))
            except OSError:
                continue
            return port


def published(agent: Agent, port: int) -> bool:
    """The agent's load balancer listens on ``port`` for hello, with its 3 endpoints."""
    assert agent.mesh is not None
    s = agent.mesh.stats().get(HELLO)
    return s is not None and s.listening and s.port == port and s.endpoints.get("healthy") == 3


def settled(agent: Agent) -> bool:
    """Every request sent through the agent is counted and its connection closed."""
    assert agent.mesh is not None
    s = agent.mesh.stats()[HELLO]
    return s.total == REQUESTS and s.active == 0 and s.connect_latency.count == REQUESTS


def value(text: str, series: str) -> float:
    """The value of one series (name and labels as exposed) in a scrape."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} is not in the scrape")


async def test_every_daemon_serves_clean_metrics(tmp_path: Path) -> None:
    async with live_cluster(tmp_path, agents=2) as (ctl, agents):
        hosts = [a.cfg.lb_bind for a in agents]
        port = free_port_on(*hosts)
        await ctl.jobs.register(parse_job(
            EXAMPLE.read_text().replace("published_port: 8080", f"published_port: {port}"),
            str(EXAMPLE)))
        await wait_until(lambda: sum(1 for a in ctl.cluster.state.allocs.values()
                                     if a.healthy) == 3, within=30)
        await wait_until(lambda: all(published(a, port) for a in agents), within=30)
        # real requests through each agent's published port (the routing mesh), so that
        # the load balancer's counters and histogram move
        for h in hosts:
            for _ in range(REQUESTS):
                assert await asyncio.to_thread(get, f"http://{h}:{port}/") == 200
        await wait_until(lambda: all(settled(a) for a in agents), within=10)
        for a in agents:  # a usage sample now, instead of waiting for the next one
            await a.runtime.sample_usage()
        # the daemons serve on this loop: scrape from a thread
        texts = {"controller": await asyncio.to_thread(scrape, *endpoint(ctl))}
        for a in agents:
            texts[a.cfg.name] = await asyncio.to_thread(scrape, *endpoint(a))
        daemons: list[Controller | Agent] = [ctl, *agents]
        for d in daemons:  # the server's writer, byte for byte prometheus_client's
            assert d.metrics is not None
            assert render(d.metrics.registry) == generate_latest(d.metrics.registry)
        for name, text in texts.items():
            assert promtool_check(text) == "", f"{name}: {promtool_check(text)}"
            assert naming_problems(text) == [], name
        c = texts["controller"]
        assert "orch_controller_leader 1.0" in c
        assert 'orch_controller_nodes{status="ready"} 2.0' in c
        assert "orch_controller_placements_total 3.0" in c
        assert "# TYPE orch_controller_allocation_writes_total counter" in c
        assert "orch_controller_scheduling_seconds_bucket" in c
        assert 'orch_gossip_members{state="alive"} 3.0' in c
        both = texts["agent-1"] + texts["agent-2"]
        assert 'orch_allocations{state="running"}' in both
        assert "orch_health_checks_total" in both
        assert "orch_gossip_probe_rtt_seconds_count" in both
        assert 'orch_driver_healthy{driver="process"} 1.0' in both
        assert "# TYPE orch_task_restarts_total counter" in both

        # the load balancer: every agent publishes hello and counted what went through it
        for a in agents:
            labels = 'group="web",job="hello",namespace="default",service="hello"'
            text, svc = texts[a.cfg.name], f"{{{labels}}}"
            assert value(text, f"orch_lb_listening{svc}") == 1
            assert value(text, f"orch_lb_connections_total{svc}") == REQUESTS
            assert value(text, f"orch_lb_connections_active{svc}") == 0
            assert value(text, f"orch_lb_received_bytes_total{svc}") > 0  # the requests
            assert value(text, f"orch_lb_sent_bytes_total{svc}") > 0  # the pages
            assert value(text, f'orch_lb_endpoints{{{labels},state="healthy"}}') == 3
            assert value(text, f"orch_lb_connect_duration_seconds_count{svc}") == REQUESTS
            assert value(text, 'orch_lb_connect_duration_seconds_bucket{group="web",job="hello",'
                               'le="+Inf",namespace="default",service="hello"}') == REQUESTS
            assert value(text, f"orch_lb_connect_failures_total{svc}") == 0
            assert value(text, "orch_lb_services") == 1
            assert value(text, 'orch_lb_endpoints_refused{reason="unexpected"}') == 0

        # the dashboard asks only for what the daemons export
        exported = {line.split("{")[0].split(" ")[0] for text in texts.values()
                    for line in text.splitlines() if line and not line.startswith("#")}
        exprs = {f"panel_{p['id']}_{t['refId']}": t["expr"]
                 for p in json.loads(DASHBOARD.read_text())["panels"]
                 for t in p.get("targets", [])}  # rows have none
        wanted = {m for e in exprs.values() for m in METRIC.findall(e)}
        assert wanted
        assert wanted <= exported, sorted(wanted - exported)
        assert wanted >= LB_PANEL_METRICS, sorted(LB_PANEL_METRICS - wanted)
        assert promql_problems(exprs, tmp_path) == ""  # and every query parses
