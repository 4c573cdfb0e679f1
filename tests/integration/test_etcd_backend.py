"""What is particular to the etcd backend: key layout, limits, fencing, a second writer, the
history it compacts, and commits that outlive their caller. Runs against the session's etcd
(tests/etcd_server.py); failures of etcd itself are in tests/integration/test_etcd_store.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from controller.store import Changes, EtcdStore
from controller.store.etcd import MAX_REQUEST_BYTES, MAX_TXN_OPS
from controller.store.etcd_client import EtcdClient, EtcdRejected, TxnResult, prefix_end
from orch.errors import ConfigError, FencedError, StoreError
from orch.v1 import controller_pb2
from tests.etcd_server import EtcdCluster
from tests.unit.store.records import alloc, evaluation, event, job, node

pytestmark = pytest.mark.etcd


@pytest.fixture
async def client(etcd_server: EtcdCluster) -> AsyncIterator[EtcdClient]:
    c = EtcdClient(etcd_server.endpoints, timeout=5.0)
    await c.open()
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def store(etcd_server: EtcdCluster, etcd_prefix: str) -> AsyncIterator[EtcdStore]:
    s = EtcdStore(etcd_server.endpoints, prefix=etcd_prefix)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def keys_under(client: EtcdClient, prefix: str) -> list[str]:
    got = await client.range(prefix.encode(), prefix_end(prefix.encode()), keys_only=True)
    return [kv.key.decode()[len(prefix):] for kv in got.kvs]


def registration(n: int, version: int = 1) -> Changes:
    """A job of ``n`` allocations, as the controller registers it: one commit."""
    return Changes(put_jobs=[job("big", version)],
                   put_allocs=[alloc(f"big-{version}-{i:04d}", job_name="big", index=i,
                                     node_id=f"n{i % 50}", version=version) for i in range(n)],
                   put_evaluations=[evaluation(f"eval-big-{version}", job_name="big")],
                   events=[event("big", job=job("big", version))])


async def test_the_key_layout_is_as_documented(store: EtcdStore, client: EtcdClient,
                                               etcd_prefix: str) -> None:
    await store.commit(Changes(put_jobs=[job("a/b", 2, namespace="ops")], put_allocs=[alloc("a1")],
                               put_nodes=[node("n1")], put_evaluations=[evaluation("e1")],
                               events=[event("x")], meta={"cluster id": "c-1"}))
    pad = "0" * 19
    assert await keys_under(client, etcd_prefix) == [
        "/allocs/a1", f"/evals/{pad}1/e1", f"/events/{pad}1", f"/jobs/ops/a%2Fb/{pad}2",
        "/meta/cluster%20id", "/nodes/n1", "/state"]
    state = await client.get(f"{etcd_prefix}/state".encode())
    assert state is not None
    assert state.value.startswith(b'{"schema":2,"index":1,"event_index":1,"eval_seq":1,')
    meta = await client.get(f"{etcd_prefix}/meta/cluster%20id".encode())
    assert meta is not None
    assert meta.value == b"c-1"


async def test_a_registration_of_1000_allocations_is_one_commit(store: EtcdStore,
                                                                etcd_prefix: str) -> None:
    assert await store.commit(registration(1000)) == 1
    assert await store.commit(registration(1000, version=2)) == 2
    snap = await store.load()
    assert len(snap.allocs) == 2000
    assert [j.version for j in snap.jobs[("default", "big")]] == [1, 2]


async def test_a_commit_beyond_the_limits_is_refused_before_it_is_sent(
        etcd_server: EtcdCluster, etcd_prefix: str) -> None:
    s = EtcdStore(etcd_server.endpoints, prefix=etcd_prefix, max_txn_ops=500,
                  max_request_bytes=128 * 1024)
    await s.open()
    try:
        await s.commit(Changes(put_nodes=[node("n1")]))
        with pytest.raises(StoreError, match=r"needs 1,00\d operations .*max_txn_ops=500"):
            await s.commit(registration(1000))
        with pytest.raises(StoreError, match=r"is [\d,]+ bytes, more than .*max_request_bytes"):
            await s.commit(registration(400))
        snap = await s.load()
        assert (snap.index, snap.event_index, set(snap.nodes), snap.allocs) == (1, 0, {"n1"}, {})
        assert await s.commit(registration(100)) == 2  # no index was used up
    finally:
        await s.close()


@pytest.mark.parametrize(("ops", "size", "flag"), [
    (MAX_TXN_OPS + 1, MAX_REQUEST_BYTES, "--max-txn-ops=10001"),
    (MAX_TXN_OPS, 2 * MAX_REQUEST_BYTES, "--max-request-bytes=20971520"),
])
async def test_open_refuses_limits_beyond_what_etcd_allows(
        etcd_server: EtcdCluster, etcd_prefix: str, ops: int, size: int, flag: str) -> None:
    s = EtcdStore(etcd_server.endpoints, prefix=etcd_prefix, max_txn_ops=ops,
                  max_request_bytes=size)
    with pytest.raises(ConfigError, match=f"start every member with {flag}"):
        await s.open()
    with pytest.raises(StoreError, match="not open"):
        await s.commit(Changes())


async def test_a_queue_of_commits_goes_in_few_transactions(store: EtcdStore,
                                                           client: EtcdClient) -> None:
    await store.commit(Changes())
    before = (await client.range(b"/")).revision
    indexes = await asyncio.gather(*(store.commit(Changes(put_nodes=[node(f"n{i}")],
                                                          events=[event(f"e{i}")]))
                                     for i in range(30)))
    assert indexes == list(range(2, 32))
    revisions = (await client.range(b"/")).revision - before
    assert revisions < 10  # one etcd revision per transaction, not per commit
    assert [e.index for e in await store.events_since(0)] == list(range(1, 31))
    batches = await keys_under(client, f"{store.prefix}/events/")
    assert len(batches) == revisions  # a transaction's events under one key
    assert [e.index for e in await store.events_since(7, limit=5)] == list(range(8, 13))


async def test_a_store_of_layout_1_keeps_its_single_events_until_pruned(
        etcd_server: EtcdCluster, etcd_prefix: str, client: EtcdClient) -> None:
    """Layout 1 kept one event per key; its keys read as batches of one, and age out."""
    for i in range(1, 4):
        await client.put(f"{etcd_prefix}/events/{i:020d}".encode(),
                         event(f"old{i}", index=i).SerializeToString())
    await client.put(f"{etcd_prefix}/state".encode(),
                     b'{"schema":1,"index":3,"event_index":3,"eval_seq":0,"token":""}')
    s = EtcdStore(etcd_server.endpoints, prefix=etcd_prefix, max_events=4)
    await s.open()
    try:
        assert [e.key for e in await s.events_since(1)] == ["old2", "old3"]
        assert await s.commit(Changes(events=[event("new4"), event("new5")])) == 4
        assert [(e.index, e.key) for e in await s.events_since(0)] == [
            (2, "old2"), (3, "old3"), (4, "new4"), (5, "new5")]
        assert (await s.size()).rows["events"] == 4
        await s.commit(Changes(events=[event("new6"), event("new7")]))
        assert [e.key for e in await s.events_since(0)] == ["new4", "new5", "new6", "new7"]
        pad = "0" * 19
        assert await keys_under(client, f"{etcd_prefix}/events/") == [f"{pad}5", f"{pad}7"]
        state = await client.get(f"{etcd_prefix}/state".encode())
        assert state is not None
        assert state.value.startswith(b'{"schema":2,')
    finally:
        await s.close()


async def test_a_batch_across_the_log_s_floor_is_read_from_the_floor(
        etcd_server: EtcdCluster, etcd_prefix: str, client: EtcdClient) -> None:
    s = EtcdStore(etcd_server.endpoints, prefix=etcd_prefix, max_events=4)
    await s.open()
    try:
        await s.commit(Changes(events=[event(f"a{i}") for i in range(3)]))   # 1-3
        await s.commit(Changes(events=[event(f"b{i}") for i in range(3)]))   # 4-6
        assert [e.index for e in await s.events_since(0)] == [3, 4, 5, 6]
        assert [e.index for e in await s.events_since(0, limit=2)] == [3, 4]
        assert (await s.size()).rows["events"] == 4
        await s.commit(Changes(events=[event(f"c{i}") for i in range(9)]))  # 7-15, 11 on kept
        assert [e.index for e in await s.events_since(0)] == [12, 13, 14, 15]
        pad = "0" * 18
        assert await keys_under(client, f"{etcd_prefix}/events/") == [f"{pad}15"]
        assert (await s.size()).rows["events"] == 4
    finally:
        await s.close()


async def test_a_batch_too_big_for_one_transaction_is_split(etcd_server: EtcdCluster,
                                                            etcd_prefix: str) -> None:
    s = EtcdStore(etcd_server.endpoints, prefix=etcd_prefix, max_txn_ops=1200)
    await s.open()
    try:
        got = await asyncio.gather(*(s.commit(registration(400, version=v)) for v in range(1, 7)))
        assert got == [1, 2, 3, 4, 5, 6]
        assert len((await s.load()).allocs) == 2400
    finally:
        await s.close()


async def test_a_commit_whose_caller_is_cancelled_still_lands(store: EtcdStore) -> None:
    task = asyncio.create_task(store.commit(Changes(put_nodes=[node("n1")])))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    snap = await store.load()  # queued behind the commit
    assert (snap.index, set(snap.nodes)) == (1, {"n1"})


async def test_fencing_refuses_a_deposed_leader_and_writes_nothing(
        etcd_server: EtcdCluster, etcd_prefix: str, client: EtcdClient) -> None:
    """Leadership changes hands (the leader key is recreated by another controller): the old
    leader's commit is refused by etcd itself."""
    key = f"{etcd_prefix}/leader".encode()
    old = EtcdStore(etcd_server.endpoints, prefix=etcd_prefix)
    new = EtcdStore(etcd_server.endpoints, prefix=etcd_prefix)
    await old.open()
    await new.open()
    try:
        first = await client.put(key, b'{"name":"old"}')
        old.fence(key.decode(), first)
        assert old.fenced_by == (key.decode(), first)
        assert await old.commit(Changes(put_nodes=[node("n1")], events=[event("by-old")])) == 1

        await client.delete(key)
        lost = event("lost")
        with pytest.raises(FencedError, match=r"no longer the leader: the leader key .* is gone"):
            await old.commit(Changes(put_nodes=[node("n2")], events=[lost]))
        assert lost.index == 0

        second = await client.put(key, b'{"name":"new"}')
        new.fence(key.decode(), second)
        snap = await new.load()
        assert (snap.index, set(snap.nodes)) == (1, {"n1"})
        assert await new.commit(Changes(put_nodes=[node("n3")], events=[event("by-new")])) == 2

        with pytest.raises(FencedError, match=r"now belongs to '\{\"name\":\"new\"\}'") as refused:
            await old.commit(Changes(put_nodes=[node("n2")], meta={"k": "v"}))
        assert (refused.value.holder, refused.value.revision) == ('{"name":"new"}', first)
        snap = await new.load()
        assert (snap.index, set(snap.nodes), snap.meta) == (2, {"n1", "n3"}, {})
        assert [e.key for e in await new.events_since(0)] == ["by-old", "by-new"]
    finally:
        await old.close()
        await new.close()


async def test_a_second_writer_is_refused_until_it_loads(etcd_server: EtcdCluster,
                                                         etcd_prefix: str) -> None:
    a = EtcdStore(etcd_server.endpoints, prefix=etcd_prefix)
    b = EtcdStore(etcd_server.endpoints, prefix=etcd_prefix)
    await a.open()
    await b.open()
    try:
        await a.commit(Changes(put_nodes=[node("n1")]))
        with pytest.raises(StoreError, match=r"another writer .* commit index is 1, this store "
                                             r"expected 0\); nothing was written"):
            await b.commit(Changes(put_nodes=[node("n2")]))
        assert set((await b.load()).nodes) == {"n1"}
        assert await b.commit(Changes(put_nodes=[node("n2")])) == 2
    finally:
        await a.close()
        await b.close()


async def test_the_store_compacts_the_history_it_made(etcd_server: EtcdCluster, etcd_prefix: str,
                                                      client: EtcdClient) -> None:
    s = EtcdStore(etcd_server.endpoints, prefix=etcd_prefix, compact_every=5)
    await s.open()
    try:
        start = (await client.range(b"/")).revision
        for i in range(12):
            await s.commit(Changes(meta={"k": str(i)}))
        for _ in range(50):  # compaction runs in the background
            try:
                await client.range(b"/", revision=start + 1)
            except EtcdRejected as e:
                compacted = e.details
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the history was not compacted")
        assert "compacted" in compacted
        assert (await s.load()).meta == {"k": "11"}
    finally:
        await s.close()


class _Recording(EtcdClient):
    """A real client that keeps the transactions it sends (etcd's TxnRequest messages)."""

    txns: list[Any]

    async def txn(self, txn: Any, *, within: float | None = None) -> TxnResult:
        self.txns.append(txn)
        return await super().txn(txn, within=within)


async def test_prunes_start_at_the_oldest_record_kept(etcd_server: EtcdCluster,
                                                     etcd_prefix: str) -> None:
    """etcd walks every key of a range, the deleted ones too until its history is compacted:
    a prune from the directory would walk everything the commits before it pruned."""
    rec = _Recording(etcd_server.endpoints, timeout=5.0)
    rec.txns = []
    await rec.open()
    s = EtcdStore(rec, prefix=etcd_prefix, max_events=3, max_evaluations=2)
    await s.open()
    try:
        k = s.keys
        for i in range(1, 8):
            rec.txns.clear()
            await s.commit(Changes(events=[event(f"e{i}")], put_evaluations=[evaluation(f"v{i}")]))
            prunes = [(op.request_delete_range.key, op.request_delete_range.range_end)
                      for t in rec.txns for op in t.success
                      if op.WhichOneof("request") == "request_delete_range"
                      and op.request_delete_range.range_end]
            expected = []
            if i > 2:
                expected.append((k.evals_below(i - 2), k.evals_below(i - 1)))
            if i > 3:
                expected.append((k.event(i - 3), k.event(i - 2)))
            assert prunes == expected, i
        assert [e.key for e in await s.events_since(0)] == ["e5", "e6", "e7"]
        assert [e.id for e in (await s.load()).evaluations] == ["v6", "v7"]
    finally:
        await s.close()
        await rec.close()


async def test_a_store_of_another_layout_is_refused(etcd_server: EtcdCluster, etcd_prefix: str,
                                                    client: EtcdClient) -> None:
    await client.put(f"{etcd_prefix}/state".encode(),
                         b'{"schema":99,"index":1,"event_index":0,"eval_seq":0,"token":""}')
    s = EtcdStore(etcd_server.endpoints, prefix=etcd_prefix)
    with pytest.raises(ConfigError, match="written by a newer orch"):
        await s.open()
    await client.put(f"{etcd_prefix}/state".encode(), b"something else")
    with pytest.raises(ConfigError, match="not an orch store"):
        await s.open()


def test_bad_settings_are_configuration_errors() -> None:
    with pytest.raises(ConfigError, match="prefix must start with '/'"):
        EtcdStore(["127.0.0.1:2379"], prefix="orch")
    with pytest.raises(ConfigError, match="not host:port"):
        EtcdStore(["127.0.0.1"])
    with pytest.raises(ConfigError, match="only http://"):
        EtcdStore(["https://127.0.0.1:2379"])
    with pytest.raises(ConfigError, match="at least 1"):
        EtcdStore(["127.0.0.1:2379"], max_events=0)


async def test_events_of_a_store_are_protobuf_events(store: EtcdStore) -> None:
    await store.commit(Changes(events=[event("a")]))
    (ev,) = await store.events_since(0)
    assert isinstance(ev, controller_pb2.Event)
    assert ev == event("a", index=1)
