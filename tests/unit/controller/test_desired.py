"""Desired sets sent as changes: whatever the commits, the agent's set (full set, then the
changes) equals the node's allocations desired to run; each message carries only what
changed; an agent without the feature gets whole sets; changes out of step are refused."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.desired import DesiredSet
from controller.desired import NodeFeed, touched_nodes
from controller.state import RUN, STOP, ClusterState
from controller.store.base import Changes
from orch.errors import ProtocolError
from orch.jobspec.model import Group, SecretRef, Task, group_to_proto
from orch.v1 import controller_pb2, node_pb2

NODES = ("n1", "n2")
PLAIN = group_to_proto(Group(name="g", tasks=(Task(name="t", driver="process"),)))
READER = group_to_proto(Group(name="g", tasks=(Task(name="t", driver="process",
                                                    secrets=(SecretRef(name="db"),)),)))


def alloc(i: int, node: str, *, version: int = 1,
          desired: node_pb2.DesiredStatus.ValueType = RUN,
          secrets: bool = False) -> node_pb2.Allocation:
    job = "reader" if secrets else "j"  # a job version has one spec
    a = node_pb2.Allocation(id=f"a{i}", name=f"{job}.g[{i}]", namespace="default", job=job,
                            job_version=version, group="g", index=i, node_id=node,
                            desired_status=desired)
    a.spec.CopyFrom(READER if secrets else PLAIN)
    return a


class Agents:
    """A cluster's write path in miniature: the state, one feed per node, the agents' sets."""

    def __init__(self, *, changes: bool = True) -> None:
        self.state = ClusterState()
        self.woken: set[str] = set()
        self.feeds = {n: NodeFeed(n, self.waker(n), changes=changes) for n in NODES}
        self.sets = {n: DesiredSet() for n in NODES}
        self.sent: dict[str, list[controller_pb2.ControllerMessage]] = {n: [] for n in NODES}
        self.secret_version = 1

    def waker(self, node: str) -> Callable[[], None]:
        return lambda: self.woken.add(node)

    def secrets_of(self, allocs: list[node_pb2.Allocation]) -> list[controller_pb2.SecretValue]:
        if not allocs:
            return []
        return [controller_pb2.SecretValue(namespace="default", name="db",
                                           version=self.secret_version, value=b"x")]

    def commit(self, changes: Changes) -> None:
        touched = touched_nodes(self.state, changes)
        self.state.apply(changes, self.state.index + 1)
        for node, ids in touched.items():
            self.feeds[node].touch(ids)

    def deliver(self) -> None:
        for n in sorted(self.woken):
            msg = self.feeds[n].next_message(self.state, self.secrets_of)
            if msg is None:
                continue
            self.sent[n].append(msg)
            if msg.WhichOneof("msg") == "desired":
                self.sets[n].replace(msg.desired)
            else:
                self.sets[n].change(msg.changes)
        self.woken.clear()

    def want(self, node: str) -> dict[str, tuple[int, int]]:
        return {a.id: (a.job_version, a.desired_status) for a in self.state.allocs.values()
                if a.node_id == node and a.desired_status == RUN}

    def held(self, node: str) -> dict[str, tuple[int, int]]:
        return {a.id: (a.job_version, a.desired_status) for a in self.sets[node].allocations}


def test_the_first_message_is_the_whole_set_then_only_changes() -> None:
    c = Agents()
    c.commit(Changes(put_allocs=[alloc(i, "n1") for i in range(3)]))
    c.deliver()
    first = c.sent["n1"][-1]
    assert first.WhichOneof("msg") == "desired"
    assert len(first.desired.allocations) == 3
    c.commit(Changes(put_allocs=[alloc(3, "n1"), alloc(0, "n1", desired=STOP)]))
    c.deliver()
    ch = c.sent["n1"][-1].changes
    assert [a.id for a in ch.allocations] == ["a3"]
    assert list(ch.removed) == ["a0"]
    assert ch.base_version == first.desired.version
    assert ch.version > ch.base_version
    assert c.held("n1") == c.want("n1")
    assert c.sets["n1"].changed == {"a3"}
    assert c.sets["n1"].removed == {"a0"}
    # a status report changes nothing the agent holds: nothing is sent
    running = alloc(1, "n1")
    running.client_status = node_pb2.CLIENT_STATUS_RUNNING
    c.commit(Changes(put_allocs=[running]))
    before = len(c.sent["n1"])
    c.deliver()
    assert len(c.sent["n1"]) == before
    assert "n2" not in c.woken


def test_changes_coalesce_while_the_stream_is_busy() -> None:
    c = Agents()
    c.woken.add("n1")
    c.deliver()
    for i in range(50):
        c.commit(Changes(put_allocs=[alloc(i, "n1")]))
    c.commit(Changes(put_allocs=[alloc(i, "n1", desired=STOP) for i in range(25)]))
    c.deliver()
    msg = c.sent["n1"][-1].changes
    assert len(msg.allocations) == 25
    assert not msg.removed
    assert c.held("n1") == c.want("n1")


def test_an_agent_without_the_feature_gets_whole_sets() -> None:
    c = Agents(changes=False)
    c.woken.add("n1")
    c.deliver()
    c.commit(Changes(put_allocs=[alloc(1, "n1")]))
    c.deliver()
    c.commit(Changes(put_allocs=[alloc(2, "n1")]))
    c.deliver()
    kinds = [m.WhichOneof("msg") for m in c.sent["n1"]]
    assert kinds == ["desired", "desired", "desired"]
    assert len(c.sent["n1"][-1].desired.allocations) == 2


def test_secrets_follow_the_allocations_that_read_them() -> None:
    c = Agents()
    c.woken.update(NODES)
    c.deliver()
    c.commit(Changes(put_allocs=[alloc(1, "n1", secrets=True), alloc(2, "n1")]))
    c.deliver()
    assert [s.version for s in c.sets["n1"].secrets] == [1]
    c.secret_version = 2
    for feed in c.feeds.values():
        feed.secrets_changed()
    c.deliver()
    assert [s.version for s in c.sets["n1"].secrets] == [2]
    assert c.sent["n2"][-1].WhichOneof("msg") == "desired"  # n2 reads none: nothing new
    c.commit(Changes(put_allocs=[alloc(1, "n1", desired=STOP, secrets=True)]))
    c.deliver()
    assert c.sets["n1"].secrets == []
    assert [s.name for s in c.sent["n1"][-1].changes.removed_secrets] == ["db"]


def test_changes_out_of_step_are_refused_and_change_nothing() -> None:
    d = DesiredSet()
    d.replace(controller_pb2.DesiredAllocations(version=5, allocations=[alloc(1, "n1")]))
    with pytest.raises(ProtocolError, match="version 4"):
        d.change(controller_pb2.DesiredChanges(version=6, base_version=4, removed=["a1"]))
    assert d.version == 5
    assert [a.id for a in d.allocations] == ["a1"]


ops = st.lists(st.tuples(st.sampled_from(("place", "stop", "update", "move", "delete",
                                          "report", "deliver", "reconnect")),
                         st.integers(0, 9), st.sampled_from(NODES)), max_size=60)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_the_agents_set_is_always_the_nodes_desired_set(steps: list[tuple[str, int, str]]) -> None:
    c = Agents()
    c.woken.update(NODES)
    for op, i, node in steps:
        cur = c.state.allocs.get(f"a{i}")
        if op == "place":
            c.commit(Changes(put_allocs=[alloc(i, node)]))
        elif cur is not None and op == "stop":
            c.commit(Changes(put_allocs=[alloc(i, cur.node_id, version=cur.job_version,
                                               desired=STOP)]))
        elif cur is not None and op == "update":
            c.commit(Changes(put_allocs=[alloc(i, cur.node_id, version=cur.job_version + 1,
                                               desired=cur.desired_status)]))
        elif cur is not None and op == "move":
            c.commit(Changes(put_allocs=[alloc(i, node, version=cur.job_version)]))
        elif cur is not None and op == "delete":
            c.commit(Changes(delete_allocs=[cur.id]))
        elif cur is not None and op == "report":
            a = node_pb2.Allocation()
            a.CopyFrom(cur)
            a.client_status = node_pb2.CLIENT_STATUS_RUNNING
            c.commit(Changes(put_allocs=[a]))
        elif op == "deliver":
            c.deliver()
        elif op == "reconnect":  # a new stream: a new feed, the whole set again
            c.feeds[node] = NodeFeed(node, c.waker(node), changes=True)
            c.woken.add(node)
    c.deliver()
    for n in NODES:
        assert c.held(n) == c.want(n)
        for m in c.sent[n][1:]:
            if m.WhichOneof("msg") == "changes":
                assert m.changes.allocations or m.changes.removed
