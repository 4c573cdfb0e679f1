"""Volumes, everywhere but on a real engine: the job file, the agent's [[host_volume]]
tables, placement by host volume (with the reason in the plan), what a task mounts on a
node, its spec hash, the Docker mount, the listing, and reading mount tables."""

from __future__ import annotations

import dataclasses
from pathlib import Path, PurePosixPath

import pytest

from agent.config import AgentConfig
from agent.runtime import binds, labels
from agent.runtime.allocrunner import AllocRunner
from agent.runtime.config import HostVolume, RuntimeConfig
from agent.runtime.docker import DockerDriver
from agent.runtime.driver import TaskConfig
from agent.runtime.state import AllocSpec
from agent.runtime.volumes import Mount, in_task_dir, task_mounts, volume_env
from controller.scheduler import ClusterSnapshot
from controller.scheduler.reconcile import is_destructive
from controller.volumes import volume_entries
from orch import config as configfile
from orch.errors import ConfigError, JobSpecError
from orch.jobspec import parse_job
from orch.jobspec.model import (
    Group,
    Network,
    Port,
    Resources,
    Task,
    Volume,
    VolumeMount,
    group_from_proto,
    group_to_proto,
    job_from_proto,
)
from orch.v1 import node_pb2
from orch.vocab import host_volume_attributes
from tests.unit.scheduler.factories import job, node, placed_on, run

KV = """
name: kv
groups:
  - name: db
    count: 2
    volumes:
      data: {type: docker, source: kvdata, per_alloc: true}
      conf: {source: etc-kv, read_only: true}
      scratch: {}
    tasks:
      - name: kv
        image: busybox
        volume_mounts:
          - {volume: data, destination: /var/lib/kv}
          - {volume: conf, destination: /etc/kv}
      - name: helper
        driver: process
        command: /bin/sleep
        volume_mounts:
          - {volume: scratch, destination: tmp/scratch, read_only: true}
"""


def problems(text: str) -> list[str]:
    try:
        parse_job(text)
    except JobSpecError as e:
        return [f"{p.path}: {p.message}" for p in e.problems]
    return []


# --- the job file ----------------------------------------------------------------------------

def test_a_job_file_with_volumes_reads_into_the_model_and_back() -> None:
    pb = parse_job(KV)
    g = job_from_proto(pb).groups[0]
    assert g.volumes == {
        "data": Volume(type="docker", source="kvdata", per_alloc=True),
        "conf": Volume(type="host", source="etc-kv", read_only=True),
        "scratch": Volume(type="host", source="scratch")}  # the source defaults to the name
    assert g.tasks[0].volume_mounts == (VolumeMount(volume="data", destination="/var/lib/kv"),
                                        VolumeMount(volume="conf", destination="/etc/kv"))
    assert g.volumes["data"].source_for(1) == "kvdata-1"
    assert g.volumes["conf"].source_for(1) == "etc-kv"
    assert group_from_proto(group_to_proto(g)) == g


@pytest.mark.parametrize(("group_extra", "task_extra", "expected"), [
    ("    volumes: {d: {type: nfs}}", "", "groups[0].volumes.d.type: must be one of host, docker"),
    ("    volumes: {d: {source: 'a b'}}", "", "groups[0].volumes.d.source: must be a volume name"),
    ("    volumes: {d: {type: docker, source: x}}", "",
     "groups[0].volumes.d.source: a Docker volume's name has at least 2 characters"),
    ("    volumes: {d: {per_alloc: true}}", "",
     "groups[0].volumes.d.per_alloc: applies to docker volumes"),
    ("", "        volume_mounts: [{volume: data, destination: /d}]",
     "groups[0].tasks[0].volume_mounts[0].volume: no volume 'data': the group declares no "
     "volumes"),
    ("    volumes: {data: {}}", "        volume_mounts: [{volume: dta, destination: /d}]",
     "volume_mounts[0].volume: no volume 'dta' in the group; did you mean 'data'?"),
    ("    volumes: {data: {}}", "        volume_mounts: [{volume: data}]",
     "volume_mounts[0].destination: is required"),
    ("    volumes: {data: {}}", "        volume_mounts: [{volume: data, destination: d}]",
     "volume_mounts[0].destination: must be an absolute path in the container, got 'd'"),
    ("    volumes: {data: {}}", "        volume_mounts: [{volume: data, destination: /a/../b}]",
     "volume_mounts[0].destination: must not contain '..'"),
    ("    volumes: {data: {}}", "        volume_mounts: [{volume: data, destination: /}]",
     "volume_mounts[0].destination: must not be the root folder"),
    ("    volumes: {data: {}}",
     "        volume_mounts: [{volume: data, destination: /d}, {volume: data, destination: /d/}]",
     "groups[0].tasks[0].volume_mounts: destination '/d' is used 2 times"),
])
def test_bad_volumes_are_named_with_their_field(group_extra: str, task_extra: str,
                                               expected: str) -> None:
    text = f"""
name: web
groups:
  - name: g
{group_extra}
    tasks:
      - name: t
        image: nginx
{task_extra}
"""
    found = problems(text)
    assert any(expected in p for p in found), found


def test_a_process_task_cannot_mount_a_docker_volume() -> None:
    text = KV.replace("{volume: scratch, destination: tmp/scratch, read_only: true}",
                      "{volume: data, destination: d}")
    assert problems(text) == ["groups[0].tasks[1].volume_mounts[0].volume: volume 'data' is a "
                              "Docker volume: only docker tasks mount those (use a host volume)"]


def test_changing_a_volume_replaces_the_allocation() -> None:
    g = job_from_proto(parse_job(KV)).groups[0]
    moved = dataclasses.replace(g, volumes={**g.volumes, "conf": Volume(source="elsewhere")})
    assert is_destructive(g, moved)
    assert not is_destructive(g, g)


# --- the agent's host volumes ------------------------------------------------------------------

def test_host_volumes_load_from_agent_toml_and_become_attributes() -> None:
    cfg = configfile.build(AgentConfig, {"host_volume": [
        {"name": "data", "path": "/srv/data"},
        {"name": "certs", "path": "/etc/ssl/private", "read_only": True}]})
    assert cfg.host_volume == [HostVolume(name="data", path="/srv/data"),
                               HostVolume(name="certs", path="/etc/ssl/private", read_only=True)]
    assert host_volume_attributes((v.name, v.read_only) for v in cfg.host_volume) == {
        "host_volume.data": "rw", "host_volume.certs": "ro"}


@pytest.mark.parametrize(("volumes", "where", "what"), [
    ([{"name": "bad name", "path": "/x"}], "host_volume[0]", "use 1 to 63 letters"),
    ([{"name": "d", "path": "relative"}], "host_volume[0]", "path must be an absolute folder"),
    ([{"name": "d", "path": "/a/../etc"}], "host_volume[0]", "without '..'"),
    ([{"name": "d"}], "host_volume[0]", "path"),
    ([{"name": "d", "path": "/x", "mode": "ro"}], "host_volume[0].mode", "unknown setting"),
    ([{"name": "d", "path": "/x"}, {"name": "d", "path": "/y"}], "",
     "host_volume d is declared more than once"),
])
def test_bad_host_volumes_say_where_and_what(volumes: list[dict[str, object]], where: str,
                                             what: str) -> None:
    with pytest.raises(ConfigError) as e:
        configfile.build(AgentConfig, {"host_volume": volumes})
    assert where in str(e.value)
    assert what in str(e.value)


# --- placement ---------------------------------------------------------------------------------

def _with_volume(read_only: bool = False, mount_read_only: bool = False) -> Group:
    return Group(name="web", tasks=(Task(
        name="main", image="app:1", resources=Resources(cpu_millicores=100, memory_mb=64),
        volume_mounts=(VolumeMount(volume="d", destination="/d", read_only=mount_read_only),)),),
        volumes={"d": Volume(source="data", read_only=read_only)})


def test_a_group_goes_only_where_its_host_volume_is() -> None:
    snap = ClusterSnapshot([node(1), node(2, attributes={"host_volume.data": "rw"}),
                            node(3, attributes={"host_volume.other": "rw"})])
    plan = run(job(_with_volume()), snap)
    assert set(placed_on(plan)) == {"n2"}
    alone = run(job(_with_volume()), ClusterSnapshot([node(1), node(3, attributes={
        "host_volume.other": "rw"})]))
    assert "2 nodes filtered by missing host volume data" in alone.explain()[0]


def test_a_group_that_writes_is_not_placed_on_a_read_only_host_volume() -> None:
    ro = ClusterSnapshot([node(1, attributes={"host_volume.data": "ro"})])
    assert "1 node filtered by host volume data is read-only" in run(
        job(_with_volume()), ro).explain()[0]
    assert set(placed_on(run(job(_with_volume(read_only=True)), ro))) == {"n1"}
    assert set(placed_on(run(job(_with_volume(mount_read_only=True)), ro))) == {"n1"}


# --- on a node ---------------------------------------------------------------------------------

def test_mounts_resolve_on_the_node_and_say_what_is_missing() -> None:
    g = job_from_proto(parse_job(KV)).groups[0]
    have = [HostVolume(name="etc-kv", path="/srv/kv-etc"),
            HostVolume(name="scratch", path="/srv/scratch", read_only=True)]
    mounts, missing = task_mounts(g, 1, g.tasks[0], have)
    assert missing == []
    assert mounts == (
        Mount(volume="data", type="docker", source="kvdata-1", destination="/var/lib/kv",
              read_only=False),
        Mount(volume="conf", type="host", source="/srv/kv-etc", destination="/etc/kv",
              read_only=True))
    mounts, missing = task_mounts(g, 0, g.tasks[1], have[:1])
    assert mounts == ()
    assert missing == ["host volume 'scratch' is not declared there "
                       "(agent.toml: [[host_volume]])"]
    assert in_task_dir("/tmp//scratch/") == PurePosixPath("tmp/scratch")
    assert volume_env(mounts, {}) == {}
    assert volume_env([Mount(volume="my-data", type="host", source="/s", destination="/d",
                             read_only=False)], {"my-data": "/d"}) == {"ORCH_VOLUME_my_data": "/d"}


def test_the_task_finds_its_volumes_in_its_environment(tmp_path: Path) -> None:
    g = job_from_proto(parse_job(KV)).groups[0]
    config = RuntimeConfig(node_id="n1", data_dir=tmp_path, host_volume=[
        HostVolume(name="etc-kv", path="/srv/kv-etc"), HostVolume(name="scratch", path="/s")])
    runner = AllocRunner(AllocSpec(id="a1", name="kv.db[1]", job="kv", index=1, group=g),
                         config=config, drivers={}, ports={}, notify=lambda _: None)
    docker = runner.task_config(g.tasks[0])
    assert (docker.env["ORCH_VOLUME_data"], docker.env["ORCH_VOLUME_conf"]) == (
        "/var/lib/kv", "/etc/kv")
    process = runner.task_config(g.tasks[1])
    assert process.env["ORCH_VOLUME_scratch"] == str(tmp_path / "alloc/a1/helper/local/tmp/scratch")
    assert [m.source for m in process.mounts] == ["/s"]


def test_a_task_without_volumes_keeps_the_spec_hash_it_always_had() -> None:
    # computed by the agent before volumes existed: an upgraded agent adopts the task
    task = Task(name="web", image="nginx:1", args=("a",), env={"A": "1"},
                resources=Resources(cpu_millicores=200))
    net = Network(ports=(Port(label="http"),))
    assert labels.spec_hash(task, net, {"http": 20000}) == "4a043fa30d37863b"
    mount = Mount(volume="d", type="host", source="/a", destination="/d", read_only=False)
    with_mount = labels.spec_hash(task, net, {"http": 20000}, [mount])
    assert with_mount != "4a043fa30d37863b"
    moved = Mount(volume="d", type="host", source="/b", destination="/d", read_only=False)
    assert labels.spec_hash(task, net, {"http": 20000}, [moved]) != with_mount


def test_docker_mounts_are_binds_and_labelled_named_volumes() -> None:
    task = Task(name="kv", image="busybox")
    cfg = TaskConfig(alloc_id="a", task=task, network=Network(), ports={}, env={},
                     labels={labels.JOB: "kv", labels.NAMESPACE: "default", labels.GROUP: "db"},
                     spec_hash="h", task_dir=Path("/x"), mounts=(
                         Mount(volume="conf", type="host", source="/srv/etc", destination="/etc/kv",
                               read_only=True),
                         Mount(volume="data", type="docker", source="kvdata-0",
                               destination="/var/lib/kv", read_only=False)))
    host = DockerDriver(node_id="n").container_config(cfg)["HostConfig"]
    assert host["Mounts"] == [
        {"Type": "bind", "Source": "/srv/etc", "Target": "/etc/kv", "ReadOnly": True,
         "BindOptions": {"Propagation": "rprivate"}},
        {"Type": "volume", "Source": "kvdata-0", "Target": "/var/lib/kv", "ReadOnly": False,
         "VolumeOptions": {"Labels": {"orch.managed": "true", "orch.namespace": "default",
                                      "orch.job": "kv", "orch.group": "db"}}}]


# --- the listing, and mount tables -------------------------------------------------------------

def test_the_listing_shows_host_volumes_and_the_docker_volumes_in_use() -> None:
    g = job_from_proto(parse_job(KV)).groups[0]
    nodes = {"n1": node_pb2.Node(id="n1", name="agent-1", host_volumes=[
        node_pb2.HostVolume(name="etc-kv", path="/srv/etc"),
        node_pb2.HostVolume(name="idle", path="/srv/idle", read_only=True)])}
    allocs = [node_pb2.Allocation(id=f"a{i}", node_id="n1", index=i,
                                  desired_status=node_pb2.DESIRED_STATUS_RUN) for i in (0, 1)]
    allocs.append(node_pb2.Allocation(id="gone", node_id="n1", index=5,
                                      desired_status=node_pb2.DESIRED_STATUS_STOP,
                                      client_status=node_pb2.CLIENT_STATUS_COMPLETE))
    got = [(e.node, e.name, e.type, e.path, e.read_only, list(e.allocations))
           for e in volume_entries(nodes, allocs, lambda a: g)]
    assert got == [("agent-1", "kvdata-0", "docker", "", False, ["a0"]),
                   ("agent-1", "kvdata-1", "docker", "", False, ["a1"]),
                   ("agent-1", "etc-kv", "host", "/srv/etc", False, ["a0", "a1"]),
                   ("agent-1", "idle", "host", "/srv/idle", True, [])]
    used = volume_entries(nodes, allocs, lambda a: g, with_unused=False)
    assert "idle" not in [e.name for e in used]


def test_mount_points_below_a_folder_are_read_from_mountinfo_deepest_first() -> None:
    info = (
        "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "40 22 8:1 /srv/a /var/lib/orch/alloc/x/t/local/a rw - ext4 /dev/sda1 rw\n"
        "41 40 8:1 /srv/b /var/lib/orch/alloc/x/t/local/a/b rw - ext4 /dev/sda1 rw\n"
        "42 22 8:1 /srv/c /var/lib/orch/alloc/x/t/local/with\\040space rw - ext4 /dev/sda1 rw\n"
        "43 22 8:1 /srv/d /var/lib/orch/alloc/x/t2/local/d rw - ext4 /dev/sda1 rw\n")
    assert binds.mounts_under(Path("/var/lib/orch/alloc/x/t"), info) == [
        "/var/lib/orch/alloc/x/t/local/a/b", "/var/lib/orch/alloc/x/t/local/a",
        "/var/lib/orch/alloc/x/t/local/with space"]
    assert binds.mounts_under(Path("/var/lib/orch/alloc/x/t/local/a/b"), info) == []


def test_an_allocation_whose_host_volume_this_node_lacks_fails_saying_so(tmp_path: Path) -> None:
    g = job_from_proto(parse_job(KV)).groups[0]
    config = RuntimeConfig(node_id="n1", node_name="agent-7", data_dir=tmp_path,
                           host_volume=[HostVolume(name="etc-kv", path="/srv/kv-etc")])
    runner = AllocRunner(AllocSpec(id="a1", name="kv.db[0]", job="kv", group=g), config=config,
                         drivers={"docker": DockerDriver(node_id="n1"),
                                  "process": DockerDriver(node_id="n1")},
                         ports={}, notify=lambda _: None)
    runner.start()  # nothing starts: the helper's volume is missing
    status = runner.status()
    assert status.client_status == "failed"
    assert runner.tasks == {}
    (event,) = status.tasks["helper"].events
    assert (event.type, event.message) == (
        "Setup Failure", "task 'helper' cannot start on node agent-7: host volume 'scratch' is "
        "not declared there (agent.toml: [[host_volume]])")
