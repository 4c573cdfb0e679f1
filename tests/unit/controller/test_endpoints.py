"""Expected endpoints sent as changes: whatever the commits, an agent's set (the whole set,
then the changes) equals what the state places; a change message carries only the services
that changed, each built once whatever the number of agents; an agent without the feature
gets whole sets; changes out of step are refused and change nothing."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.lb.discovery import Expected, ExpectedSet, Placed
from controller.endpoints import FEATURE, ExpectedEndpoints
from controller.state import RUN, STOP, ClusterState
from controller.store.base import Changes
from orch.errors import ProtocolError
from orch.jobspec.model import Group, Network, Port, Service, Task, group_to_proto
from orch.v1 import controller_pb2, job_pb2, node_pb2

AGENTS = ("n1", "n2", "old")
"""Agents n1 and n2 take changes; ``old`` registered no feature: it gets whole sets."""
JOBS = ("web", "api", "db")


def group(version: int) -> job_pb2.TaskGroup:
    policy = "round_robin" if version % 2 else "least_conn"
    return group_to_proto(Group(
        name="g", tasks=(Task(name="t", driver="process"),),
        network=Network(ports=(Port(label="http"), Port(label="admin"))),
        services=(Service(name="front", port="http", published_port=8000 + version,
                          lb_policy=policy),
                  Service(name="admin", port="admin"))))


def alloc(i: int, job: str, node: str, *, version: int = 1,
          desired: node_pb2.DesiredStatus.ValueType = RUN) -> node_pb2.Allocation:
    a = node_pb2.Allocation(id=f"a{i}", name=f"{job}.g[{i}]", namespace="default", job=job,
                            job_version=version, group="g", index=i, node_id=node,
                            desired_status=desired)
    a.spec.CopyFrom(group(version))
    a.ports["http"], a.ports["admin"] = 20000 + i, 21000 + i
    return a


def node(node_id: str, name: str = "") -> node_pb2.Node:
    return node_pb2.Node(id=node_id, name=name or f"agent-{node_id}")


class Agents:
    """A cluster's write path in miniature: the state, the expected endpoints, one feed and
    one held set per agent."""

    def __init__(self) -> None:
        self.state = ClusterState()
        self.state.apply(Changes(put_nodes=[node(n) for n in AGENTS]), 1)
        self.endpoints = ExpectedEndpoints(self.state)
        self.woken: set[str] = set()
        self.feeds = {n: self.endpoints.attach(self.register(n), self.waker(n))
                      for n in AGENTS}
        self.sets = {n: ExpectedSet() for n in AGENTS}
        self.sent: dict[str, list[controller_pb2.ControllerMessage]] = {n: [] for n in AGENTS}

    @staticmethod
    def register(n: str) -> node_pb2.Node:
        reg = node(n)
        if n != "old":
            reg.features.append(FEATURE)
        return reg

    def waker(self, n: str) -> Callable[[], None]:
        return lambda: self.woken.add(n)

    def commit(self, changes: Changes) -> None:
        self.state.apply(changes, self.state.index + 1)
        self.endpoints.track(changes)

    def deliver(self) -> None:
        for n in sorted(self.woken):
            msg = self.endpoints.next_message(self.feeds[n])
            if msg is None:
                continue
            self.sent[n].append(msg)
            if msg.WhichOneof("msg") == "endpoints":
                self.sets[n].replace(msg.endpoints)
            else:
                self.sets[n].change(msg.endpoint_changes)
        self.woken.clear()

    def want(self) -> Expected:
        """What a controller reading the whole state afresh would send."""
        return Expected.from_proto(ExpectedEndpoints(self.state).whole())


def same(held: ExpectedSet, want: Expected) -> bool:
    got = held.expected
    return dict(got.services) == dict(want.services) and dict(got.placed) == dict(want.placed)


def test_the_first_message_is_the_whole_set_then_only_the_services_that_changed() -> None:
    c = Agents()
    c.commit(Changes(put_allocs=[alloc(1, "web", "n1"), alloc(2, "web", "n2"),
                                 alloc(3, "api", "n1")]))
    c.deliver()
    first = c.sent["n1"][-1]
    assert first.WhichOneof("msg") == "endpoints"
    assert [(s.job, s.name) for s in first.endpoints.services] == [
        ("api", "admin"), ("api", "front"), ("web", "admin"), ("web", "front")]
    web = first.endpoints.services[3]
    assert [(e.alloc_id, e.node, e.port) for e in web.endpoints] == [
        ("a1", "agent-n1", 20001), ("a2", "agent-n2", 20002)]
    # a second allocation of api starts: the agents are sent api's services, nothing else
    c.commit(Changes(put_allocs=[alloc(4, "api", "n2")]))
    c.deliver()
    ch = c.sent["n1"][-1].endpoint_changes
    assert [(s.job, s.name) for s in ch.services] == [("api", "admin"), ("api", "front")]
    assert [e.alloc_id for e in ch.services[1].endpoints] == ["a3", "a4"]
    assert not ch.removed
    assert ch.base_version == first.endpoints.version < ch.version
    assert c.sets["n1"].expected.placed[("a4", "front")] == Placed(
        "default/api/g/front", "agent-n2", 20004)
    # api stops: its services leave, by key
    c.commit(Changes(put_allocs=[alloc(i, "api", n, desired=STOP) for i, n in
                                 ((3, "n1"), (4, "n2"))]))
    c.deliver()
    ch = c.sent["n2"][-1].endpoint_changes
    assert not ch.services
    assert [(s.namespace, s.job, s.group, s.name) for s in ch.removed] == [
        ("default", "api", "g", "admin"), ("default", "api", "g", "front")]
    for n in AGENTS:
        assert same(c.sets[n], c.want())
    assert ("a3", "front") not in c.sets["n1"].expected.placed


def test_each_changed_service_is_built_once_and_shared_by_agents_in_step() -> None:
    c = Agents()
    c.commit(Changes(put_allocs=[alloc(i, JOBS[i % 3], AGENTS[i % 2]) for i in range(30)]))
    c.deliver()
    built = c.endpoints.built
    c.commit(Changes(put_allocs=[alloc(30, "db", "n1")]))
    c.deliver()
    assert c.endpoints.built - built == 2  # db's two services, once for the three agents
    assert c.endpoints.sent == {"whole": 3 + 1, "changes": 2}
    assert c.sent["n1"][-1] is c.sent["n2"][-1]  # one message for agents in step
    assert c.sent["old"][-1].WhichOneof("msg") == "endpoints"
    # a status report or a commit that touches no endpoint: nothing is built or sent
    running = alloc(30, "db", "n1")
    running.client_status = node_pb2.CLIENT_STATUS_RUNNING
    before = {n: len(m) for n, m in c.sent.items()}
    c.commit(Changes(put_allocs=[running]))
    c.deliver()
    assert {n: len(m) for n, m in c.sent.items()} == before
    assert c.endpoints.built - built == 2


def test_changes_coalesce_per_service_while_a_stream_is_busy() -> None:
    c = Agents()
    c.deliver()
    for i in range(40):
        c.commit(Changes(put_allocs=[alloc(i, JOBS[i % 3], "n1")]))
    c.commit(Changes(put_allocs=[alloc(i, JOBS[i % 3], "n1", desired=STOP)
                                 for i in range(0, 40, 3)]))  # every web allocation
    assert len(c.feeds["n1"].pending) == 6  # one mark per service, however many commits
    c.deliver()
    ch = c.sent["n1"][-1].endpoint_changes
    assert sorted((s.job, s.name) for s in ch.services) == [
        ("api", "admin"), ("api", "front"), ("db", "admin"), ("db", "front")]
    # web came and went while the stream was busy: a feed does not keep what its agent holds
    # (that would be every service once per agent), so web is named gone, which changes nothing
    assert [s.job for s in ch.removed] == ["web", "web"]
    assert same(c.sets["n1"], c.want())


def test_a_renamed_node_and_a_new_job_version_change_the_services() -> None:
    c = Agents()
    c.commit(Changes(put_allocs=[alloc(1, "web", "n1"), alloc(2, "web", "n2")]))
    c.deliver()
    c.commit(Changes(put_nodes=[node("n1", "renamed")]))
    c.deliver()
    assert c.sets["n2"].expected.placed[("a1", "front")].node == "renamed"
    c.commit(Changes(put_allocs=[alloc(2, "web", "n2", version=2)]))
    c.deliver()
    (front,) = [s for s in c.sent["n1"][-1].endpoint_changes.services if s.name == "front"]
    assert (front.published_port, front.lb_policy) == (8002, "least_conn")  # the newest
    assert same(c.sets["n1"], c.want())


def test_after_a_reset_every_agent_gets_the_whole_set_again() -> None:
    c = Agents()
    c.commit(Changes(put_allocs=[alloc(1, "web", "n1")]))
    c.deliver()
    # a restore: the state changes under the feeds, which are told nothing but the reset
    c.state.apply(Changes(delete_allocs=["a1"], put_allocs=[alloc(2, "api", "n2")]), 1)
    c.endpoints.reset()
    assert c.woken == set(AGENTS)
    c.deliver()
    for n in AGENTS:
        assert c.sent[n][-1].WhichOneof("msg") == "endpoints"
        assert same(c.sets[n], c.want())
        assert ("a1", "front") not in c.sets[n].expected.placed


def test_changes_out_of_step_are_refused_and_change_nothing() -> None:
    held = ExpectedSet()
    svc = controller_pb2.ExpectedService(namespace="default", job="web", group="g",
                                         name="front", published_port=80, protocol="tcp",
                                         lb_policy="round_robin")
    svc.endpoints.add(alloc_id="a1", node="agent-1", port=20001)
    held.replace(controller_pb2.ExpectedEndpoints(version=5, services=[svc]))
    gone = controller_pb2.ExpectedService(namespace="default", job="web", group="g",
                                          name="front")
    with pytest.raises(ProtocolError, match="version 4"):
        held.change(controller_pb2.ExpectedEndpointChanges(version=6, base_version=4,
                                                           removed=[gone]))
    assert held.version == 5
    assert list(held.expected.services) == ["default/web/g/front"]
    held.change(controller_pb2.ExpectedEndpointChanges(version=6, base_version=5,
                                                       removed=[gone]))
    assert (len(held), dict(held.expected.placed)) == (0, {})


def test_a_changed_service_that_makes_no_sense_is_taken_out() -> None:
    held = ExpectedSet()
    svc = controller_pb2.ExpectedService(namespace="", job="web", group="g", name="front",
                                         published_port=80, protocol="tcp",
                                         lb_policy="round_robin")
    svc.endpoints.add(alloc_id="a1", node="agent-1", port=20001)
    held.replace(controller_pb2.ExpectedEndpoints(version=1, services=[svc]))
    assert held.expected.placed[("a1", "front")].service == "default/web/g/front"
    svc.protocol = "sctp"
    held.change(controller_pb2.ExpectedEndpointChanges(version=2, base_version=1,
                                                       services=[svc]))
    assert (len(held), dict(held.expected.placed)) == (0, {})


ops = st.lists(st.tuples(st.sampled_from(("place", "stop", "update", "move", "delete",
                                          "report", "rename", "deliver", "reconnect")),
                         st.integers(0, 9), st.sampled_from(JOBS), st.sampled_from(AGENTS)),
               max_size=60)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_the_agents_set_is_always_what_the_state_places(
        steps: list[tuple[str, int, str, str]]) -> None:
    c = Agents()
    for op, i, job, n in steps:
        cur = c.state.allocs.get(f"a{i}")
        if op == "place" and cur is None:
            c.commit(Changes(put_allocs=[alloc(i, job, n)]))
        elif cur is not None and op == "stop":
            c.commit(Changes(put_allocs=[alloc(i, cur.job, cur.node_id,
                                               version=cur.job_version, desired=STOP)]))
        elif cur is not None and op == "update":
            c.commit(Changes(put_allocs=[alloc(i, cur.job, cur.node_id,
                                               version=cur.job_version + 1,
                                               desired=cur.desired_status)]))
        elif cur is not None and op == "move":
            c.commit(Changes(put_allocs=[alloc(i, cur.job, n, version=cur.job_version)]))
        elif cur is not None and op == "delete":
            c.commit(Changes(delete_allocs=[cur.id]))
        elif cur is not None and op == "report":
            a = node_pb2.Allocation()
            a.CopyFrom(cur)
            a.client_status = node_pb2.CLIENT_STATUS_RUNNING
            c.commit(Changes(put_allocs=[a]))
        elif op == "rename":
            c.commit(Changes(put_nodes=[node(n, f"agent-{n}-{i}")]))
        elif op == "deliver":
            c.deliver()
        elif op == "reconnect":  # a new stream: a new feed, the whole set again
            c.feeds[n] = c.endpoints.attach(c.register(n), c.waker(n))
    c.deliver()
    want = c.want()
    for n in AGENTS:
        assert same(c.sets[n], want)
        for m in c.sent[n][1:]:
            if m.WhichOneof("msg") == "endpoint_changes":
                assert m.endpoint_changes.services or m.endpoint_changes.removed
            else:
                assert n == "old" or m.WhichOneof("msg") == "endpoints"
        assert len(c.feeds[n].pending) == 0
