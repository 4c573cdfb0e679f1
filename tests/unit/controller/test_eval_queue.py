"""The evaluator's queue: an evaluation someone waits for (an API write) goes before the
background ones (a new leader's sweep of every job, a lost node's jobs)."""

from __future__ import annotations

from pathlib import Path

from controller.cluster import Cluster
from controller.evaluator import Evaluator
from controller.state import ClusterState
from controller.store.sqlite import SQLiteStore


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
