"""A controller and real agents (process driver) in this process, on 127.0.0.x."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.dns.config import DnsConfig
from agent.lb.config import LbConfig
from agent.server import Agent
from controller.server import Controller
from orch.gossip.config import GossipConfig
from orch.pki import create_ca, create_cert
from orch.tls import TlsConfig
from tests.integration.synthetic import controller_config, wait_until


def settled(ctl: Controller, job: str, namespace: str = "default") -> bool:
    """The job's latest deployment succeeded and the evaluation that verdict asks for has
    been recorded: nothing more is committed for the job on its own."""
    state = ctl.cluster.state
    dep = state.latest_deployment((namespace, job))
    return dep is not None and dep.status == "successful" and any(
        e.namespace == namespace and e.job == job and e.triggered_by == "deployment"
        and e.create_time_ns >= dep.modify_time_ns for e in state.evaluations)


@asynccontextmanager
async def live_cluster(tmp: Path, agents: int = 1, *, usage_interval: float = 10.0,
                       tls_dir: Path | None = None, keys: list[str] | None = None,
                       drivers: tuple[str, ...] = ("process",), lb: LbConfig | None = None,
                       net: str = "127.0.0", agent_settings: dict[int, dict[str, Any]] | None = None,
                       **ctl_kw: Any) -> AsyncIterator[tuple[Controller, list[Agent]]]:
    """``tls_dir``: a CA made by ``make_pki`` there, and mTLS on every connection;
    ``keys``: gossip encryption keys for every member; ``drivers``: the agents' task
    drivers; ``lb``: their load balancers' settings. The controller listens on ``net``.1,
    agent i on ``net``.(i+1), published ports included (a ``net`` of a test's own keeps its
    ports apart from other tests'); ``agent_settings``: more AgentConfig settings for agent i
    (from 1); agents the test stopped already are not stopped again."""
    if tls_dir is not None:
        ctl_kw["tls"] = pki(tls_dir, "controller")
    if keys:
        ctl_kw["keys"] = list(keys)
    ctl_kw.setdefault("rpc_addr", f"{net}.1:0")
    ctl_kw.setdefault("metrics_addr", f"{net}.1:0")
    ctl = Controller(controller_config(tmp / "ctl", bind=f"{net}.1:0", **ctl_kw))
    await ctl.start()
    assert ctl.gossip is not None
    seed = f"{ctl.gossip.addr[0]}:{ctl.gossip.addr[1]}"
    started: list[Agent] = []
    try:
        for i in range(1, agents + 1):
            host = f"{net}.{i + 1}"
            a = Agent(AgentConfig(name=f"agent-{i}", bind=f"{host}:0", join=[seed],
                                  rpc_addr=f"{host}:0", data_dir=str(tmp / f"agent-{i}"),
                                  metrics_addr=f"{host}:0", lb_bind=host,
                                  usage_interval=usage_interval,
                                  tls=pki(tls_dir, f"agent-{i}") if tls_dir else TlsConfig(),
                                  drivers=list(drivers), gossip=GossipConfig.fast(),
                                  task_user="root", allow_root_tasks=True,
                                  lb=lb or LbConfig(),
                                  keys=list(keys or ()),
                                  **{"dns": DnsConfig(addr=f"{host}:0"),
                                     **(agent_settings or {}).get(i, {})}))
            await a.start()
            started.append(a)
        ids = [a.node_id for a in started]
        await wait_until(lambda: all(ctl.cluster.connected(i) for i in ids), within=15)
        yield ctl, started
    finally:
        for a in started:
            await a.stop(stop_tasks=True)
        await ctl.stop(grace=0.5)


def make_pki(d: Path, agents: int = 3) -> Path:
    """A CA and certificates for a controller on 127.0.0.1, agents on 127.0.0.2.., a person."""
    create_ca(d)
    create_cert(d, d, role="controller", name="controller", ips=["127.0.0.1"])
    for i in range(1, agents + 1):
        create_cert(d, d, role="agent", name=f"agent-{i}", ips=[f"127.0.0.{i + 1}"])
    create_cert(d, d, role="cli", name="cli")
    return d


def pki(d: Path, name: str) -> TlsConfig:
    return TlsConfig(ca_file=str(d / "ca.pem"), cert_file=str(d / f"{name}.pem"),
                     key_file=str(d / f"{name}-key.pem"))


JOB = """
name: {name}
update: {{min_healthy_time: 0s, healthy_deadline: 20s}}
groups:
  - name: app
    count: {count}
    network:
      ports: [{{label: http}}]
    tasks:
      - name: server
        driver: process
        command: /bin/sh
        args: ["-c", "echo hello from ${{ORCH_ALLOC_INDEX}}; echo oops >&2; exec sleep 600"]
        resources: {{cpu_millicores: 100, memory_mb: {memory}}}
"""


class Cli:
    """orchctl as a real subprocess against ``addr`` (``env`` adds to its environment)."""

    def __init__(self, addr: str, tmp: Path, env: dict[str, str] | None = None) -> None:
        self.addr = addr
        self.tmp = tmp
        self.env = env or {}

    def job_file(self, name: str = "web", count: int = 2, memory: int = 32) -> str:
        path = self.tmp / f"{name}-{count}-{memory}.yaml"
        path.write_text(JOB.format(name=name, count=count, memory=memory))
        return str(path)

    async def __call__(self, *args: str, code: int = 0) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "orchctl.main", "--address", self.addr, *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **self.env})
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        text = out.decode() + err.decode()
        assert proc.returncode == code, f"orchctl {' '.join(args)} -> {proc.returncode}: {text}"
        return text

    async def json(self, *args: str, code: int = 0) -> Any:
        return json.loads(await self("-o", "json", *args, code=code))
