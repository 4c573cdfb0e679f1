"""A controller on real sockets and synthetic agents that speak the real node protocol.

Synthetic agents run nothing: they report every allocation the controller gives
them as running and healthy (or failed, when its task's args say ``fail``), so
that the controller's scheduling, deployments and failure handling can be tested
quickly and exactly. Real agents with real drivers are tested elsewhere.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc

from agent.controller_link import ControllerLink
from agent.desired import DesiredSet
from controller.config import ControllerConfig
from controller.server import Controller
from orch.gossip.config import GossipConfig
from orch.v1 import controller_pb2, controller_pb2_grpc, job_pb2, node_pb2

RUNNING, FAILED, COMPLETE = (node_pb2.CLIENT_STATUS_RUNNING, node_pb2.CLIENT_STATUS_FAILED,
                             node_pb2.CLIENT_STATUS_COMPLETE)


class SyntheticAgent:
    def __init__(self, controller: str, name: str, *, cpu: int = 4000, memory: int = 8192,
                 node_class: str = "", datacenter: str = "dc1") -> None:
        self.node = node_pb2.Node(
            id=f"id-{name}", name=name, address="127.0.0.1:1", datacenter=datacenter,
            node_class=node_class, drivers=["docker", "process"],
            capacity=job_pb2.Resources(cpu_millicores=cpu, memory_mb=memory),
            attributes={"kernel.name": "linux"})
        self.running: dict[str, node_pb2.Allocation] = {}
        self.desired_versions: list[int] = []
        self.secrets: dict[tuple[str, str], tuple[int, bytes]] = {}
        """The secrets the last desired set carried: (namespace, name) -> (version, value)."""
        self.link = ControllerLink(lambda: self.node, lambda: [controller], self._on_desired,
                                   lambda: list(self.running.values()), backoff_max=0.5)

    async def _on_desired(self, d: DesiredSet) -> None:
        self.desired_versions.append(d.version)
        self.secrets = {(v.namespace, v.name): (v.version, v.value) for v in d.secrets}
        want = {a.id: a for a in d.allocations}
        for a in d.allocations:
            if a.id in self.running:
                continue
            fails = any("fail" in t.args for t in a.spec.tasks)
            status = node_pb2.Allocation(id=a.id, client_status=FAILED if fails else RUNNING,
                                         checks_healthy=not fails)
            self.running[a.id] = status
            self.link.report([status])
        for alloc_id in list(self.running):
            if alloc_id not in want:
                st = self.running.pop(alloc_id)
                self.link.report([node_pb2.Allocation(id=st.id, client_status=COMPLETE)])

    def start(self) -> None:
        self.link.start()

    async def stop(self) -> None:
        await self.link.stop()


class Harness:
    def __init__(self, ctl: Controller) -> None:
        self.ctl = ctl
        self.channel = grpc.aio.insecure_channel(ctl.rpc_address)
        self.api = controller_pb2_grpc.ControllerServiceStub(self.channel)
        self.agents: dict[str, SyntheticAgent] = {}

    async def add_agent(self, name: str, **kw: Any) -> SyntheticAgent:
        a = self.agents[name] = SyntheticAgent(self.ctl.rpc_address, name, **kw)
        a.start()
        await wait_until(lambda: self.ctl.cluster.connected(a.node.id))
        return a

    async def status(self, name: str) -> controller_pb2.JobStatusReply:
        return await self.api.GetJob(controller_pb2.GetJobRequest(name=name))

    async def running(self, name: str) -> list[node_pb2.Allocation]:
        st = await self.status(name)
        return [a for a in st.allocations
                if a.desired_status == node_pb2.DESIRED_STATUS_RUN and a.client_status == RUNNING]


async def wait_until(pred: Callable[[], Any], within: float = 10.0, every: float = 0.02) -> None:
    deadline = time.monotonic() + within
    while True:
        result = pred()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(every)


def controller_config(data_dir: Path, **kw: Any) -> ControllerConfig:
    base: dict[str, Any] = dict(name="ctl", bind="127.0.0.1:0", rpc_addr="127.0.0.1:0",
                                data_dir=str(data_dir), gossip=GossipConfig.fast(),
                                node_grace=0.5, reconcile_interval=5.0, store_sync="normal",
                                metrics_addr="127.0.0.1:0", http_addr="")
    base.update(kw)
    return ControllerConfig(**base)


@asynccontextmanager
async def cluster(tmp: Path, agents: int = 3, **kw: Any) -> AsyncIterator[Harness]:
    ctl = Controller(controller_config(tmp / "ctl", **kw))
    await ctl.start()
    c = Harness(ctl)
    try:
        for i in range(agents):
            await c.add_agent(f"agent-{i + 1}")
        yield c
    finally:
        for a in c.agents.values():
            await a.stop()
        await c.channel.close()
        await c.ctl.stop(grace=0.5)


def service_job(name: str = "web", count: int = 3, *, args: tuple[str, ...] = ("serve",),
                auto_revert: bool = False, min_healthy: float = 0.05, canary: int = 0,
                memory: int = 64, type_: str = "service") -> job_pb2.Job:
    update = job_pb2.UpdateStrategy(max_parallel=1, auto_revert=auto_revert, canary=canary,
                                    healthy_deadline=_dur(3.0))
    update.min_healthy_time.FromNanoseconds(int(min_healthy * 1e9))
    return job_pb2.Job(
        name=name, type={"service": job_pb2.JOB_TYPE_SERVICE, "system": job_pb2.JOB_TYPE_SYSTEM,
                         "batch": job_pb2.JOB_TYPE_BATCH}[type_],
        groups=[job_pb2.TaskGroup(
            name="app", count=count, update=update,
            tasks=[job_pb2.Task(name="server", driver="process", command="/bin/sleep", args=args,
                                resources=job_pb2.Resources(cpu_millicores=100, memory_mb=memory))])])


def _dur(seconds: float) -> Any:
    from google.protobuf.duration_pb2 import Duration

    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d
