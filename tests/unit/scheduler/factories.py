"""Small builders for scheduler tests: nodes, jobs, groups, allocations."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from bench.scheduler_rounds import apply_plan
from controller.scheduler import AllocInfo, ClusterSnapshot, NodeInfo, Plan, schedule
from controller.scheduler.config import SchedulerConfig
from controller.scheduler.quota import Quota
from orch.jobspec.model import (
    Affinity,
    Constraint,
    Group,
    Job,
    Network,
    Port,
    Resources,
    Spread,
    Task,
    UpdateStrategy,
)


def node(i: int | str, **kw: Any) -> NodeInfo:
    """A ready 4-core / 4 GiB node ``n<i>`` in dc1."""
    nid = kw.pop("id", f"n{i}")
    kw.setdefault("name", nid)
    kw.setdefault("cpu_millicores", 4000)
    kw.setdefault("memory_mb", 4096)
    kw.setdefault("attributes", {"kernel.name": "linux"})
    return NodeInfo(id=nid, **kw)


def group(name: str = "web", count: int = 1, cpu: int = 500, mem: int = 256, *,
          ports: Iterable[Port] = (), constraints: Iterable[Constraint] = (),
          affinities: Iterable[Affinity] = (), spreads: Iterable[Spread] = (),
          driver: str = "docker", image: str = "app:1", max_parallel: int = 1,
          **kw: Any) -> Group:
    return Group(name=name, count=count, tasks=(Task(
        name="main", driver=driver, image=image,
        resources=Resources(cpu_millicores=cpu, memory_mb=mem)),),
        network=Network(ports=tuple(ports)), constraints=tuple(constraints),
        affinities=tuple(affinities), spreads=tuple(spreads),
        update=UpdateStrategy(max_parallel=max_parallel), **kw)


def job(*groups: Group, name: str = "app", version: int = 1, type: str = "service",
        **kw: Any) -> Job:
    return Job(name=name, type=type, version=version, groups=groups or (group(),), **kw)


def alloc(aid: str, node_id: str, *, job_name: str = "app", grp: str = "web", index: int = 0,
          cpu: int = 500, mem: int = 256, spec: Group | None = None, **kw: Any) -> AllocInfo:
    kw.setdefault("client", "running")
    kw.setdefault("healthy", True)
    kw.setdefault("job_version", 1)
    return AllocInfo(id=aid, job=job_name, group=grp, index=index, node_id=node_id,
                     cpu_millicores=cpu, memory_mb=mem, spec=spec, **kw)


def run(j: Job, snap: ClusterSnapshot, *, seed: int = 1, now: float = 1000.0,
        config: SchedulerConfig | None = None, apply: bool = False,
        quota: Quota | None = None) -> Plan:
    """Schedule (and optionally commit) one job."""
    plan = schedule(j, snap, now, seed, config or SchedulerConfig(), quota)
    if apply:
        apply_plan(snap, plan, j, now)
    return plan


def settle(snap: ClusterSnapshot, *, healthy: bool = True) -> None:
    """Every pending allocation starts running (and turns healthy)."""
    for a in list(snap.allocs.values()):
        if a.desired == "run" and a.client == "pending":
            snap.upsert_alloc(dataclasses.replace(a, client="running", healthy=healthy))


def info(snap: ClusterSnapshot, node_id: str) -> NodeInfo:
    n = snap.node(node_id)
    assert n is not None
    return n.info


def placed_on(plan: Plan) -> list[str]:
    return [p.node_id for p in plan.placements]
