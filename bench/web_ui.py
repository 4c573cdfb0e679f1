"""Web UI and HTTP API benchmark: how long the controller takes to answer a page of a big
cluster (its server time, from the ``Server-Timing`` header it sends).

    python -m bench.web_ui                 # 5,000 nodes, 10,000 allocations, 20 requests a page
    python -m bench.web_ui --quick         # 500 nodes, 1,000 allocations, 5 requests a page
    python -m bench.web_ui --json          # the last line of stdout is one JSON object

The state is synthetic (there is no fleet simulator yet): ``--nodes`` ready nodes with the
attributes an agent reports, 200 service jobs whose allocations (``--allocs`` in all) run
on them with task states and events, a successful deployment per job, all committed
through the controller's SQLite store, which a real controller then loads and serves (its
HTTP listener on 127.0.81.1; no agents, so node liveness and reconciliation are slowed
down to leave that state as it is). A client logs in to the UI and asks for each page in
turn; the figure is the controller's own time for the request (handler, gate, rendering),
median and p90, and the bytes of the answer. Figures, never a verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.report import pct, progress, table
from controller.config import ControllerConfig
from controller.server import Controller
from controller.store import Changes, SQLiteStore
from orch.gossip.config import GossipConfig
from orch.v1 import controller_pb2, job_pb2, node_pb2

HOST = "127.0.81.1"
JOBS = 200
PAGES = ("/ui/", "/ui/nodes", "/ui/nodes?page=50", "/ui/jobs", "/ui/allocations",
         "/ui/allocations?page=100", "/ui/job/default/job-007", "/ui/services",
         "/v1/nodes?per_page=100", "/v1/allocations?per_page=100", "/v1/jobs", "/v1/job/job-007",
         "/v1/nodes", "/v1/allocations")


def node(i: int) -> node_pb2.Node:
    return node_pb2.Node(
        id=f"{i:08x}-0000-4000-8000-{i:012x}", name=f"node-{i:05d}",
        address=f"127.82.{i // 256 % 256}.{i % 256}:4648", datacenter=f"dc{i % 3 + 1}",
        region="global", node_class="general", status=node_pb2.NODE_STATUS_READY, eligible=True,
        drivers=["docker", "process"], status_time_ns=time.time_ns(),
        attributes={"kernel.name": "linux", "kernel.version": "6.1.0", "cpu.arch": "amd64",
                    "cpu.numcores": "16", "os.name": "debian", "os.version": "12",
                    "unique.hostname": f"node-{i:05d}", "driver.docker": "1",
                    "driver.process": "1", "memory.totalbytes": str(64 << 30)},
        capacity=job_pb2.Resources(cpu_millicores=16000, memory_mb=65536))
    # no gossip address: a controller joins the gossip addresses of the nodes it knows, and
    # nothing answers for these (nor may the benchmark send anything off this host)


def job_changes(j: int, per_job: int, nodes: int) -> Changes:
    now = time.time_ns()
    name = f"job-{j:03d}"
    group = job_pb2.TaskGroup(
        name="web", count=per_job,
        tasks=[job_pb2.Task(name="app", driver="docker", image="registry.local/web:1",
                            env={"MODE": "production"},
                            resources=job_pb2.Resources(cpu_millicores=100, memory_mb=128))],
        network=job_pb2.Network(ports=[job_pb2.Port(label="http", to=8080)]),
        services=[job_pb2.Service(name=name, port="http", published_port=8000 + j)])
    job = job_pb2.Job(name=name, namespace="default", version=1, type=job_pb2.JOB_TYPE_SERVICE,
                      priority=50, datacenters=["dc1", "dc2", "dc3"], groups=[group],
                      submit_time_ns=now)
    dep = controller_pb2.Deployment(
        id=f"{j:08x}-dddd-4000-8000-000000000000", job=name, namespace="default", job_version=1,
        status="successful", description="deployment completed successfully",
        groups=[controller_pb2.DeploymentGroup(group="web", desired=per_job, placed=per_job,
                                               healthy=per_job)],
        create_time_ns=now, modify_time_ns=now)
    events = [node_pb2.TaskEvent(time_ns=now, type="Received", message="Task received by node"),
              node_pb2.TaskEvent(time_ns=now, type="Started", message="Task started")]
    allocs = []
    for k in range(per_job):
        n = (j * per_job + k) % nodes
        allocs.append(node_pb2.Allocation(
            id=f"{j:08x}-{k:04x}-4000-8000-{n:012x}", name=f"{name}.web[{k}]",
            namespace="default", job=name, job_version=1, group="web", index=k,
            node_id=node(n).id, desired_status=node_pb2.DESIRED_STATUS_RUN,
            client_status=node_pb2.CLIENT_STATUS_RUNNING, spec=group,
            ports={"http": 20000 + k}, healthy=True, checks_healthy=True,
            deployment_id=dep.id, resources=job_pb2.Resources(cpu_millicores=100, memory_mb=128),
            tasks={"app": node_pb2.TaskState(state="running", started_at_ns=now, healthy=True,
                                             events=events)},
            create_time_ns=now, modify_time_ns=now))
    return Changes(put_jobs=[job], put_allocs=allocs, put_deployments=[dep])


async def load(data: Path, nodes: int, allocs: int) -> None:
    """The synthetic cluster, committed through the controller's store."""
    store = SQLiteStore(str(data / "controller.db"), synchronous="normal")
    await store.open()
    try:
        await store.commit(Changes(meta={"cluster_id": "00000000-0000-4000-8000-0000000000b1"}))
        for start in range(0, nodes, 1000):
            await store.commit(Changes(put_nodes=[node(i) for i in range(start,
                                                                      min(nodes, start + 1000))]))
        per_job = max(1, allocs // JOBS)
        for j in range(JOBS):
            await store.commit(job_changes(j, per_job, nodes))
    finally:
        await store.close()


async def measure(nodes: int, allocs: int, runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="orch-bench-ui-") as tmp:
        data = Path(tmp) / "ctl"
        data.mkdir()
        t0 = time.monotonic()
        await load(data, nodes, allocs)
        progress(f"{nodes:,} nodes and {allocs:,} allocations committed in "
                 f"{time.monotonic() - t0:.1f}s")
        ctl = Controller(ControllerConfig(
            name="bench-ui", bind=f"{HOST}:0", rpc_addr=f"{HOST}:0", http_addr=f"{HOST}:0",
            metrics_addr="", data_dir=str(data), gossip=GossipConfig.fast(), store_sync="normal",
            node_grace=86400.0, failover_grace=86400.0, reconcile_interval=86400.0,
            rate_limit=0.0))
        t0 = time.monotonic()
        await ctl.start()
        try:
            for _ in range(3000):  # the start-up evaluation of every job (10 minutes at most)
                if not ctl.evaluator.queue_depth:
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)
            progress(f"controller loaded and evaluated the state in {time.monotonic() - t0:.1f}s")
            assert ctl.http is not None
            base = ctl.http.url
            out: dict[str, Any] = {"nodes": len(ctl.cluster.state.nodes),
                                   "allocations": len(ctl.cluster.state.allocs), "pages": {}}
            jar = aiohttp.CookieJar(unsafe=True)  # keep the session cookie of an IP address
            async with aiohttp.ClientSession(cookie_jar=jar) as http:
                async with http.post(f"{base}/ui/login", data={"token": ""}) as r:
                    assert r.status == 200, await r.text()
                    assert "log out" in await r.text(), "not logged in"
                for page in PAGES:
                    times, size = [], 0
                    for _ in range(runs):
                        async with http.get(base + page) as r:
                            body = await r.read()
                            assert r.status == 200, (page, r.status, body[:300])
                            times.append(float(r.headers["Server-Timing"].split("dur=")[1]))
                            size = len(body)
                    out["pages"][page] = {"median_ms": statistics.median(times),
                                          "p90_ms": pct(times, 90), "bytes": size}
                    progress(f"{page}: {statistics.median(times):.1f} ms")
            return out
        finally:
            await ctl.stop(grace=0.5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.web_ui", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--allocs", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=20, help="requests a page")
    ap.add_argument("--quick", action="store_true", help="500 nodes, 1,000 allocations, 5 runs")
    ap.add_argument("--json", action="store_true", help="a JSON object as the last line")
    opts = ap.parse_args(argv)
    if opts.quick:
        opts.nodes, opts.allocs, opts.runs = 500, 1000, 5
    result = asyncio.run(measure(opts.nodes, opts.allocs, opts.runs))
    rows = [(page, r["median_ms"], r["p90_ms"], r["bytes"]) for page, r in result["pages"].items()]
    print(table(f"Server time of a page, {result['nodes']:,} nodes and "
                f"{result['allocations']:,} allocations ({opts.runs} requests each)",
                ("page", "median ms", "p90 ms", "bytes"), rows))
    if opts.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
