"""A real partition on the Compose harness (the agent's network cut with ``docker network
disconnect``, its process left running): with the group's disconnect block, the cut-off agent
stops its tasks once it has heard no controller for ``stop_after``, while the controller
places replacements elsewhere, so no replica runs twice for longer than ``stop_after`` + 1 s;
once the partition heals, each replica runs exactly once."""

from __future__ import annotations

import time

import pytest

from orch.jobspec.durations import parse_duration
from orch.v1 import job_pb2, node_pb2
from tests.docker_engine import docker
from tests.e2e.harness import Harness, wait, web_job

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.timeout(300)]

STOP_AFTER = 5.0
DOWN = node_pb2.NODE_STATUS_DOWN


def with_disconnect(job: job_pb2.Job) -> job_pb2.Job:
    d = job.groups[0].disconnect
    d.stop_after.FromNanoseconds(parse_duration(f"{STOP_AFTER:g}s"))
    return job


def test_a_cut_off_agent_stops_its_tasks_so_nothing_runs_twice(cluster: Harness) -> None:
    name = "web-cut"
    version = cluster.run(with_disconnect(web_job(name))).version
    wait(f"{name} deployed", lambda: cluster.deployed(name, version, 5), 90)
    victim = "agent-5"
    originals = {a.id for a in cluster.running(name) if cluster.node_of(a) == victim}
    assert originals

    docker("network", "disconnect", cluster.network, cluster.container(victim))
    cut = time.monotonic()
    twice = 0.0            # seconds during which more than five replicas ran
    last = cut
    moved = stopped = None
    deadline = cut + 90
    while time.monotonic() < deadline:
        containers = cluster.job_containers(name)
        now = time.monotonic()
        if sum(len(c) for c in containers.values()) > 5:
            twice += now - last
        last = now
        if stopped is None and not set(containers) & originals:
            stopped = now - cut
        if moved is None and len(set(containers) - originals) >= 5:
            moved = now - cut
        if stopped is not None and moved is not None:
            break
        time.sleep(0.2)
    assert stopped is not None, "the cut-off agent never stopped its tasks"
    assert moved is not None, "the controller never replaced the cut-off agent's work"
    # the agent's own clock: stop_after from the last heartbeat (1 s apart) plus the stop
    assert STOP_AFTER - 1.5 <= stopped <= STOP_AFTER + 4, f"stopped after {stopped:.1f}s"
    assert twice <= STOP_AFTER + 1, f"replicas ran twice for {twice:.1f}s"
    assert cluster.nodes()[victim].status == DOWN

    docker("network", "connect", "--ip", cluster.ip(victim), cluster.network,
           cluster.container(victim))
    wait("the agent alive again", lambda: cluster.members()[victim].status == "alive", 60)
    cluster.wait_healthy(within=60)
    wait("five replicas, each running once", lambda: cluster.exactly_once(name), 60)
    # the agent said what it did: its allocations were lost, by its own decision
    lost = [a for a in cluster.status(name).allocations if a.id in originals]
    assert all(a.client_status == node_pb2.CLIENT_STATUS_LOST for a in lost), lost
