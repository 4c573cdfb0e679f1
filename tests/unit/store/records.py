"""Records for store tests: every kind, with nested messages, maps and oneofs filled in."""

from __future__ import annotations

from typing import Any

from google.protobuf import duration_pb2

from orch.v1 import controller_pb2, job_pb2, node_pb2


def job(name: str = "web", version: int = 1, *, namespace: str = "default", **kw: Any) -> job_pb2.Job:
    """A service job of one group (one docker task with a port, a service and a check)."""
    kw.setdefault("priority", 50)
    kw.setdefault("submit_time_ns", 1_700_000_000_000_000_000 + version)
    return job_pb2.Job(
        name=name, namespace=namespace, version=version, type=job_pb2.JOB_TYPE_SERVICE,
        datacenters=["dc1", "dc2"], meta={"team": "web", "tier": "front"},
        groups=[group(name)], **kw)


def group(name: str = "web", count: int = 3) -> job_pb2.TaskGroup:
    return job_pb2.TaskGroup(
        name=name, count=count,
        tasks=[job_pb2.Task(
            name="app", driver="docker", image=f"{name}:1.2.3", args=["--port", "8080"],
            env={"MODE": "prod", "LOG": "json"},
            resources=job_pb2.Resources(cpu_millicores=250, memory_mb=128),
            kill_timeout=duration_pb2.Duration(seconds=5))],
        network=job_pb2.Network(ports=[job_pb2.Port(label="http", to=8080)]),
        services=[job_pb2.Service(
            name=name, port="http", published_port=8080,
            check=job_pb2.Check(type="http", port="http", path="/health",
                                interval=duration_pb2.Duration(seconds=10)))])


def alloc(aid: str, *, job_name: str = "web", node_id: str = "n1", version: int = 1,
          namespace: str = "default", index: int = 0, **kw: Any) -> node_pb2.Allocation:
    kw.setdefault("desired_status", node_pb2.DESIRED_STATUS_RUN)
    kw.setdefault("client_status", node_pb2.CLIENT_STATUS_RUNNING)
    return node_pb2.Allocation(
        id=aid, name=f"{job_name}.web[{index}]", namespace=namespace, job=job_name,
        job_version=version, group="web", index=index, node_id=node_id, spec=group(job_name),
        ports={"http": 20000 + index}, resources=job_pb2.Resources(cpu_millicores=250, memory_mb=128),
        tasks={"app": node_pb2.TaskState(state="running", restarts=1, events=[
            node_pb2.TaskEvent(time_ns=1, type="Started", message="started")])},
        healthy=True, create_time_ns=1, modify_time_ns=2, **kw)


def node(nid: str, **kw: Any) -> node_pb2.Node:
    kw.setdefault("status", node_pb2.NODE_STATUS_READY)
    return node_pb2.Node(
        id=nid, name=f"host-{nid}", address="127.0.0.2:4647", datacenter="dc1",
        attributes={"kernel.name": "linux", "cpu.arch": "amd64"}, meta={"rack": "r1"},
        capacity=job_pb2.Resources(cpu_millicores=4000, memory_mb=8192),
        drivers=["docker", "process"], eligible=True, reserved_ports=[22], **kw)


def deployment(did: str, *, job_name: str = "web", version: int = 1, **kw: Any
               ) -> controller_pb2.Deployment:
    kw.setdefault("status", "running")
    return controller_pb2.Deployment(
        id=did, job=job_name, namespace="default", job_version=version,
        groups=[controller_pb2.DeploymentGroup(group="web", desired=3, placed=1, auto_revert=True)],
        create_time_ns=5, **kw)


def evaluation(eid: str, *, job_name: str = "web", **kw: Any) -> controller_pb2.Evaluation:
    kw.setdefault("status", "complete")
    return controller_pb2.Evaluation(
        id=eid, namespace="default", job=job_name, job_version=1, triggered_by="job-register",
        create_time_ns=7, plan=controller_pb2.PlanSummary(changes_anything=True, changes=[
            controller_pb2.PlannedChange(kind="create", group="web", alloc_name="web.web[0]")]),
        **kw)


def event(key: str = "web", *, topic: str = "job", type: str = "JobRegistered", **kw: Any
          ) -> controller_pb2.Event:
    return controller_pb2.Event(time_ns=9, topic=topic, type=type, key=key, message=f"{type} {key}",
                                **kw)
