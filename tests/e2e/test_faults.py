"""End to end on the Compose harness: a controller and five agents in containers, a web
service of five replicas, and the faults a fleet meets: a host that dies, one that freezes,
one cut off by the network, a controller restarted in the middle of a rollout.

After every fault the same invariant is checked: the service has its five replicas, each
allocation runs in exactly one container, and nothing else of the job runs.
"""

from __future__ import annotations

import time

import pytest

from orch.v1 import controller_pb2, node_pb2
from tests.docker_engine import docker
from tests.e2e.harness import AGENTS, Harness, wait, web_job

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.timeout(240)]

DOWN = node_pb2.NODE_STATUS_DOWN


def test_a_service_of_five_replicas_runs_one_on_each_agent(cluster: Harness) -> None:
    allocs = cluster.deploy("web")
    assert sorted(cluster.node_of(a) for a in allocs) == sorted(AGENTS)
    for a in allocs:
        assert cluster.serves(a, "1")
    [svc] = cluster.api.ListServices(controller_pb2.ListServicesRequest(name="web"),
                                     timeout=5).services
    assert svc.published_port == 8080
    assert sorted(e.address.rsplit(":", 1)[0] for e in svc.endpoints) == sorted(
        cluster.ip(n) for n in AGENTS)
    assert all(e.healthy for e in svc.endpoints)
    assert cluster.exactly_once("web")


def test_a_killed_agents_work_moves_and_its_return_stops_the_duplicate(cluster: Harness) -> None:
    allocs = cluster.deploy("web-kill")
    victim = "agent-3"
    lost = {a.id for a in allocs if cluster.node_of(a) == victim}
    assert lost
    started = time.monotonic()
    docker("kill", cluster.container(victim))
    wait("the killed agent's node down", lambda: cluster.nodes()[victim].status == DOWN, 30)
    detected = time.monotonic() - started
    wait("five replicas again, none on the killed agent", lambda: (
        len(running := cluster.running("web-kill")) == 5
        and not {a.id for a in running} & lost
        and victim not in {cluster.node_of(a) for a in running}), 60)
    # its task kept running, cut off with its host's network: a duplicate until it returns
    assert lost <= set(cluster.job_containers("web-kill"))

    docker("start", cluster.container(victim))
    cluster.wait_healthy(within=60)
    wait("the returning agent to stop what now runs elsewhere",
         lambda: cluster.exactly_once("web-kill"), 60)
    assert all(cluster.serves(a, "1") for a in cluster.running("web-kill"))
    # gossip detection (~2 s) plus the controller's node grace (3 s), on a busy 2-core host
    assert detected < 20, f"the node was marked down {detected:.1f}s after the kill"


def test_a_paused_agent_refutes_or_rejoins_and_nothing_runs_twice(cluster: Harness) -> None:
    cluster.deploy("web-pause")
    victim = "agent-2"
    incarnation = cluster.members()[victim].incarnation
    docker("pause", cluster.container(victim))
    wait("the frozen agent suspected, then declared dead",
         lambda: cluster.members()[victim].status == "dead", 30)
    time.sleep(4.0)  # past the node grace too: the controller may move its work
    docker("unpause", cluster.container(victim))
    wait("the agent alive again, with a higher incarnation", lambda: (
        (m := cluster.members()[victim]).status == "alive" and m.incarnation > incarnation), 30)
    cluster.wait_healthy(within=60)
    wait("five replicas, each running once", lambda: cluster.exactly_once("web-pause"), 60)


def test_a_partition_that_heals(cluster: Harness) -> None:
    allocs = cluster.deploy("web-split")
    victim = "agent-4"
    cut = {a.id for a in allocs if cluster.node_of(a) == victim}
    docker("network", "disconnect", cluster.network, cluster.container(victim))
    wait("the cut-off agent declared dead", lambda: cluster.members()[victim].status == "dead", 30)
    wait("its node down and its work moved", lambda: (
        cluster.nodes()[victim].status == DOWN
        and len(running := cluster.running("web-split")) == 5
        and not {a.id for a in running} & cut), 60)

    docker("network", "connect", "--ip", cluster.ip(victim), cluster.network,
           cluster.container(victim))
    wait("the agent alive again", lambda: cluster.members()[victim].status == "alive", 60)
    cluster.wait_healthy(within=60)
    wait("five replicas, each running once", lambda: cluster.exactly_once("web-split"), 60)


def test_a_rollout_completes_across_a_controller_restart(cluster: Harness) -> None:
    cluster.deploy("web-ctl")
    update = web_job("web-ctl", version="2", min_healthy="3s")  # about 4 s per replica
    version = cluster.run(update).version

    def under_way() -> bool:
        st = cluster.status("web-ctl")
        dep = st.latest_deployment
        return dep.job_version == version and dep.status == "running" and any(
            a.job_version == version and a.healthy for a in st.allocations)

    wait("the rolling update under way", under_way, 60)
    assert not cluster.deployed("web-ctl", version, 5)
    docker("restart", "-t", "10", cluster.container("controller"))  # SIGTERM, then start
    wait("the rollout of version 2 complete", lambda: cluster.deployed("web-ctl", version, 5), 120)
    wait("five replicas, each running once", lambda: cluster.exactly_once("web-ctl"), 60)
    assert all(cluster.serves(a, "2") for a in cluster.running("web-ctl"))


def test_a_rolling_update_replaces_one_replica_at_a_time(cluster: Harness) -> None:
    first = {a.id for a in cluster.deploy("web-roll")}
    version = cluster.run(web_job("web-roll", version="2")).version
    fewest = 5
    deadline = time.monotonic() + 120
    while not cluster.deployed("web-roll", version, 5):
        assert time.monotonic() < deadline, "the rolling update did not complete in 120 s"
        fewest = min(fewest, sum(1 for a in cluster.running("web-roll") if a.healthy))
        time.sleep(0.2)
    running = cluster.running("web-roll")
    assert not {a.id for a in running} & first
    assert fewest >= 4, f"max_parallel is 1, yet only {fewest} healthy replicas were left"
    wait("five replicas, each running once", lambda: cluster.exactly_once("web-roll"), 60)
    assert all(cluster.serves(a, "2") for a in running)
