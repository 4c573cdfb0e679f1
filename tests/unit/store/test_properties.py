"""Random sequences of commits, reopenings and replays give what the plain model gives, on
SQLite (the same machine on etcd: tests/integration/test_etcd_model.py)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from controller.store import Changes, SQLiteStore, Store
from orch.v1 import controller_pb2, job_pb2, node_pb2
from tests.unit.store.model import Model

MAX_EVALUATIONS = 4
MAX_EVENTS = 6

text = st.text(max_size=8)
namespaces = st.sampled_from(["default", "ops"])
job_names = st.sampled_from(["web", "api", "db"])
alloc_ids = st.sampled_from([f"a{i}" for i in range(6)])
node_ids = st.sampled_from([f"n{i}" for i in range(4)])
deployment_ids = st.sampled_from([f"d{i}" for i in range(3)])
evaluation_ids = st.sampled_from([f"e{i}" for i in range(8)])

jobs = st.builds(lambda ns, name, version, priority, meta: job_pb2.Job(
    namespace=ns, name=name, version=version, priority=priority, meta=meta,
    groups=[job_pb2.TaskGroup(name="g", count=priority % 4)]),
    namespaces, job_names, st.integers(1, 4), st.integers(1, 100),
    st.dictionaries(text, text, max_size=2))
allocs = st.builds(lambda aid, ns, name, nid, status, description: node_pb2.Allocation(
    id=aid, namespace=ns, job=name, node_id=nid, client_status=status, description=description),
    alloc_ids, namespaces, job_names, node_ids, st.sampled_from(node_pb2.ClientStatus.values()),
    text)
nodes = st.builds(lambda nid, name, status: node_pb2.Node(id=nid, name=name, status=status),
                  node_ids, text, st.sampled_from(node_pb2.NodeStatus.values()))
deployments = st.builds(lambda did, status: controller_pb2.Deployment(id=did, status=status),
                        deployment_ids, st.sampled_from(["running", "failed", "successful"]))
evaluations = st.builds(lambda eid, status: controller_pb2.Evaluation(id=eid, status=status),
                        evaluation_ids, st.sampled_from(["complete", "blocked", "failed"]))
events = st.builds(lambda topic, key, message, with_node: controller_pb2.Event(
    topic=topic, key=key, message=message, node=node_pb2.Node(id=key) if with_node else None),
    st.sampled_from(["job", "allocation", "node"]), text, text, st.booleans())

changes = st.builds(
    Changes,
    put_jobs=st.lists(jobs, max_size=3),
    purge_jobs=st.lists(st.tuples(namespaces, job_names), max_size=1),
    delete_job_versions=st.lists(st.tuples(namespaces, job_names, st.integers(1, 4)), max_size=2),
    put_allocs=st.lists(allocs, max_size=3),
    delete_allocs=st.lists(alloc_ids, max_size=2),
    put_nodes=st.lists(nodes, max_size=2),
    delete_nodes=st.lists(node_ids, max_size=1),
    put_deployments=st.lists(deployments, max_size=2),
    delete_deployments=st.lists(deployment_ids, max_size=1),
    put_evaluations=st.lists(evaluations, max_size=3),
    delete_evaluations=st.lists(evaluation_ids, max_size=2),
    events=st.lists(events, max_size=3),
    meta=st.dictionaries(st.sampled_from(["k1", "k2", "k3"]), text, max_size=2),
    delete_meta=st.lists(st.sampled_from(["k1", "k2", "k3"]), max_size=2),
)


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="orch-store-"))
        self.loop = asyncio.new_event_loop()
        self.model = Model(max_evaluations=MAX_EVALUATIONS, max_events=MAX_EVENTS)
        self.store = self._open()

    def make(self) -> Store:
        return SQLiteStore(self.dir / "state.db", max_evaluations=MAX_EVALUATIONS,
                           max_events=MAX_EVENTS)

    def _open(self) -> Store:
        store = self.make()
        self.run(store.open())
        return store

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    @rule(c=changes)
    def commit(self, c: Changes) -> None:
        index, event_indexes = self.model.apply(c)
        assert self.run(self.store.commit(c)) == index
        assert [e.index for e in c.events] == event_indexes

    @rule(cs=st.lists(changes, min_size=2, max_size=4))
    def concurrent_commits(self, cs: list[Changes]) -> None:
        """Commits made together (etcd puts them in one transaction) land as if one by one."""
        expected = [self.model.apply(c) for c in cs]

        async def together() -> list[int]:
            return list(await asyncio.gather(*(self.store.commit(c) for c in cs)))

        assert self.run(together()) == [index for index, _ in expected]
        assert [[e.index for e in c.events] for c in cs] == [indexes for _, indexes in expected]

    @rule(c=changes)
    def failing_commit(self, c: Changes) -> None:
        c.put_nodes.append(node_pb2.Allocation(id="not a node"))  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            self.run(self.store.commit(c))

    @rule()
    def reopen(self) -> None:
        self.run(self.store.close())
        self.store = self._open()

    @rule(since=st.integers(0, 40), limit=st.integers(1, 8))
    def replay(self, since: int, limit: int) -> None:
        assert self.run(self.store.events_since(since, limit)) == self.model.events_since(since,
                                                                                          limit)

    @invariant()
    def loads_as_the_model(self) -> None:
        assert self.run(self.store.load()) == self.model.snapshot()

    def teardown(self) -> None:
        try:
            self.run(self.store.close())
        finally:
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)


StoreMachine.TestCase.settings = settings(max_examples=30, stateful_step_count=20, deadline=None)
TestStoreAgainstModel = StoreMachine.TestCase

