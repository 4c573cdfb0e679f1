"""What the controller does with gossip it cannot trust, and what it tells agents to trust:
the expected endpoints it sends every agent, the published ports two jobs cannot share,
and the user events it records (bounded, with their origin)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest

from controller.api.authz import Authorizer
from controller.api.members import SHOWN_CHARS, SHOWN_DEPTH, MembersEndpoint, show_value
from controller.channels import Channels
from controller.cluster import Cluster
from controller.evaluator import Evaluator
from controller.gossip_events import GossipEvents, UserEventLimits
from controller.jobs import published_port_claims
from controller.leadership import LeaderStatus
from controller.nodes import NodeMonitor
from controller.state import ClusterState
from controller.store import Changes, SQLiteStore
from orch.gossip.config import GossipConfig
from orch.gossip.core import Membership
from orch.gossip.messages import UserEvent
from orch.gossip.transport import GossipNode
from orch.jobspec import parse_job
from orch.v1 import controller_pb2, job_pb2, node_pb2

EXAMPLE = Path(__file__).parents[3] / "deploy" / "examples" / "hello.yaml"


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    store = SQLiteStore(tmp_path / "state.db")
    await store.open()
    try:
        yield Cluster(store, ClusterState())
    finally:
        await store.close()


def hello(name: str = "hello", namespace: str = "", port: int = 8080) -> job_pb2.Job:
    job = parse_job(EXAMPLE.read_text().replace("published_port: 8080",
                                                f"published_port: {port}"), "hello.yaml")
    job.name, job.namespace, job.version = name, namespace, 1
    return job


def placed(job: job_pb2.Job, alloc_id: str, node: str, port: int,
           desired: node_pb2.DesiredStatus.ValueType = node_pb2.DESIRED_STATUS_RUN
           ) -> node_pb2.Allocation:
    a = node_pb2.Allocation(id=alloc_id, job=job.name, namespace=job.namespace, group="web",
                            job_version=job.version, node_id=node, desired_status=desired)
    a.spec.CopyFrom(job.groups[0])
    a.ports["http"] = port
    return a


async def test_agents_are_sent_the_endpoints_the_controller_placed(cluster: Cluster) -> None:
    got: list[controller_pb2.ExpectedEndpoints] = []
    job = hello()
    await cluster.write(Changes(put_jobs=[job], put_nodes=[
        node_pb2.Node(id="n1", name="agent-1"), node_pb2.Node(id="n2", name="agent-2")]))
    feed = cluster.attach_endpoints("n1", lambda: None)  # an agent that takes whole sets

    def deliver() -> None:
        msg = cluster.next_endpoints(feed)
        if msg is not None:
            got.append(msg.endpoints)

    deliver()
    assert list(got[-1].services) == []
    await cluster.write(Changes(put_allocs=[placed(job, "a1", "n1", 21000),
                                            placed(job, "a2", "n2", 22000)]))
    deliver()
    (svc,) = got[-1].services
    assert (svc.namespace, svc.job, svc.group, svc.name, svc.published_port, svc.protocol) == (
        "default", "hello", "web", "hello", 8080, "tcp")
    assert [(e.alloc_id, e.node, e.port) for e in svc.endpoints] == [
        ("a1", "agent-1", 21000), ("a2", "agent-2", 22000)]
    n = len(got)
    await cluster.write(Changes(put_allocs=[placed(job, "a1", "n1", 21000)]))  # no change
    deliver()
    assert len(got) == n
    await cluster.write(Changes(put_allocs=[placed(job, "a2", "n2", 22000,
                                                   node_pb2.DESIRED_STATUS_STOP)]))
    deliver()
    assert [e.alloc_id for e in got[-1].services[0].endpoints] == ["a1"]


def test_a_published_port_claimed_by_another_job_is_named() -> None:
    state = ClusterState()
    state.apply(Changes(put_jobs=[hello()]), 1)
    other = hello("other", "team")
    (problem,) = published_port_claims(state, other)
    assert "published port 8080 is already published by job 'hello' in namespace " \
           "'default'" in problem
    assert published_port_claims(state, hello()) == []  # the job itself
    assert published_port_claims(state, hello("other", "team", port=9090)) == []
    stopped = hello()
    stopped.stop = True
    state.apply(Changes(put_jobs=[stopped]), 2)
    assert published_port_claims(state, other) == []


async def test_user_events_from_gossip_are_bounded_and_say_where_they_came_from(
        cluster: Cluster) -> None:
    leader = LeaderStatus("c1")
    leader.leading = True
    now = [0.0]
    evaluator = Evaluator(cluster)
    events = GossipEvents(leader, NodeMonitor(cluster, evaluator), cluster,
                          UserEventLimits(rate=10, burst=50, per_origin_rate=1,
                                          per_origin_burst=5), clock=lambda: now[0])
    flood = [UserEvent(i, f"e{i}", b"x" * 512, True, "mallory") for i in range(500)]
    many = [UserEvent(1000 + i, "deploy", b"", True, f"member-{i}") for i in range(200)]
    events._record_user_events(flood + many)
    for task in list(events.pending):
        await task
    recorded = [e for e in cluster.events.recent if e.topic == "user"]
    assert len(recorded) == 50  # the burst, of which one origin took 5
    assert sum("[from mallory, unauthenticated gossip]" in e.message for e in recorded) == 5
    assert events.gate.dropped == {"origin": 495, "rate": 155}
    now[0] += 10.0  # rates refill
    events.authenticated = True
    events._record_user_events([UserEvent(2000, "deploy", b"v2", True, "c2")])
    for task in list(events.pending):
        await task
    assert cluster.events.recent[-1].message == \
        "deploy (ltime 2000): v2 [from c2, gossip authenticated by the cluster key]"


def test_members_are_listed_whatever_their_node_states_hold() -> None:
    """A tag nested 1,000 deep (gossip refuses it now: max_state_depth; a member of an
    older version may still hold one) made ListMembers fail for everyone."""
    node = GossipNode(GossipConfig.fast(), name="c1", bind=("127.0.0.1", 0))
    node.core = Membership(GossipConfig.fast(), name="c1", addr=("127.0.0.1", 7946),
                           rng=random.Random(1), now=0.0)
    node.core.preload([("deep", ("127.0.0.2", 7946))], 0.0)
    deep: object = "leaf"
    for _ in range(1000):
        deep = [deep]
    node.core.members["deep"].state = {"tag": deep, "role": "agent", "big": "x" * 100_000}
    endpoint = MembersEndpoint(cast(Authorizer, None), node, name="c1", data_dir="",
                               state=ClusterState(), channels=cast(Channels, None))
    by_name = {m.name: m for m in endpoint._members()}
    tags = by_name["deep"].tags
    assert tags["tag"] == f"<nested deeper than {SHOWN_DEPTH}>"
    assert tags["role"] == "agent"
    assert len(tags["big"]) == SHOWN_CHARS
    assert show_value([[1, 2], {"a": 3}]) == "[[1, 2], {'a': 3}]"
