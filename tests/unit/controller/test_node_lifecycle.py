"""The node lifecycle on a fake clock: when nodes are marked down (the half-down brake and flap
doubling), and when they are forgotten (garbage collection, purge). A real SQLite store, no
agents: a node "holds a stream" while the test attaches a sink for it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from controller.cluster import Cluster
from controller.desired import NodeFeed
from controller.evaluator import Evaluator
from controller.gc import GarbageCollector, GcPolicy
from controller.nodes import NODE_KEY, REVOKED, NodeAdmin, NodeMonitor
from controller.state import ClusterState
from controller.store import SQLiteStore
from controller.store.base import Changes
from controller.usage import UsageTable
from orch.errors import RequestError
from orch.v1 import job_pb2, node_pb2

READY, DOWN = node_pb2.NODE_STATUS_READY, node_pb2.NODE_STATUS_DOWN
GRACE = 10.0
HOUR = 3600.0


@dataclass
class Clock:
    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    cluster: Cluster
    monitor: NodeMonitor
    admin: NodeAdmin
    gc: GarbageCollector
    clock: Clock
    sinks: dict[str, NodeFeed] = field(default_factory=dict)

    @property
    def state(self) -> ClusterState:
        return self.cluster.state

    def status(self, name: str) -> str:
        n = next(n for n in self.state.nodes.values() if n.name == name)
        return "ready" if n.status == READY else "down"

    async def join(self, name: str) -> str:
        """A node registers and holds its stream."""
        node = await self.monitor.register(node_pb2.Node(
            id=f"id-{name}", name=name, capacity=job_pb2.Resources(cpu_millicores=1000,
                                                                   memory_mb=1024)))
        self.connect(node.id)
        return node.id

    def connect(self, node_id: str) -> None:
        self.sinks[node_id] = self.cluster.attach(node_id, lambda: None)

    def cut(self, name: str) -> None:
        """The node's stream ends (its agent died, or the network between us failed)."""
        node_id = f"id-{name}"
        self.cluster.detach(self.sinks.pop(node_id))
        self.monitor.disconnected(node_id)

    async def run(self, seconds: float, step: float = 1.0) -> None:
        """Liveness checks every ``step`` seconds of the fake clock."""
        end = self.clock.now + seconds
        while self.clock.now < end:
            self.clock.now += step
            await self.monitor.check()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    store = SQLiteStore(tmp_path / "state.db", synchronous="normal")
    await store.open()
    clock = Clock()
    cluster = Cluster(store, ClusterState())
    evaluator = Evaluator(cluster, clock=clock)
    monitor = NodeMonitor(cluster, evaluator, node_grace=GRACE, failover_grace=GRACE,
                          flap_window=600.0, brake_window=600.0, clock=clock)
    admin = NodeAdmin(cluster, evaluator, clock=clock, on_forgotten=monitor.forget)
    gc = GarbageCollector(cluster, UsageTable(), GcPolicy(), clock=clock,
                          on_node_forgotten=monitor.forget)
    try:
        yield World(cluster, monitor, admin, gc, clock)
    finally:
        await store.close()


# --- the half-down brake --------------------------------------------------------------------------


async def test_a_node_gone_for_good_does_not_brake_the_next_failure(world: World) -> None:
    for name in ("a", "b", "c"):
        await world.join(name)
    world.cut("a")
    await world.run(GRACE + 2)
    assert world.status("a") == "down"
    await world.run(3 * HOUR, step=60.0)  # a is never coming back
    world.cut("b")
    await world.run(GRACE + 2)
    # counted with a (down for hours) this would be 2 of 3 nodes down: braked for ever
    assert world.status("b") == "down"
    assert world.status("c") == "ready"


async def test_a_fleet_that_replaces_its_machines_is_never_braked(world: World) -> None:
    alive = [f"n{i}" for i in range(4)]
    for name in alive:
        await world.join(name)
    for generation in range(12):  # three times as many retired nodes as there are nodes
        old, new = alive.pop(0), f"n{generation + 4}"
        await world.join(new)
        alive.append(new)
        world.cut(old)
        await world.run(GRACE + 2)
        assert world.status(old) == "down", f"generation {generation}: {old} was braked"
        await world.run(HOUR, step=60.0)
    assert world.monitor.braked == 0


async def test_more_than_half_unreachable_at_once_is_braked_while_it_lasts(world: World) -> None:
    names = [f"n{i}" for i in range(6)]
    for name in names:
        await world.join(name)
    for name in names[:5]:  # this controller is cut off from five of six at once
        world.cut(name)
    await world.run(GRACE + 2)
    down = [n for n in names if world.status(n) == "down"]
    assert len(down) == 3  # half of six, no more
    await world.run(2 * HOUR, step=30.0)  # long past the brake window: still the same wave
    assert [n for n in names if world.status(n) == "down"] == down
    assert world.monitor.braked > 0
    for name in names[:5]:  # the partition heals: the rest reconnect
        if name not in down:
            world.connect(f"id-{name}")
    await world.run(GRACE + 2)
    assert [n for n in names if world.status(n) == "down"] == down


async def test_a_second_failure_soon_after_the_first_waits_for_the_window(world: World) -> None:
    for name in ("a", "b", "c"):
        await world.join(name)
    world.cut("a")
    await world.run(GRACE + 2)
    assert world.status("a") == "down"
    world.cut("b")  # two of three so soon after one another: braked for now
    await world.run(60.0)
    assert world.status("b") == "ready"
    await world.run(600.0)  # a's failure has left the window: b is one failure on its own
    assert world.status("b") == "down"
    assert world.status("c") == "ready"


# --- flap doubling ----------------------------------------------------------------------------------


async def test_a_node_that_flaps_waits_twice_as_long_each_time(world: World) -> None:
    for name in ("a", "b", "c", "d"):
        await world.join(name)
    graces = []
    for _ in range(3):
        world.cut("a")
        start = world.clock.now
        while world.status("a") == "ready":
            await world.run(0.5, step=0.5)
        graces.append(world.clock.now - start)
        await world.monitor.register(world.state.nodes["id-a"])
        world.connect("id-a")
        await world.run(1.0)
    assert graces[0] == pytest.approx(GRACE, abs=1)
    assert graces[1] == pytest.approx(2 * GRACE, abs=1)
    assert graces[2] == pytest.approx(4 * GRACE, abs=1)
    await world.run(700.0, step=10.0)  # past the flap window: back to one grace
    world.cut("a")
    start = world.clock.now
    while world.status("a") == "ready":
        await world.run(0.5, step=0.5)
    assert world.clock.now - start == pytest.approx(GRACE, abs=1)


# --- forgetting nodes ---------------------------------------------------------------------------------


async def test_down_nodes_are_collected_after_the_threshold_and_removed_ids_stay_refused(
        world: World) -> None:
    for name in ("a", "b", "c", "d"):
        await world.join(name)
    await world.cluster.write(Changes(meta={NODE_KEY + "id-a": "digest", NODE_KEY + "id-b": "d"}))
    await world.admin.remove("b")  # removed for good: its id stays on the deny list
    world.cut("a")
    world.cut("b")
    await world.run(GRACE + 2)
    assert (world.status("a"), world.status("b")) == ("down", "down")
    await world.gc.collect()
    assert {"id-a", "id-b"} <= set(world.state.nodes)  # not yet: down for less than 24 h
    world.clock.now += 24 * HOUR
    report = await world.gc.collect()
    assert report.collected["nodes"] == 2
    assert set(world.state.nodes) == {"id-c", "id-d"}
    assert NODE_KEY + "id-a" not in world.state.meta
    assert REVOKED + "id-b" in world.state.meta
    snap = await world.cluster.store.load()
    assert set(snap.nodes) == {"id-c", "id-d"}
    assert REVOKED + "id-b" in snap.meta
    kinds = [e.type for e in world.cluster.events.recent]
    assert kinds.count("NodeGarbageCollected") == 2


async def test_purge_forgets_a_down_node_now_and_refuses_a_ready_one(world: World) -> None:
    for name in ("a", "b", "c"):
        await world.join(name)
    with pytest.raises(RequestError, match="only a node that is down can be purged"):
        await world.admin.purge("a")
    assert "id-a" in world.state.nodes
    world.cut("a")
    await world.run(GRACE + 2)
    await world.admin.purge("a")
    assert "id-a" not in world.state.nodes
    assert "id-a" not in (await world.cluster.store.load()).nodes
    assert world.cluster.events.recent[-1].type == "NodePurged"
    # its agent comes back: it registers afresh, as a new node would
    await world.join("a")
    assert world.status("a") == "ready"
