"""Through the load balancer (the routing mesh) on the Compose harness: the service answers on
every agent's published port, a dead agent's endpoints get no more requests, and a rolling
update fails no request of a client that sends without pause. The agents run the kernel data
plane (nftables in each agent container's namespace, which its tasks share): what these tests
reach, on the agent's own node and on others, goes through it.

They run as soon as the load balancer is part of the agent (``agent.lb.LoadBalancer``, in
agent/lb/balancer.py); until then they skip, saying so.
"""

from __future__ import annotations

import functools
import importlib.util
import threading
import time

import pytest

import agent.lb
from orch.v1 import node_pb2
from tests.docker_engine import docker
from tests.e2e.harness import AGENTS, Harness, wait, web_job


def lb_merged() -> bool:
    return hasattr(agent.lb, "LoadBalancer") or \
        importlib.util.find_spec("agent.lb.balancer") is not None


pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.timeout(240),
              pytest.mark.skipif(not lb_merged(), reason="load balancer not merged yet")]

PUBLISHED = 8080
"""deploy/compose/jobs/web.yaml's published_port."""


def through(h: Harness, agent_name: str, timeout: float = 2.0) -> str:
    """The allocation id that answered a request sent to ``agent_name``'s published port."""
    return h.get(h.ip(agent_name), PUBLISHED, timeout=timeout).split()[0]


def test_the_agents_forward_in_the_kernel(cluster: Harness) -> None:
    modes = {name: (n.attributes.get("lb.mode"), n.attributes.get("lb.kernel_unavailable"))
             for name, n in cluster.nodes().items() if name in AGENTS}
    assert modes == dict.fromkeys(AGENTS, ("kernel", None)), modes


def test_the_service_answers_on_every_agents_published_port(cluster: Harness) -> None:
    ids = {a.id for a in cluster.deploy("web-lb")}
    for name in AGENTS:
        answered = wait(f"the service through {name}:{PUBLISHED}",
                        functools.partial(through, cluster, name), 30)
        assert answered in ids


def test_a_dead_agents_endpoints_get_no_more_requests(cluster: Harness) -> None:
    allocs = cluster.deploy("web-lb-dead", count=2)
    with_replica = {cluster.node_of(a) for a in allocs}
    without = [n for n in AGENTS if n not in with_replica]
    victim = sorted(with_replica)[0]
    dead = {a.id for a in allocs if cluster.node_of(a) == victim}
    # agents without a replica forward over the network, to both replicas
    wait("both replicas answering through an agent without one", lambda: {
        through(cluster, without[0]) for _ in range(10)} == {a.id for a in allocs}, 30)

    docker("kill", cluster.container(victim))
    wait("the dead agent's node down", lambda: cluster.nodes()[victim].status
         == node_pb2.NODE_STATUS_DOWN, 30)
    # every request succeeds at once: none waits on a connect to the dead endpoint
    for name in without:
        for _ in range(20):
            assert through(cluster, name, timeout=1.5) not in dead


def test_a_rolling_update_fails_no_request(cluster: Harness) -> None:
    cluster.deploy("web-lb-roll")
    stop = threading.Event()
    ok, failed, versions = [0], [], set()

    def client() -> None:
        i = 0
        while not stop.is_set():
            name = AGENTS[i % len(AGENTS)]
            i += 1
            try:
                versions.add(cluster.get(cluster.ip(name), PUBLISHED).split()[1])
                ok[0] += 1
            except OSError as e:
                failed.append(f"{time.strftime('%H:%M:%S')} via {name}: {e}")

    sender = threading.Thread(target=client, name="client", daemon=True)
    sender.start()
    try:
        wait("the client under way", lambda: ok[0] >= 20, 30)
        version = cluster.run(web_job("web-lb-roll", version="2")).version
        wait("the rolling update complete", lambda: cluster.deployed("web-lb-roll", version, 5),
             120)
        time.sleep(2.0)  # the old replicas' endpoints drain
    finally:
        stop.set()
        sender.join(10)
    assert not failed, f"{len(failed)} of {ok[0] + len(failed)} requests failed: {failed[:5]}"
    assert {"1", "2"} <= versions
