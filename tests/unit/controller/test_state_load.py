"""Loading the state from a store snapshot: the same state at once or in steps, and the
steps let the event loop run (a new leader's lease keepalives)."""

from __future__ import annotations

import asyncio

from controller.state import ALLOCS_PER_YIELD, ClusterState
from controller.store.base import AllocTable, StoreSnapshot
from orch.v1 import node_pb2

N = 2 * ALLOCS_PER_YIELD + 1


def _snapshot() -> StoreSnapshot:
    allocs = AllocTable()
    for i in range(N):
        a = node_pb2.Allocation(id=f"a{i}", job="web", namespace="default", group="g",
                                node_id=f"n{i % 7}", name=f"web.g[{i}]",
                                desired_status=node_pb2.DESIRED_STATUS_RUN,
                                client_status=node_pb2.CLIENT_STATUS_RUNNING)
        allocs.put(a.id, a)
    return StoreSnapshot(index=42, allocs=allocs)


def test_loading_in_steps_gives_the_same_state_and_lets_the_loop_run() -> None:
    snap = _snapshot()
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async def main() -> ClusterState:
        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0)
        start = ticks
        state = await ClusterState.load(snap)
        loaded_during = ticks - start
        ticker.cancel()
        assert loaded_during >= N // ALLOCS_PER_YIELD
        return state

    stepped = asyncio.run(main())
    whole = ClusterState.from_store(snap)
    assert stepped.index == whole.index == 42
    assert set(stepped.allocs) == set(whole.allocs) == {f"a{i}" for i in range(N)}
    assert stepped.by_node == whole.by_node
    assert stepped.alloc_counts == whole.alloc_counts
    assert len(stepped.snapshot.allocs) == N


def test_reload_replaces_the_state_in_place() -> None:
    state = ClusterState()
    held = state
    asyncio.run(state.reload(_snapshot()))
    assert held.index == 42
    assert len(held.allocs) == N
