"""The etcd store when etcd fails: gone (commits fail quickly, write nothing, and resume when
it returns), paused (a commit in doubt, settled when it answers again), and one member of
three killed (commits go on). Each test runs etcd members of its own (tests/etcd_server.py)."""

from __future__ import annotations

import asyncio
import time

import pytest

from controller.store import Changes, EtcdStore
from orch.errors import CommitInDoubtError, StoreError
from tests.etcd_server import EtcdCluster
from tests.unit.store.records import event, node

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(60)]


async def commit_until_it_succeeds(store: EtcdStore, changes: Changes, within: float) -> int:
    deadline = time.monotonic() + within
    while True:
        try:
            return await store.commit(changes)
        except StoreError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_without_etcd_commits_fail_quickly_and_resume_when_it_returns() -> None:
    with EtcdCluster(1, first_host=74) as cluster:
        (member,) = cluster.members
        store = EtcdStore(cluster.endpoints, prefix="/orch")  # the default timeout: 5 s
        await store.open()
        try:
            assert await store.commit(Changes(put_nodes=[node("n1")], events=[event("a")])) == 1
            cluster.stop(member)
            lost = event("lost")
            t0 = time.monotonic()
            with pytest.raises(StoreError, match=r"cannot be reached") as failed:
                await store.commit(Changes(put_nodes=[node("n2")], events=[lost]))
            assert time.monotonic() - t0 < 2.0  # nothing listens: no need to wait 5 s
            # Usually refused at once ("wrote nothing"); sent on a connection whose close was
            # not yet seen, it is in doubt instead, and settled when etcd is back.
            assert isinstance(failed.value, CommitInDoubtError) or "wrote nothing" in str(
                failed.value)
            assert lost.index == 0
            t0 = time.monotonic()
            with pytest.raises(StoreError):
                await store.load()
            assert time.monotonic() - t0 < 2.0

            cluster.start_member(member)
            back = event("back")
            assert await commit_until_it_succeeds(
                store, Changes(put_nodes=[node("n3")], events=[back]), within=10) == 2
            assert back.index == 2  # nothing was used up by the failed commit
            snap = await store.load()
            assert (snap.index, snap.event_index, set(snap.nodes)) == (2, 2, {"n1", "n3"})
        finally:
            await store.close()


async def test_a_paused_etcd_leaves_a_commit_in_doubt_until_it_answers() -> None:
    with EtcdCluster(1, first_host=75) as cluster:
        (member,) = cluster.members
        store = EtcdStore(cluster.endpoints, prefix="/orch", timeout=1.0)
        await store.open()
        try:
            await store.commit(Changes(put_nodes=[node("n1")]))
            cluster.pause(member)
            t0 = time.monotonic()
            try:
                with pytest.raises(CommitInDoubtError, match="whether it was applied"):
                    await store.commit(Changes(put_nodes=[node("n2")], events=[event("maybe")]))
                assert time.monotonic() - t0 < 2.0
                with pytest.raises(StoreError, match="settle an earlier commit") as next_one:
                    await store.commit(Changes(put_nodes=[node("n9")]))  # never sent
                assert not isinstance(next_one.value, CommitInDoubtError)
            finally:
                cluster.resume(member)
            snap = await store.load()  # settles the commit in doubt first
            landed = "n2" in snap.nodes
            assert snap.index == (2 if landed else 1)
            assert snap.event_index == (1 if landed else 0)
            assert await store.commit(Changes(put_nodes=[node("n3")])) == snap.index + 1
            again = await store.load()
            assert set(again.nodes) == {"n1", "n3"} | ({"n2"} if landed else set())
        finally:
            await store.close()


async def test_commits_go_on_when_one_etcd_member_of_three_is_killed(
        etcd_cluster: EtcdCluster) -> None:
    store = EtcdStore(etcd_cluster.endpoints, prefix="/orch", timeout=5.0)
    await store.open()
    try:
        done: list[int] = []
        ten = asyncio.Event()

        async def writer() -> None:
            for i in range(40):
                done.append(await store.commit(Changes(put_nodes=[node(f"n{i}")],
                                                       events=[event(f"e{i}")])))
                if len(done) == 10:
                    ten.set()
                await asyncio.sleep(0.01)

        task = asyncio.create_task(writer())
        await asyncio.wait_for(ten.wait(), 10)
        etcd_cluster.kill(etcd_cluster.members[0])  # the member the client talks to first
        await asyncio.wait_for(task, 30)
        assert done == list(range(1, 41))
        snap = await store.load()
        assert (snap.index, snap.event_index, len(snap.nodes)) == (40, 40, 40)
    finally:
        await store.close()
    # A controller that starts now finds the two members left.
    again = EtcdStore(etcd_cluster.endpoints, prefix="/orch", timeout=5.0)
    t0 = time.monotonic()
    await again.open()
    try:
        assert (await again.load()).index == 40
        assert time.monotonic() - t0 < 3.0
    finally:
        await again.close()
