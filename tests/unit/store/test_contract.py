"""The store contract, written once and run against every backend: here against those that
need no server (see conftest.BACKENDS), in tests/integration/test_etcd_contract.py against
etcd."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from controller.store import Changes, Store, StoreSnapshot
from orch.errors import StoreError
from orch.v1 import controller_pb2, node_pb2
from tests.unit.store.conftest import Backend
from tests.unit.store.records import alloc, deployment, evaluation, event, job, node


async def test_an_empty_store_holds_nothing(store: Store) -> None:
    assert await store.load() == StoreSnapshot()
    assert await store.events_since(0) == []


async def test_every_record_kind_round_trips_and_survives_reopening(backend: Backend,
                                                                    tmp_path: Path) -> None:
    ev = event("web", job=job("web"))
    changes = Changes(put_jobs=[job("web")], put_allocs=[alloc("a1"), alloc("a2", index=1)],
                      put_nodes=[node("n1")], put_deployments=[deployment("d1")],
                      put_evaluations=[evaluation("e1")], events=[ev],
                      meta={"cluster_id": "c-1"})
    want = StoreSnapshot(index=1, event_index=1, jobs={("default", "web"): [job("web")]},
                         allocs={"a1": alloc("a1"), "a2": alloc("a2", index=1)},
                         nodes={"n1": node("n1")}, deployments={"d1": deployment("d1")},
                         evaluations=[evaluation("e1")], meta={"cluster_id": "c-1"})
    stored_event = event("web", job=job("web"), index=1)
    async with backend.opened(tmp_path) as s:
        assert await s.commit(changes) == 1
        assert await s.load() == want
        assert await s.events_since(0) == [stored_event]
    async with backend.opened(tmp_path) as s:
        assert await s.load() == want
        assert await s.events_since(0) == [stored_event]


async def test_every_version_of_a_job_is_kept_oldest_first(store: Store) -> None:
    await store.commit(Changes(put_jobs=[job("web", 3), job("web", 1)]))
    await store.commit(Changes(put_jobs=[job("web", 2), job("web", 1, priority=70)]))
    await store.commit(Changes(put_jobs=[job("web", 1, namespace="ops"), job("api", 1)]))
    snap = await store.load()
    assert snap.jobs == {("default", "web"): [job("web", 1, priority=70), job("web", 2),
                                              job("web", 3)],
                         ("ops", "web"): [job("web", 1, namespace="ops")],
                         ("default", "api"): [job("api", 1)]}


async def test_purge_deletes_every_version_of_one_job_only(store: Store) -> None:
    await store.commit(Changes(put_jobs=[job("web", 1), job("web", 2), job("api", 1),
                                         job("web", 1, namespace="ops")]))
    await store.commit(Changes(purge_jobs=[("default", "web"), ("default", "missing")]))
    assert set((await store.load()).jobs) == {("default", "api"), ("ops", "web")}


async def test_deletions_apply_before_puts(store: Store) -> None:
    """A purge and puts in one commit trim a job's history; a deleted and put record stays."""
    await store.commit(Changes(put_jobs=[job("web", v) for v in (1, 2, 3, 4)],
                               put_allocs=[alloc("a1")]))
    await store.commit(Changes(purge_jobs=[("default", "web")],
                               put_jobs=[job("web", 3), job("web", 4)],
                               delete_allocs=["a1"], put_allocs=[alloc("a1", node_id="n2")]))
    snap = await store.load()
    assert snap.jobs == {("default", "web"): [job("web", 3), job("web", 4)]}
    assert snap.allocs == {"a1": alloc("a1", node_id="n2")}


async def test_deletes_remove_only_what_they_name(store: Store) -> None:
    await store.commit(Changes(put_allocs=[alloc("a1"), alloc("a2")],
                               put_nodes=[node("n1"), node("n2")],
                               put_deployments=[deployment("d1"), deployment("d2")]))
    await store.commit(Changes(delete_allocs=["a1", "nope"], delete_nodes=["n2", "nope"],
                               delete_deployments=["d1", "nope"]))
    snap = await store.load()
    assert (set(snap.allocs), set(snap.nodes), set(snap.deployments)) == ({"a2"}, {"n1"}, {"d2"})


async def test_a_put_replaces_the_record_and_the_last_put_of_a_key_wins(store: Store) -> None:
    await store.commit(Changes(put_allocs=[alloc("a1")], put_nodes=[node("n1")],
                               put_deployments=[deployment("d1")]))
    lost = alloc("a1", client_status=node_pb2.CLIENT_STATUS_LOST)
    down = node("n1", status=node_pb2.NODE_STATUS_DOWN)
    await store.commit(Changes(
        put_allocs=[alloc("a1", client_status=node_pb2.CLIENT_STATUS_FAILED), lost],
        put_nodes=[down], put_deployments=[deployment("d1", status="successful")]))
    snap = await store.load()
    assert snap.allocs == {"a1": lost}
    assert snap.nodes == {"n1": down}
    assert snap.deployments == {"d1": deployment("d1", status="successful")}


async def test_meta_values_are_set_and_replaced_one_key_at_a_time(store: Store) -> None:
    await store.commit(Changes(meta={"cluster_id": "c-1", "scheduler": "binpack"}))
    await store.commit(Changes(meta={"scheduler": "spread"}))
    assert (await store.load()).meta == {"cluster_id": "c-1", "scheduler": "spread"}


async def test_meta_keys_are_deleted_before_the_commits_puts(store: Store) -> None:
    await store.commit(Changes(meta={"a": "1", "b": "2", "c": "3"}))
    await store.commit(Changes(delete_meta=["a", "b", "missing"], meta={"b": "again"}))
    assert (await store.load()).meta == {"b": "again", "c": "3"}


async def test_the_index_grows_by_one_per_commit_across_restarts(backend: Backend,
                                                                 tmp_path: Path) -> None:
    async with backend.opened(tmp_path) as s:
        got = [await s.commit(Changes(meta={"k": str(i)})) for i in range(3)]
        got.append(await s.commit(Changes()))  # an empty commit is a commit too
        assert got == [1, 2, 3, 4]
    async with backend.opened(tmp_path) as s:
        assert (await s.load()).index == 4
        assert await s.commit(Changes(put_nodes=[node("n1")])) == 5


async def test_events_get_consecutive_indexes_and_replay(backend: Backend, tmp_path: Path) -> None:
    first = [event("a"), event("b")]
    second = [event("c"), event("d", topic="node", type="NodeDown"), event("e")]
    async with backend.opened(tmp_path) as s:
        await s.commit(Changes(events=first))
        await s.commit(Changes(put_nodes=[node("n1")]))
        await s.commit(Changes(events=second))
        assert [e.index for e in first + second] == [1, 2, 3, 4, 5]  # set on the caller's events
        second[0].message = "changed by the caller afterwards"
        replay = await s.events_since(0)
        assert [(e.index, e.key) for e in replay] == [(1, "a"), (2, "b"), (3, "c"), (4, "d"),
                                                      (5, "e")]
        assert replay[2] == event("c", index=3)  # the store kept its own copy
        assert [e.key for e in await s.events_since(2)] == ["c", "d", "e"]
        assert [e.key for e in await s.events_since(1, limit=2)] == ["b", "c"]
        assert await s.events_since(5) == []
        assert (await s.load()).event_index == 5
    async with backend.opened(tmp_path) as s:
        assert (await s.load()).event_index == 5
        late = event("f")
        await s.commit(Changes(events=[late]))
        assert late.index == 6
        assert [e.index for e in await s.events_since(4)] == [5, 6]


async def test_the_event_log_keeps_the_most_recent_events(backend: Backend, tmp_path: Path) -> None:
    async with backend.opened(tmp_path, max_events=5) as s:
        for c in range(4):
            await s.commit(Changes(events=[event(f"{c}.{i}") for i in range(3)]))
        kept = await s.events_since(0)
        assert [e.index for e in kept] == [8, 9, 10, 11, 12]
        assert kept[0].index > 0 + 1  # the gap tells a watcher that it missed events
        assert (await s.load()).event_index == 12
    async with backend.opened(tmp_path, max_events=2) as s:  # a smaller bound prunes on commit
        await s.commit(Changes())
        assert [e.index for e in await s.events_since(0)] == [11, 12]


async def test_evaluations_keep_the_most_recent_in_the_order_first_stored(
        backend: Backend, tmp_path: Path) -> None:
    async def ids(s: Store) -> list[tuple[str, str]]:
        return [(e.id, e.status) for e in (await s.load()).evaluations]

    async with backend.opened(tmp_path, max_evaluations=3) as s:
        for eid in ("e1", "e2", "e3"):
            await s.commit(Changes(put_evaluations=[evaluation(eid)]))
        await s.commit(Changes(put_evaluations=[evaluation("e4"), evaluation("e5")]))
        assert await ids(s) == [("e3", "complete"), ("e4", "complete"), ("e5", "complete")]
        await s.commit(Changes(put_evaluations=[evaluation("e3", status="failed")]))
        assert await ids(s) == [("e3", "failed"), ("e4", "complete"), ("e5", "complete")]
        await s.commit(Changes(put_evaluations=[evaluation("e6")]))
        await s.commit(Changes(put_evaluations=[evaluation("e1", status="blocked")]))  # back, newest
        assert await ids(s) == [("e5", "complete"), ("e6", "complete"), ("e1", "blocked")]
    async with backend.opened(tmp_path, max_evaluations=2) as s:
        await s.commit(Changes())
        assert await ids(s) == [("e6", "complete"), ("e1", "blocked")]


async def test_single_versions_evaluations_and_meta_are_deleted_by_key(
        backend: Backend, tmp_path: Path) -> None:
    async with backend.opened(tmp_path, max_evaluations=3) as s:
        await s.commit(Changes(put_jobs=[job("web", 1), job("web", 2), job("web", 3)],
                               put_evaluations=[evaluation(e) for e in ("e1", "e2", "e3")],
                               meta={"a": "1", "b": "2"}))
        await s.commit(Changes(delete_job_versions=[("default", "web", 1), ("default", "web", 9)],
                               delete_evaluations=["e2", "missing"], delete_meta=["a", "zz"]))
        snap = await s.load()
        assert [v.version for v in snap.jobs[("default", "web")]] == [2, 3]
        assert [e.id for e in snap.evaluations] == ["e1", "e3"]
        assert snap.meta == {"b": "2"}
        # a deleted evaluation's place is not given back to an older one; put again, it is
        # the newest
        await s.commit(Changes(put_evaluations=[evaluation("e4"), evaluation("e2")]))
        assert [e.id for e in (await s.load()).evaluations] == ["e3", "e4", "e2"]
        await s.commit(Changes(delete_job_versions=[("default", "web", 2), ("default", "web", 3)]))
        assert ("default", "web") not in (await s.load()).jobs
    async with backend.opened(tmp_path, max_evaluations=3) as s:
        snap = await s.load()
        assert [e.id for e in snap.evaluations] == ["e3", "e4", "e2"]
        assert snap.meta == {"b": "2"}
        await s.commit(Changes(put_evaluations=[evaluation("e5")]))
        assert [e.id for e in (await s.load()).evaluations] == ["e4", "e2", "e5"]


@pytest.mark.parametrize("bad", [
    pytest.param({"put_allocs": [alloc("a9"), node("n9")]}, id="wrong-type"),
    pytest.param({"put_allocs": [alloc("a9"), alloc("")]}, id="empty-id"),
    pytest.param({"put_evaluations": [evaluation("e9"), deployment("d9")]}, id="wrong-kind"),
    pytest.param({"events": ["not an event"]}, id="wrong-event"),
    pytest.param({"purge_jobs": ["web"]}, id="bad-job-key"),
])
async def test_a_commit_that_fails_leaves_the_store_as_it_was(store: Store,
                                                              bad: dict[str, Any]) -> None:
    await store.commit(Changes(put_jobs=[job("web", 1)], events=[event("first")]))
    before, log = await store.load(), await store.events_since(0)
    bad = dict(bad)  # the parameter is shared by every backend's run: leave it as it is
    events = [event("lost"), *bad.pop("events", [])]
    failing = Changes(put_jobs=[job("web", 2)], put_nodes=[node("n1")], events=events,
                      meta={"k": "v"}, **bad)
    with pytest.raises((TypeError, ValueError)):
        await store.commit(failing)
    assert await store.load() == before
    assert await store.events_since(0) == log
    assert events[0].index == 0
    after = event("next")
    assert await store.commit(Changes(events=[after])) == 2  # no index was used up
    assert after.index == 2


async def test_concurrent_commits_are_serialised(store: Store) -> None:
    async def one(i: int) -> tuple[int, int]:
        index = await store.commit(Changes(put_allocs=[alloc(f"a{i}")],
                                           events=[event(f"{i}.0"), event(f"{i}.1")],
                                           meta={f"k{i}": str(i)}))
        return i, index

    done = await asyncio.gather(*(one(i) for i in range(20)))
    assert sorted(index for _, index in done) == list(range(1, 21))
    by_key = {e.key: e.index for e in await store.events_since(0)}
    for i, index in done:  # each commit's events are together, in the order of the commits
        assert (by_key[f"{i}.0"], by_key[f"{i}.1"]) == (2 * index - 1, 2 * index)
    snap = await store.load()
    assert (snap.index, snap.event_index, len(snap.allocs), len(snap.meta)) == (20, 40, 20, 20)


async def test_close_finishes_the_commits_already_made(backend: Backend, tmp_path: Path) -> None:
    s = backend.make(tmp_path)
    await s.open()
    *indexes, _ = await asyncio.gather(*(s.commit(Changes(meta={"k": str(i)})) for i in range(5)),
                                       s.close())
    assert indexes == [1, 2, 3, 4, 5]
    with pytest.raises(StoreError):
        await s.commit(Changes())
    with pytest.raises(StoreError):
        await s.load()
    await s.close()  # closing twice is harmless
    async with backend.opened(tmp_path) as again:
        assert (await again.load()).index == 5


async def test_loaded_records_belong_to_the_caller(store: Store) -> None:
    await store.commit(Changes(put_nodes=[node("n1")], put_evaluations=[evaluation("e1")]))
    first = await store.load()
    first.nodes["n1"].name = "changed"
    first.evaluations.clear()
    second = await store.load()
    assert second.nodes["n1"] == node("n1")
    assert second.evaluations == [evaluation("e1")]
    assert isinstance(second.evaluations[0], controller_pb2.Evaluation)
