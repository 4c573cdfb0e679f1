"""Pure helpers at the runtime's edges: container config, environment, checks, protobuf."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.runtime import labels
from agent.runtime.allocrunner import task_checks, task_env
from agent.runtime.convert import alloc_spec_from_proto, alloc_status_to_proto
from agent.runtime.docker import DockerDriver, own_container_id, parse_time_ns, resolve_network_mode
from agent.runtime.driver import TaskConfig
from agent.runtime.state import AllocSpec, AllocStatus, TaskEvent, TaskStatus
from orch.errors import ConfigError
from orch.jobspec.model import Check, Group, Network, Port, Resources, Service, Task, group_to_proto
from orch.v1 import job_pb2, node_pb2

NET = Network(ports=(Port(label="http", to=8080), Port(label="dns", static=5353, protocol="udp")))
WEB = Task(name="web", image="nginx:1", command="/bin/run", args=("-v",),
           resources=Resources(cpu_millicores=1500, memory_mb=256), workdir="/srv", user="www",
           kill_signal="SIGQUIT", kill_timeout=7.5, checks=(Check(type="tcp", port="http"),))


def test_parse_time_ns() -> None:
    assert parse_time_ns("2024-01-02T03:04:05.123456789Z") == 1704164645_123456789
    assert parse_time_ns("2024-01-02T03:04:05Z") == 1704164645_000000000
    assert parse_time_ns("2024-01-02T04:04:05.5+01:00") == 1704164645_500000000
    assert parse_time_ns("0001-01-01T00:00:00Z") == 0


def test_container_config_maps_the_task() -> None:
    ports = {"http": 21000, "dns": 5353}
    cfg = TaskConfig(alloc_id="a", task=WEB, network=NET, ports=ports, env={"A": "1"},
                     labels={"orch.alloc": "a"}, spec_hash="h", task_dir=Path("/x"))
    body = DockerDriver(node_id="n", log_max_bytes=5 << 20, log_max_files=2,
                        bind_address="10.0.0.1").container_config(cfg)
    host = body["HostConfig"]
    assert (host["NanoCpus"], host["CpuShares"], host["Memory"]) == (1_500_000_000, 1536, 256 << 20)
    assert host["PortBindings"] == {
        "8080/tcp": [{"HostIp": "10.0.0.1", "HostPort": "21000"}],
        "5353/udp": [{"HostIp": "10.0.0.1", "HostPort": "5353"}]}
    assert body["ExposedPorts"] == {"8080/tcp": {}, "5353/udp": {}}
    assert host["LogConfig"]["Config"] == {"max-size": "5120k", "max-file": "2"}
    assert (body["Entrypoint"], body["Cmd"], body["WorkingDir"], body["User"]) == (
        ["/bin/run"], ["-v"], "/srv", "www")
    assert (body["StopSignal"], body["StopTimeout"], body["Env"]) == ("SIGQUIT", 8, ["A=1"])


def test_environment_and_service_checks() -> None:
    group = Group(name="g", tasks=(WEB,), network=NET, services=(
        Service(name="site", port="http", check=Check(type="http", path="/health")),))
    spec = AllocSpec(id="a1", name="j.g[2]", job="j", index=2, group=group)
    env = task_env(spec, WEB, {"http": 21000}, node_id="n1", address="10.0.0.1")
    assert (env["ORCH_PORT_http"], env["ORCH_HOST_PORT_http"], env["ORCH_ADDR_http"]) == (
        "8080", "21000", "10.0.0.1:21000")
    assert (env["ORCH_ALLOC_INDEX"], env["ORCH_CPU_LIMIT"], env["ORCH_NODE_ID"]) == (
        "2", "1500", "n1")
    checks = task_checks(group, WEB)
    assert [(c.name, c.type, c.port, c.path) for c in checks] == [
        ("web-tcp-0", "tcp", "http", "/"), ("service: site", "http", "http", "/health")]


def test_allocation_messages_in_and_out() -> None:
    group = Group(name="g", tasks=(WEB,), network=NET)
    pb = node_pb2.Allocation(id="a1", name="j.g[0]", job="j", job_version=4,
                             job_type=job_pb2.JOB_TYPE_BATCH, spec=group_to_proto(group),
                             ports={"http": 21000}, desired_status=node_pb2.DESIRED_STATUS_STOP)
    spec = alloc_spec_from_proto(pb)
    assert (spec.id, spec.job_version, spec.job_type, spec.desired, dict(spec.ports)) == (
        "a1", 4, "batch", "stop", {"http": 21000})
    assert spec.group.tasks[0].resources.cpu_millicores == 1500
    status = AllocStatus(alloc_id="a1", client_status="running", healthy=True, ports={"http": 1},
                         tasks={"web": TaskStatus(state="running", restarts=2, events=(
                             TaskEvent(time_ns=5, type="Started", message="ok"),))})
    out = alloc_status_to_proto(status)
    assert out.client_status == node_pb2.CLIENT_STATUS_RUNNING
    assert out.checks_healthy  # the agent reports checks; the controller decides `healthy`
    assert not out.healthy
    assert (out.tasks["web"].restarts, out.tasks["web"].events[0].type) == (2, "Started")


def test_ports_label_round_trip() -> None:
    assert labels.parse_ports(labels.format_ports({"b": 2, "a": 1})) == {"a": 1, "b": 2}
    assert labels.parse_ports("x=,=3,y=4") == {"y": 4}


def test_command_and_args_see_the_task_environment() -> None:
    from agent.runtime.allocrunner import interpolate

    task = Task(name="web", driver="process", command="${ORCH_TASK_DIR}/serve",
                args=("--port", "${ORCH_PORT_http}", "${UNKNOWN}", "plain"))
    out = interpolate(task, {"ORCH_PORT_http": "21000", "ORCH_TASK_DIR": "/t"})
    assert out.command == "/t/serve"
    assert out.args == ("--port", "21000", "${UNKNOWN}", "plain")
    assert interpolate(WEB, {}) is WEB


def test_an_agent_in_a_container_shares_its_network_with_its_tasks() -> None:
    """docker_network_mode = container:<id>: nothing published, tasks on their host ports."""
    ports = {"http": 21000, "dns": 5353}
    cfg = TaskConfig(alloc_id="a", task=WEB, network=NET, ports=ports, env={},
                     labels={}, spec_hash="h", task_dir=Path("/x"))
    body = DockerDriver(node_id="n", network_mode="container:abc").container_config(cfg)
    assert body["HostConfig"]["NetworkMode"] == "container:abc"
    assert "PortBindings" not in body["HostConfig"]
    assert body["ExposedPorts"] == {}
    spec = AllocSpec(id="a1", name="j.g[0]", job="j", index=0,
                     group=Group(name="g", tasks=(WEB,), network=NET))
    env = task_env(spec, WEB, {"http": 21000}, node_id="n1", address="127.0.0.1",
                   docker_joined=True)
    assert env["ORCH_PORT_http"] == "21000"  # `to: 8080` cannot apply without a mapping


def test_the_agents_own_container_is_found_in_mountinfo() -> None:
    cid = "3f" * 32
    line = (f"612 590 254:1 /var/lib/docker/containers/{cid}/hostname /etc/hostname rw,relatime"
            " - ext4 /dev/vda1 rw\n")
    assert own_container_id("1 0 0:1 / / rw - overlay overlay rw\n" + line) == cid
    assert own_container_id("1 0 0:1 / / rw - ext4 /dev/vda1 rw\n") is None
    assert resolve_network_mode("") == ""
    assert resolve_network_mode("container:agent-1") == "container:agent-1"
    with pytest.raises(ConfigError, match="docker_network_mode"):
        resolve_network_mode("bridge")


def test_a_host_without_docker_gets_the_default_socket_not_a_crash(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """aiodocker asserts when it finds no socket; the driver names the default one, so that
    an agent on a host without Docker starts with the docker driver unhealthy."""
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert DockerDriver(node_id="n").url == "unix:///var/run/docker.sock"
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2375")
    assert DockerDriver(node_id="n").url == "tcp://127.0.0.1:2375"
