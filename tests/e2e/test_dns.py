"""Service discovery by name on the Compose harness: a Docker task and a process task each
find a service (busybox httpd replicas, deploy/compose/jobs/web.yaml) by name and port
through their agent's DNS (SRV, then the endpoint's own name), and fetch from it."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import pytest

from orch.jobspec import parse_job
from orch.v1 import controller_pb2, node_pb2
from tests.e2e.harness import ROOT, Harness, wait

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.timeout(300)]

SHELL = ("line=$(nslookup -type=SRV web.service.default.orch | grep 'service =' | head -1); "
         "port=$(echo $line | awk '{print $(NF-1)}'); target=$(echo $line | awk '{print $NF}'); "
         "echo found $target $port; echo answer $(wget -qO- http://$target:$port/); sleep 600")
PYTHON = """
import time, urllib.request
import dns.resolver
r = dns.resolver.Resolver(filename="resolv.conf")
srv = r.resolve("web.service.default.orch", "SRV")[0]
host = r.resolve(srv.target, "A")[0].address
print("found", srv.target, srv.port, flush=True)
print("answer", urllib.request.urlopen(f"http://{host}:{srv.port}/", timeout=5).read().decode(),
      flush=True)
time.sleep(600)
"""
CLIENTS = """
name: dns-clients
groups:
  - name: docker
    tasks:
      - name: ask
        driver: docker
        image: orch/busybox:test
        command: sh
        args: ["-c", {shell}]
        resources: {{cpu_millicores: 50, memory_mb: 16}}
  - name: process
    tasks:
      - name: ask
        driver: process
        command: /opt/orch/bin/python
        args: ["-c", {python}]
        resources: {{cpu_millicores: 50, memory_mb: 64}}
"""


def logs(h: Harness, alloc_id: str) -> str:
    """``orchctl alloc logs`` on the host, with the operator's credentials."""
    out = subprocess.run(
        [sys.executable, "-m", "orchctl.main", "--address", f"{h.ip('controller')}:4647",
         "alloc", "logs", alloc_id], capture_output=True, text=True, timeout=30, check=False,
        cwd=ROOT, env={**os.environ, "ORCH_CONFIG": str(h.operator_dir / "orchctl.toml")})
    return out.stdout


def test_tasks_find_a_service_by_name_and_port_on_both_drivers(cluster: Harness) -> None:
    web = {a.id for a in cluster.deploy("web", count=2)}
    cluster.run(parse_job(CLIENTS.format(shell=json.dumps(SHELL), python=json.dumps(PYTHON)),
                          "clients.yaml"))
    def both() -> list[node_pb2.Allocation] | None:
        found = cluster.running("dns-clients")
        return found if len(found) == 2 else None
    clients = wait("both clients running", both, 90)

    def answer(alloc_id: str) -> str | None:
        return next((line for line in logs(cluster, alloc_id).splitlines()
                     if line.startswith("answer ")), None)
    for alloc in clients:
        got = wait(f"the {alloc.group} client's answer", functools.partial(answer, alloc.id), 60)
        alloc_id = got.split()[1]
        assert alloc_id in web, f"{alloc.group}: {got}"
    assert cluster.api.ListServices(controller_pb2.ListServicesRequest(
        name="web", namespace="default"), timeout=10).services[0].endpoints
