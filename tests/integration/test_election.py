"""Leader election on a real etcd: one leader among three candidates, a crashed leader replaced
within the TTL plus a second, a resignation handed over at once, a deposed leader fenced off
the store, a lost leader told so, and an etcd restart that leaves exactly one leader."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from controller.election import Election, ElectionConfig, Leader, Term
from controller.store import Changes, EtcdStore
from controller.store.etcd_client import EtcdClient
from orch.errors import FencedError, StoreError
from tests.etcd_server import EtcdCluster
from tests.unit.store.records import event, node

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(60)]

TTL = 2
CONFIG = ElectionConfig(ttl=TTL)


@contextlib.asynccontextmanager
async def candidates(endpoints: list[str], prefix: str, n: int = 3) -> AsyncIterator[list[Election]]:
    elections = [Election(endpoints, name=f"c{i}", address=f"127.0.0.{i + 1}:4647", prefix=prefix,
                          config=CONFIG) for i in range(n)]
    for e in elections:
        await e.open()
    try:
        yield elections
    finally:
        for e in elections:
            await e.close()


async def first(tasks: list[asyncio.Task[Term]], within: float) -> tuple[int, Term]:
    """The first campaign to win among ``tasks``: (its position, its term)."""
    done, _ = await asyncio.wait([t for t in tasks if not t.done()], timeout=within,
                                 return_when=asyncio.FIRST_COMPLETED)
    assert done, f"nobody was elected within {within} s"
    (task,) = done
    return tasks.index(task), task.result()


async def cancel(tasks: list[asyncio.Task[Term]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_one_leader_among_three_and_everyone_can_read_it(etcd_server: EtcdCluster,
                                                               etcd_prefix: str) -> None:
    async with candidates(etcd_server.endpoints, etcd_prefix) as cs:
        assert await cs[0].leader() is None
        tasks = [asyncio.create_task(c.campaign()) for c in cs]
        try:
            i, term = await first(tasks, within=5)
            await asyncio.sleep(0.5)
            assert [t.done() for t in tasks].count(True) == 1
            assert term.current
            assert term.key == f"{etcd_prefix}/leader"
            assert term.revision > 0
            assert await cs[i].campaign() is term  # already leading: the same term
            for c in cs:
                assert await c.leader() == Leader(f"c{i}", f"127.0.0.{i + 1}:4647", term.revision)
        finally:
            await cancel(tasks)


async def test_closing_a_candidate_ends_its_campaign(etcd_server: EtcdCluster,
                                                     etcd_prefix: str) -> None:
    async with candidates(etcd_server.endpoints, etcd_prefix, n=2) as (a, b):
        await a.campaign()
        waiting = asyncio.create_task(b.campaign())
        await asyncio.sleep(0.2)
        await b.close()
        with pytest.raises(StoreError, match="is closed"):
            await asyncio.wait_for(waiting, TTL + 2)


@pytest.mark.parametrize("how", ["crash", "resign"])
async def test_the_next_leader_takes_over(etcd_server: EtcdCluster, etcd_prefix: str,
                                          how: str) -> None:
    """A crash (keepalives stop, no resignation): within TTL + 1 s. A resignation: at once."""
    async with candidates(etcd_server.endpoints, etcd_prefix) as cs:
        tasks = [asyncio.create_task(c.campaign()) for c in cs]
        try:
            i, old = await first(tasks, within=5)
            await asyncio.sleep(0.3)
            t0 = time.monotonic()
            if how == "crash":
                await cs[i].close()
            else:
                await cs[i].resign()
            assert not old.current
            assert old.reason == ("the election was closed" if how == "crash" else "resigned")
            j, new = await first(tasks, within=TTL + 3)
            took = time.monotonic() - t0
            assert j != i
            assert new.revision > old.revision
            assert took <= (TTL + 1.0 if how == "crash" else 0.5), took
            leader = await cs[j].leader()
            assert leader is not None
            assert leader.name == f"c{j}"
        finally:
            await cancel(tasks)


async def test_a_deposed_leader_cannot_write(etcd_server: EtcdCluster, etcd_prefix: str) -> None:
    """The old leader stops (as if paused: no keepalive, no resignation), another is elected,
    and when the old one wakes up its commit is refused by etcd and nothing is written."""
    async with candidates(etcd_server.endpoints, etcd_prefix, n=2) as (a, b):
        store_a = EtcdStore(etcd_server.endpoints, prefix=etcd_prefix)
        store_b = EtcdStore(etcd_server.endpoints, prefix=etcd_prefix)
        await store_a.open()
        await store_b.open()
        try:
            term_a = await a.campaign()
            store_a.fence(term_a.key, term_a.revision)
            await store_a.load()
            assert await store_a.commit(Changes(put_nodes=[node("n1")], events=[event("a")])) == 1

            campaign_b = asyncio.create_task(b.campaign())
            await a.close()  # a "pauses": its keepalives stop, it does not resign
            term_b = await asyncio.wait_for(campaign_b, TTL + 2)
            store_b.fence(term_b.key, term_b.revision)
            assert (await store_b.load()).index == 1
            assert await store_b.commit(Changes(put_nodes=[node("n2")], events=[event("b")])) == 2

            late = event("late")  # a wakes up and writes
            with pytest.raises(FencedError, match=r"no longer the leader: .* now belongs to .*c1"):
                await store_a.commit(Changes(put_nodes=[node("evil")], events=[late],
                                             meta={"k": "v"}))
            assert late.index == 0
            snap = await store_b.load()
            assert (snap.index, set(snap.nodes), snap.meta) == (2, {"n1", "n2"}, {})
            assert [e.key for e in await store_b.events_since(0)] == ["a", "b"]
        finally:
            await store_a.close()
            await store_b.close()


async def lost_within(term: Term, seconds: float) -> float:
    t0 = time.monotonic()
    await asyncio.wait_for(term.lost.wait(), seconds)
    return time.monotonic() - t0


@pytest.mark.parametrize("how", ["key deleted", "lease revoked"])
async def test_a_leader_is_told_when_it_loses(etcd_server: EtcdCluster, etcd_prefix: str,
                                              how: str) -> None:
    async with candidates(etcd_server.endpoints, etcd_prefix, n=1) as (c,):
        term = await c.campaign()
        other = EtcdClient(etcd_server.endpoints)
        await other.open()
        try:
            if how == "key deleted":
                await other.delete(term.key.encode())
            else:
                await other.lease_revoke(term.lease)
            await lost_within(term, CONFIG.interval + 1)
            assert term.reason in ("the leader key was deleted", "the lease expired")
            again = await asyncio.wait_for(c.campaign(), 5)  # and may lead again
            assert again is not term
            assert again.current
            assert again.revision > term.revision
        finally:
            await other.close()


async def test_a_leader_cut_off_from_etcd_steps_down_before_its_lease_expires() -> None:
    with EtcdCluster(1, first_host=76) as cluster:
        async with candidates(cluster.endpoints, "/orch", n=1) as (c,):
            term = await c.campaign()
            cluster.pause(cluster.members[0])
            try:
                took = await lost_within(term, TTL + 1)
            finally:
                cluster.resume(cluster.members[0])
            assert took < TTL, took  # renew deadline (2/3 of the TTL) after the last keepalive
            assert term.reason.startswith("no keepalive succeeded")


async def test_a_leader_whose_event_loop_stalls_keeps_its_lease(etcd_server: EtcdCluster,
                                                                etcd_prefix: str) -> None:
    """Keepalives run on a thread of their own: a leader busy for longer than the TTL
    (loading a big state, committing a big plan) keeps its lease, and nobody takes over."""
    async with candidates(etcd_server.endpoints, etcd_prefix, n=2) as (a, b):
        term = await a.campaign()
        waiting = asyncio.create_task(b.campaign())
        try:
            await asyncio.sleep(0.3)
            time.sleep(2.5 * TTL)  # noqa: ASYNC251 (the point: the whole event loop stalls)
            await asyncio.sleep(1.0)
            assert term.current, term.reason
            assert not waiting.done()
            assert await b.leader() == Leader("c0", "127.0.0.1:4647", term.revision)
        finally:
            await cancel([waiting])


async def watch_leaders(cs: list[Election], terms: dict[str, Term], until: Callable[[], bool],
                        within: float) -> int:
    """Sample who believes it leads until ``until()``; the most that believed it at once."""
    most = 0
    deadline = time.monotonic() + within
    while not until() and time.monotonic() < deadline:
        most = max(most, sum(1 for c in cs if c.name in terms and terms[c.name].current))
        await asyncio.sleep(0.02)
    return most


async def run_candidate(c: Election, terms: dict[str, Term]) -> None:
    """What a controller does: campaign, lead until the term is lost, campaign again."""
    while True:
        term = await c.campaign()
        terms[c.name] = term
        await term.lost.wait()


@pytest.mark.parametrize("down", [0.0, TTL + 0.5], ids=["quick", "longer-than-the-ttl"])
async def test_an_etcd_restart_keeps_or_reelects_exactly_one_leader(down: float) -> None:
    """Back quickly: the leader usually keeps its term (etcd keeps leases across a restart).
    Down longer than the renew deadline: the leader steps down, and once etcd is back it
    revokes its lease and one candidate is elected. Never two at once."""
    with EtcdCluster(1, first_host=77) as cluster:
        async with candidates(cluster.endpoints, "/orch") as cs:
            terms: dict[str, Term] = {}
            tasks = [asyncio.create_task(run_candidate(c, terms)) for c in cs]
            try:
                assert await watch_leaders(cs, terms, lambda: bool(terms), within=5) <= 1
                member = cluster.members[0]
                cluster.stop(member)
                most = await watch_leaders(cs, terms, lambda: False, within=down)
                cluster.start_member(member)
                most = max(most, await watch_leaders(cs, terms, lambda: False, within=TTL + 2))
                assert most <= 1
                leading = [n for n, t in terms.items() if t.current]
                assert len(leading) == 1, {n: t.reason for n, t in terms.items()}
                leader = await cs[0].leader()
                assert leader is not None
                assert leader.name == leading[0]
                assert leader.revision == terms[leading[0]].revision
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)


async def test_followers_observe_every_change_of_leader(etcd_server: EtcdCluster,
                                                        etcd_prefix: str) -> None:
    async with candidates(etcd_server.endpoints, etcd_prefix, n=2) as (a, b):
        seen: list[str | None] = []
        changed = asyncio.Event()

        async def follow() -> None:
            async for leader in b.observe():
                seen.append(None if leader is None else leader.name)
                changed.set()

        async def next_change(action: Callable[[], Awaitable[object]]) -> None:
            changed.clear()
            await action()
            await asyncio.wait_for(changed.wait(), 3)

        task = asyncio.create_task(follow())
        try:
            await asyncio.wait_for(changed.wait(), 3)
            await next_change(a.campaign)
            await next_change(a.resign)
            assert seen == [None, "c0", None]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
