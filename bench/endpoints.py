"""Expected endpoints benchmark: what one allocation starting costs the controller's streams.

    python -m bench.endpoints            # 1,000 services of 10 allocations, 200 agents
    python -m bench.endpoints --quick    # a smoke run (seconds)
    python -m bench.endpoints --json     # ... and a last line with one JSON object

The controller's part in memory (``controller.endpoints``, no sockets): a state of
``--services`` services of ``--allocs`` allocations each, spread over 100 nodes, and
``--agents`` streams, all at the whole set. Then ``--commits`` times one allocation of
another service is placed, and every stream is brought up to date: the commit tracked, the
message each stream is sent built and serialized (as gRPC does once per stream). Two
rows: agents that take changes (``endpoint-changes``: the service that changed) and agents
that do not (the whole set every time, as every agent was sent before). Figures are
medians over the commits, per commit for all agents, and the bytes one agent is sent; the
ratio is the one to quote (both rows run in one process, one after the other).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from controller.endpoints import FEATURE, ExpectedEndpoints
from controller.state import RUN, ClusterState
from controller.store.base import Changes
from orch.jobspec.model import Group, Network, Port, Service, Task, group_to_proto
from orch.v1 import node_pb2

NODES = 100


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def state_of(services: int, allocs: int) -> ClusterState:
    state = ClusterState()
    nodes = [node_pb2.Node(id=f"n{i}", name=f"agent-{i}") for i in range(NODES)]
    spec = group_to_proto(Group(name="g", tasks=(Task(name="t", driver="process"),),
                                network=Network(ports=(Port(label="http"),)),
                                services=(Service(name="web", port="http",
                                                  published_port=0),)))
    put = []
    for s in range(services):
        for i in range(allocs):
            put.append(placed(f"j{s}", i, spec, s + i))
    state.apply(Changes(put_nodes=nodes, put_allocs=put), 1)
    return state


def placed(job: str, i: int, spec: Any, node: int) -> node_pb2.Allocation:
    a = node_pb2.Allocation(id=f"{job}-{i}", name=f"{job}.g[{i}]", namespace="default",
                            job=job, job_version=1, group="g", index=i,
                            node_id=f"n{node % NODES}", desired_status=RUN)
    a.spec.CopyFrom(spec)
    a.ports["http"] = 20000 + i
    return a


def run(state: ClusterState, agents: int, commits: int, *, changes: bool,
        first: int) -> dict[str, float]:
    index = ExpectedEndpoints(state)
    feeds = [index.attach(node_pb2.Node(id=f"a{i}", features=[FEATURE] if changes else []),
                          lambda: None) for i in range(agents)]
    for f in feeds:  # every stream at the whole set
        msg = index.next_message(f)
        assert msg is not None
        msg.SerializeToString()
    spec = next(iter(state.allocs.values())).spec
    times: list[float] = []
    sent: list[int] = []
    for c in range(commits):
        change = Changes(put_allocs=[placed(f"j{(first + c) % 7}", 1000 + c, spec, c)])
        state.apply(change, state.index + 1)
        t0 = time.perf_counter()
        index.track(change)
        size = 0
        for f in feeds:
            msg = index.next_message(f)
            assert msg is not None
            size = len(msg.SerializeToString())
        times.append(time.perf_counter() - t0)
        sent.append(size)
    return {"commit_ms": statistics.median(times) * 1000,
            "bytes_per_agent": statistics.median(sent)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.endpoints", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small state, few commits")
    ap.add_argument("--json", action="store_true", help="end with one line of JSON")
    ap.add_argument("--services", type=int, default=0, help="services (1,000; quick 100)")
    ap.add_argument("--allocs", type=int, default=10, help="allocations per service (10)")
    ap.add_argument("--agents", type=int, default=0, help="attached agents (200; quick 20)")
    ap.add_argument("--commits", type=int, default=0, help="commits measured (11; quick 3)")
    opts = ap.parse_args(argv)
    services = opts.services or (100 if opts.quick else 1000)
    agents = opts.agents or (20 if opts.quick else 200)
    commits = opts.commits or (3 if opts.quick else 11)
    log(f"expected endpoints: {services} services x {opts.allocs} allocations, "
        f"{agents} agents, {commits} commits")
    rows: dict[str, dict[str, float]] = {}
    for name, changes in (("changes", True), ("whole", False)):
        state = state_of(services, opts.allocs)
        rows[name] = run(state, agents, commits, changes=changes, first=0)
    ratio = rows["whole"]["commit_ms"] / max(rows["changes"]["commit_ms"], 1e-9)
    print(f"{'agents take':<12} {'per commit (all agents)':>24} {'bytes to one agent':>19}")
    for name, row in rows.items():
        print(f"{name:<12} {row['commit_ms']:>21.2f} ms {row['bytes_per_agent']:>19,.0f}")
    print(f"whole / changes: {ratio:.0f}x the time, "
          f"{rows['whole']['bytes_per_agent'] / rows['changes']['bytes_per_agent']:.0f}x "
          "the bytes")
    if opts.json:
        print(json.dumps({"services": services, "allocs_per_service": opts.allocs,
                          "agents": agents, "commits": commits, **{
                              f"{name}_{k}": v for name, row in rows.items()
                              for k, v in row.items()}, "time_ratio": ratio}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
