"""The evaluator's queue: an evaluation someone waits for (an API write) goes before the
background ones (a new leader's sweep of every job, a lost node's jobs)."""

from __future__ import annotations

from pathlib import Path

from controller.cluster import Cluster
from controller.evaluator import Evaluator
from controller.state import ClusterState
from controller.store.base import Changes
from controller.store.sqlite import SQLiteStore
from orch.v1 import node_pb2


async def test_an_evaluation_waited_for_goes_before_the_background_ones(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "controller.db")
    await store.open()
    try:
        evaluator = Evaluator(Cluster(store, ClusterState.from_store(await store.load())))
        for name in ("a", "b", "c"):
            evaluator.enqueue(("default", name), "leader-elected")
        evaluator.enqueue(("default", "c"), "job-register", first=True)
        evaluator.enqueue(("default", "new"), "job-register", first=True)
        evaluator.enqueue(("default", "c"), "alloc-update")  # already first: stays there
        assert evaluator.queue_depth == 4
        taken = []
        while (t := evaluator._take()) is not None:
            taken.append(t)
        assert taken == [(("default", "c"), "job-register"), (("default", "new"), "job-register"),
                         (("default", "a"), "leader-elected"), (("default", "b"), "leader-elected")]
    finally:
        await store.close()


async def test_an_allocation_that_ends_after_it_was_stopped_evaluates_nothing_again(
        tmp_path: Path) -> None:
    """A plan that replaces a lost allocation writes it lost and stopped: that commit must
    not queue the job it came from once more (every rescheduled job was evaluated twice);
    an allocation that fails while it should run does queue its job."""
    store = SQLiteStore(tmp_path / "controller.db")
    await store.open()
    try:
        evaluator = Evaluator(Cluster(store, ClusterState.from_store(await store.load())))
        lost = node_pb2.Allocation(id="a1", namespace="default", job="web",
                                   desired_status=node_pb2.DESIRED_STATUS_STOP,
                                   client_status=node_pb2.CLIENT_STATUS_LOST)
        evaluator._on_commit(Changes(put_allocs=[lost]))
        assert evaluator.queue_depth == 0
        failed = node_pb2.Allocation(id="a2", namespace="default", job="api",
                                     desired_status=node_pb2.DESIRED_STATUS_RUN,
                                     client_status=node_pb2.CLIENT_STATUS_FAILED)
        evaluator._on_commit(Changes(put_allocs=[failed]))
        assert evaluator._take() == (("default", "api"), "alloc-update")
    finally:
        await store.close()
