"""Volumes on real engines: process tasks with host volumes bound into their folders (read
and write, read-only, the data kept when the folder goes); Docker tasks with host binds and
named volumes (the data kept across containers); and a cluster on real sockets that places
a group only where its host volume is, says why when none has it, and lists volumes."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.runtime import binds
from agent.runtime.allocrunner import AllocRunner
from agent.runtime.config import HostVolume, RuntimeConfig
from agent.runtime.docker import DockerDriver
from agent.runtime.driver import TaskConfig, TaskDriver, TaskHandle
from agent.runtime.process import ProcessDriver
from agent.runtime.state import AllocSpec
from agent.server import Agent
from orch.errors import ConfigError, StartError
from orch.jobspec.model import Group, Task, Volume, VolumeMount
from tests.docker_engine import docker
from tests.integration.live import Cli, live_cluster
from tests.integration.synthetic import wait_until

pytestmark = pytest.mark.timeout(60)
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")


def task_config(data_dir: Path, group: Group, host_volumes: list[HostVolume],
                alloc_id: str = "a1", node_id: str = "node-vol-test") -> TaskConfig:
    """The first task's config as the agent makes it (mounts and ORCH_VOLUME_* included)."""
    config = RuntimeConfig(node_id=node_id, data_dir=data_dir, host_volume=host_volumes)
    spec = AllocSpec(id=alloc_id, name="j.g[0]", job="j", group=group)
    runner = AllocRunner(spec, config=config, drivers={}, ports={}, notify=lambda _: None)
    return runner.task_config(group.tasks[0])


async def output(d: TaskDriver, h: TaskHandle) -> str:
    return b"".join([c.data async for c in d.logs(h, "stdout")]).decode()


@pytest.fixture
async def process(tmp_path: Path) -> AsyncIterator[ProcessDriver]:
    d = ProcessDriver(tmp_path, node_id="node-vol-test", task_user="root", allow_root=True)
    await d.open()
    yield d
    await d.close()
    binds.unbind_all(tmp_path)


SCRIPT = """
cat "$ORCH_VOLUME_conf/greeting"
echo written > "$ORCH_VOLUME_data/out"
if (echo x > "$ORCH_VOLUME_conf/x") 2>/dev/null; then echo conf-writable; else echo conf-read-only; fi
"""


def two_volumes(driver: str, data_dest: str, conf_dest: str, **task: object) -> Group:
    return Group(name="g", tasks=(Task(
        name="t", driver=driver, volume_mounts=(
            VolumeMount(volume="data", destination=data_dest),
            VolumeMount(volume="conf", destination=conf_dest, read_only=True)),
        **task),),  # type: ignore[arg-type]
        volumes={"data": Volume(source="data"), "conf": Volume(source="conf")})


@root_only
async def test_a_process_task_gets_its_host_volumes_bound_in_its_folder(
        process: ProcessDriver, tmp_path: Path) -> None:
    data, conf = tmp_path / "srv-data", tmp_path / "srv-conf"
    data.mkdir()
    conf.mkdir()
    (conf / "greeting").write_text("hello from the host\n")
    group = two_volumes("process", "data", "/etc/app", command="/bin/sh", args=("-c", SCRIPT))
    cfg = task_config(tmp_path, group, [HostVolume(name="data", path=str(data)),
                                        HostVolume(name="conf", path=str(conf))])
    h = await process.start(cfg)
    assert (await process.wait(h)).exit_code == 0
    assert await output(process, h) == "hello from the host\nconf-read-only\n"
    assert (data / "out").read_text() == "written\n"
    local = cfg.task_dir / "local"
    assert sorted(binds.mounts_under(cfg.task_dir)) == [str(local / "data"),
                                                       str(local / "etc/app")]
    # the task's folder goes; the volume's data stays, and nothing is left mounted
    await process.destroy(h)
    assert not cfg.task_dir.exists()
    assert (data / "out").read_text() == "written\n"
    assert (conf / "greeting").exists()
    assert binds.mounts_under(tmp_path / "alloc") == []


@root_only
async def test_a_link_planted_in_the_folder_does_not_move_the_mount(
        process: ProcessDriver, tmp_path: Path) -> None:
    data = tmp_path / "srv-data"
    data.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    group = Group(name="g", tasks=(Task(
        name="t", driver="process", command="/bin/true",
        volume_mounts=(VolumeMount(volume="data", destination="sub/data"),)),),
        volumes={"data": Volume(source="data")})
    cfg = task_config(tmp_path, group, [HostVolume(name="data", path=str(data))])
    (cfg.task_dir / "local").mkdir(parents=True)
    (cfg.task_dir / "local" / "sub").symlink_to(elsewhere)  # as the task's user could
    with pytest.raises(StartError, match="'sub' is not a folder"):
        await process.start(cfg)
    assert binds.mounts_under(tmp_path) == []
    assert list(elsewhere.iterdir()) == []


def test_an_agent_without_the_privilege_to_mount_is_told_so(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "local").mkdir()
    child = ("import sys; from pathlib import Path, PurePosixPath; from agent.runtime import "
             "binds\ntry:\n  binds.bind(sys.argv[1], Path(sys.argv[2]), PurePosixPath('d'), "
             "read_only=False)\nexcept binds.BindUnavailable as e:\n  print('unavailable', "
             "e.errno)\n")
    argv = [sys.executable, "-c", child, str(tmp_path / "src"), str(tmp_path / "local")]
    if os.geteuid() == 0:  # root without CAP_SYS_ADMIN, as in the systemd unit's sandbox
        argv = ["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.strip() == f"unavailable {errno.EPERM}", done.stderr
    assert binds.mounts_under(tmp_path) == []


@root_only
async def test_without_mounts_a_process_task_gets_the_path_unless_read_only(
        process: ProcessDriver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object, **__: object) -> None:  # as an agent without CAP_SYS_ADMIN
        raise binds.BindUnavailable(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(binds, "bind", refuse)
    data = tmp_path / "srv-data"
    data.mkdir()
    group = Group(name="g", tasks=(Task(
        name="t", driver="process", command="/bin/sh", args=("-c", 'echo "$ORCH_VOLUME_data"'),
        volume_mounts=(VolumeMount(volume="data", destination="data"),)),),
        volumes={"data": Volume(source="data")})
    cfg = task_config(tmp_path, group, [HostVolume(name="data", path=str(data))])
    h = await process.start(cfg)
    await process.wait(h)
    assert await output(process, h) == f"{data}\n"
    await process.destroy(h)
    ro = task_config(tmp_path, group, [HostVolume(name="data", path=str(data), read_only=True)],
                     alloc_id="a2")
    with pytest.raises(StartError, match=r"cannot mount volume 'data' of task 't' read-only"):
        await process.start(ro)


# --- Docker ------------------------------------------------------------------------------------

@pytest.fixture
async def docker_driver(node_id: str, docker_url: str) -> AsyncIterator[DockerDriver]:
    d = DockerDriver(node_id=node_id, url=docker_url)
    await d.open()
    assert d.status.healthy, d.status.detail
    yield d
    await d.close()


@pytest.mark.docker
async def test_a_docker_task_binds_host_volumes_and_mounts_named_ones(
        docker_driver: DockerDriver, node_id: str, test_image: str, tmp_path: Path) -> None:
    data, conf = tmp_path / "srv-data", tmp_path / "srv-conf"
    data.mkdir()
    conf.mkdir()
    (conf / "greeting").write_text("hello from the host\n")
    group = two_volumes("docker", "/data", "/etc/app", image=test_image, command="/bin/sh",
                        args=("-c", SCRIPT))
    cfg = task_config(tmp_path, group, [HostVolume(name="data", path=str(data)),
                                        HostVolume(name="conf", path=str(conf))], node_id=node_id)
    h = await docker_driver.start(cfg)
    assert (await docker_driver.wait(h)).exit_code == 0
    assert await output(docker_driver, h) == "hello from the host\nconf-read-only\n"
    assert (data / "out").read_text() == "written\n"
    await docker_driver.destroy(h)
    assert (data / "out").exists()


@pytest.mark.docker
async def test_a_named_volume_keeps_its_data_across_containers(
        docker_driver: DockerDriver, node_id: str, test_image: str, tmp_path: Path) -> None:
    name = f"orch-test-{uuid.uuid4().hex[:8]}"
    script = 'n=$(cat /data/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/n; echo $n'
    group = Group(name="g", tasks=(Task(
        name="t", image=test_image, command="/bin/sh", args=("-c", script),
        volume_mounts=(VolumeMount(volume="state", destination="/data"),)),),
        volumes={"state": Volume(type="docker", source=name, per_alloc=True)})
    try:
        for alloc_id, expected in (("a1", "1\n"), ("a2", "2\n")):  # a new container each time
            cfg = task_config(tmp_path, group, [], alloc_id=alloc_id, node_id=node_id)
            h = await docker_driver.start(cfg)
            assert (await docker_driver.wait(h)).exit_code == 0
            assert await output(docker_driver, h) == expected
            await docker_driver.destroy(h)
        (info,) = json.loads(docker("volume", "inspect", f"{name}-0"))
        assert info["Labels"]["orch.job"] == "j"
        assert info["Labels"]["orch.managed"] == "true"
    finally:
        docker("volume", "rm", "-f", f"{name}-0", check=False)


# --- a cluster ---------------------------------------------------------------------------------

JOB = """
name: {name}
update: {{min_healthy_time: 0s, healthy_deadline: 20s}}
groups:
  - name: app
    volumes:
      data: {{source: {source}}}
    tasks:
      - name: server
        driver: process
        command: /bin/sh
        args: ["-c", "echo up >> $ORCH_VOLUME_data/log; exec sleep 600"]
        volume_mounts: [{{volume: data, destination: data}}]
        resources: {{cpu_millicores: 50, memory_mb: 16}}
"""


@root_only
async def test_a_group_is_placed_where_its_host_volume_is(tmp_path: Path) -> None:
    srv = tmp_path / "srv-data"
    srv.mkdir()
    settings = {2: {"host_volume": [HostVolume(name="data", path=str(srv))]}}
    async with live_cluster(tmp_path, agents=2, net="127.0.21",
                            agent_settings=settings) as (ctl, agents):
        cli = Cli(ctl.rpc_address, tmp_path)
        await wait_until(lambda: any(n.host_volumes for n in ctl.cluster.state.nodes.values()),
                         within=10)
        nowhere = tmp_path / "nowhere.yaml"
        nowhere.write_text(JOB.format(name="lost", source="nowhere"))
        index = ctl.cluster.state.index
        text = await cli("job", "plan", str(nowhere), code=3)
        assert "2 nodes filtered by missing host volume nowhere" in text
        assert ctl.cluster.state.index == index  # a plan changes nothing

        job = tmp_path / "stateful.yaml"
        job.write_text(JOB.format(name="stateful", source="data"))
        await cli("job", "run", str(job))
        (alloc,) = [a for a in ctl.cluster.state.allocs.values() if a.job == "stateful"]
        assert alloc.node_id == agents[1].node_id
        await wait_until(lambda: (srv / "log").exists(), within=15)
        assert (srv / "log").read_text() == "up\n"

        listed = await cli.json("volume", "list")
        assert [(v["node"], v["name"], v["type"], v["path"], v["allocations"])
                for v in listed] == [("agent-2", "data", "host", str(srv), [alloc.id])]
        table = await cli("volume", "list", "--node", "agent-2")
        assert "read-write" in table
        assert alloc.id[:8] in table
        assert await cli.json("volume", "list", "--node", "agent-1") == []
        assert str(srv) in await cli("node", "status", "agent-2")
        await cli("job", "stop", "stateful")
    assert (srv / "log").read_text() == "up\n"  # the agents stopped their tasks; the data stays


async def test_an_agent_refuses_a_host_volume_that_is_not_there(tmp_path: Path) -> None:
    missing = tmp_path / "not-made"
    cfg = AgentConfig(name="a", bind="127.0.0.22:0", rpc_addr="127.0.0.22:0",
                      data_dir=str(tmp_path / "agent"), metrics_addr="", drivers=["process"],
                      host_volume=[HostVolume(name="data", path=str(missing))])
    with pytest.raises(ConfigError, match=r"host_volume\[0\]\.path: host volume 'data': "
                                          rf"{missing} is not a folder on this node"):
        await Agent(cfg).start()
