"""Secrets and templates reaching a real task (process driver, a secure cluster, the task
running as an unprivileged user): its files on a tmpfs owned by it and readable by it
alone, a variable only where asked, a template re-rendered when a secret changes (the task
signalled as the job says) and a secret's own change restarting it."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import grpc
import pytest

from agent.server import Agent
from controller.server import Controller
from orch.jobspec import parse_job
from orch.v1 import controller_pb2, controller_pb2_grpc
from tests.docker_engine import remove_node_containers
from tests.integration.live import Cli, live_cluster
from tests.integration.synthetic import wait_until
from tests.integration.test_trust import agent_config, bootstrapped

JOB = """
name: app
type: service
groups:
  - name: g
    count: 1
    tasks:
      - name: main
        driver: process
        command: /bin/sh
        args: ["-c", "trap 'echo hup; cat app.conf' HUP; cat $ORCH_SECRETS_DIR/db; echo;
                echo env=$DB_PASSWORD; cat app.conf;
                while true; do sleep 0.2; done"]
        secrets:
          - {name: db, env: DB_PASSWORD}
        templates:
          - destination: local/app.conf
            data: "key={{ secret('api') }} node={{ node.name }}\\n"
            change_mode: signal
            change_signal: SIGHUP
        resources: {cpu_millicores: 50, memory_mb: 32}
"""


async def _put(cli: Cli, tmp: Path, name: str, value: str) -> None:
    src = tmp / f"{name}.value"
    src.write_text(value)
    await cli("secret", "put", name, "-f", str(src))


def _running(ctl: Controller) -> list[str]:
    return [a.id for a in ctl.cluster.state.allocs_of_job(("default", "app"))
            if a.desired_status == 1 and a.client_status == 2]


async def test_a_task_gets_its_secrets_and_templates_and_follows_their_changes(
        tmp_path: Path) -> None:
    # the task runs as another user and reads its secrets by their absolute path, as it
    # would under /var/lib/orch (0755): let it through pytest's private folders
    for d in [tmp_path, *tmp_path.parents]:
        if d == Path("/tmp") or not str(d).startswith("/tmp/"):
            break
        d.chmod(d.stat().st_mode | 0o011)
    async with bootstrapped(tmp_path) as (ctl, cli):
        token = (await cli("cluster", "join-token", "agent", "-q")).strip()
        agent = Agent(agent_config(tmp_path, ctl, token))
        await agent.start()
        try:
            await _put(cli, tmp_path, "db", "pw-1")
            await _put(cli, tmp_path, "api", "key-1")
            job = tmp_path / "app.yaml"
            job.write_text(JOB)
            await cli("job", "run", "--detach", str(job))
            await wait_until(lambda: len(_running(ctl)) == 1, within=40)
            alloc = _running(ctl)[0]

            async def logs() -> str:
                return await cli("alloc", "logs", alloc)
            await wait_until(lambda: _has(logs(), "key=key-1 node=agent-1"), within=20)
            text = await logs()
            assert "pw-1" in text
            assert "env=pw-1" in text
            task_dir = Path(agent.cfg.data_dir) / "alloc" / alloc / "main"
            secret = task_dir / "secrets" / "db"
            st = secret.stat()
            assert st.st_mode & 0o777 == 0o400
            user = pwd.getpwuid(st.st_uid).pw_name
            assert user in ("orch-task", "nobody")
            if os.geteuid() == 0:
                assert _mounted(task_dir / "secrets")

            # a template's input changes: rendered again, SIGHUP, no restart
            await _put(cli, tmp_path, "api", "key-2")
            await wait_until(lambda: _has(logs(), "key=key-2"), within=15)
            assert "hup" in await logs()
            status = await cli.json("alloc", "status", alloc)
            assert status["tasks"]["main"].get("restarts", 0) == 0
            # a secret it reads as a file and a variable changes: restarted with the new one
            await _put(cli, tmp_path, "db", "pw-2")
            await wait_until(lambda: _has(logs(), "env=pw-2"), within=20)
            status = await cli.json("alloc", "status", alloc)
            assert status["tasks"]["main"]["restarts"] == 1
            assert (task_dir / "secrets" / "db").read_text() == "pw-2"
            # stopped: the tmpfs goes with the task
            await cli("job", "stop", "--purge", "app")
            await wait_until(lambda: not (task_dir / "secrets").exists(), within=20)
            assert not _mounted(task_dir / "secrets")
        finally:
            await agent.stop(stop_tasks=True)


async def _has(text: object, needle: str) -> bool:
    return needle in await text  # type: ignore[misc]


def _mounted(path: Path) -> bool:
    return str(path) in Path("/proc/self/mounts").read_text()


DOCKER_JOB = """
name: dapp
groups:
  - name: g
    count: 1
    tasks:
      - name: main
        driver: docker
        image: {image}
        command: /bin/sh
        args: ["-c", "cat /secrets/db; echo; echo env=$DB_PASSWORD; cat /local/app.conf;
                ls -ln /secrets; echo end-of-files; exec sleep 600"]
        secrets:
          - {{name: db, env: DB_PASSWORD}}
        templates:
          - destination: local/app.conf
            data: "key={{{{ secret('api') }}}}\\n"
        resources: {{cpu_millicores: 50, memory_mb: 32}}
"""


@pytest.mark.docker
async def test_a_container_gets_its_secrets_and_templates(tmp_path: Path,
                                                          test_image: str) -> None:
    nodes: list[str] = []
    try:
        async with live_cluster(tmp_path, agents=1, net="127.0.46",
                                drivers=("docker",)) as (ctl, agents):
            nodes.append(agents[0].node_id)
            api = controller_pb2_grpc.ControllerServiceStub(
                grpc.aio.insecure_channel(ctl.rpc_address))
            for name, value in (("db", b"pw-1"), ("api", b"key-1")):
                await api.PutSecret(controller_pb2.PutSecretRequest(name=name, value=value))
            job = parse_job(DOCKER_JOB.format(image=test_image))
            await api.RegisterJob(controller_pb2.RegisterJobRequest(job=job))
            await wait_until(lambda: _running_of(ctl, "dapp"), within=60)
            alloc = _running_of(ctl, "dapp")[0]

            async def logs() -> str:
                out = b""
                async for chunk in api.AllocationLogs(controller_pb2.LogsRequest(alloc_id=alloc)):
                    out += chunk.data
                return out.decode()
            # the last line printed: the log holds everything before it
            await wait_until(lambda: _has(logs(), "end-of-files"), within=20)
            text = await logs()
            assert "pw-1" in text
            assert "env=pw-1" in text
            assert "-r--r--r--" in text  # 0444 in the container: root's, read-only
            # a template's secret changes (change_mode restart): a new container reads it
            await api.PutSecret(controller_pb2.PutSecretRequest(name="api", value=b"key-2"))
            await wait_until(lambda: _has(logs(), "key=key-2"), within=60)
    finally:
        for node in nodes:
            remove_node_containers(node)


def _running_of(ctl: Controller, job: str) -> list[str]:
    return [a.id for a in ctl.cluster.state.allocs_of_job(("default", job))
            if a.desired_status == 1 and a.client_status == 2]
