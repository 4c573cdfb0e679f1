"""The snapshot keeps per-node usage right through every kind of change."""

import dataclasses

from controller.scheduler import ClusterSnapshot, alloc_info_from_proto, node_info_from_proto
from orch.jobspec.model import group_to_proto
from orch.v1 import job_pb2, node_pb2
from tests.unit.scheduler.factories import alloc, group, node


def test_usage_counts_only_allocations_that_occupy() -> None:
    snap = ClusterSnapshot([node(1)])
    snap.upsert_alloc(alloc("a", "n1", cpu=300, mem=100, ports={"http": 8080}))
    snap.upsert_alloc(alloc("b", "n1", cpu=200, mem=50, client="complete"))
    snap.upsert_alloc(alloc("c", "n1", cpu=200, mem=50, desired="stop"))
    n1 = snap.node("n1")
    assert n1 is not None
    assert (n1.cpu_used, n1.mem_used, set(n1.allocs)) == (300, 100, {"a"})
    assert 8080 in n1.ports
    assert n1.group_counts == {("default", "app", "web"): 1}


def test_status_changes_and_removal_release_resources() -> None:
    snap = ClusterSnapshot([node(1)])
    a = alloc("a", "n1", cpu=300, mem=100, ports={"http": 8080})
    snap.upsert_alloc(a)
    snap.upsert_alloc(dataclasses.replace(a, client="failed"))
    n1 = snap.node("n1")
    assert n1 is not None
    assert (n1.cpu_used, n1.mem_used, n1.ports, n1.group_counts) == (0, 0, {}, {})
    snap.upsert_alloc(a)
    snap.remove_alloc("a")
    assert (n1.cpu_used, n1.allocs) == (0, {})
    assert snap.allocs_of_job("default", "app") == []


def test_reserved_ports_and_capacity_are_accounted() -> None:
    snap = ClusterSnapshot([node(1, reserved_ports=frozenset({22}), reserved_cpu_millicores=500,
                                 reserved_memory_mb=512)])
    n1 = snap.node("n1")
    assert n1 is not None
    assert (n1.cpu_total, n1.mem_total) == (3500, 3584)
    snap.upsert_alloc(alloc("a", "n1", ports={"ssh": 22}))
    snap.remove_alloc("a")
    assert 22 in n1.ports  # the reservation stays


def test_allocations_wait_for_their_node_and_survive_its_removal() -> None:
    snap = ClusterSnapshot()
    snap.upsert_alloc(alloc("a", "n1", cpu=300))
    snap.upsert_node(node(1))
    n1 = snap.node("n1")
    assert n1 is not None
    assert n1.cpu_used == 300
    snap.remove_node("n1")
    assert snap.node("n1") is None
    snap.upsert_node(node(1))
    n1 = snap.node("n1")
    assert n1 is not None
    assert n1.cpu_used == 300


def test_node_updates_keep_usage_and_move_classes() -> None:
    snap = ClusterSnapshot([node(1), node(2)])
    snap.upsert_alloc(alloc("a", "n1", cpu=300))
    before = snap.node("n1")
    assert before is not None
    assert before.cls is snap.node("n2").cls  # type: ignore[union-attr]
    snap.upsert_node(node(1, node_class="gpu", eligible=False))
    after = snap.node("n1")
    assert after is not None
    assert after.cpu_used == 300
    assert not after.schedulable
    assert after.cls is not snap.node("n2").cls  # type: ignore[union-attr]


def test_a_node_registered_again_as_it_was_changes_nothing() -> None:
    snap = ClusterSnapshot([node(1), node(2)])
    snap.upsert_alloc(alloc("a", "n1", cpu=300))
    versions = (snap.version, snap.node_version)
    snap.upsert_node(node(1))  # an agent reconnecting: evaluations settled on it stay so
    assert (snap.version, snap.node_version) == versions
    assert snap.node("n1").cpu_used == 300  # type: ignore[union-attr]
    snap.upsert_node(node(1, eligible=False))
    assert snap.node_version == versions[1] + 1


def test_order_is_stable_whatever_the_insertion_order() -> None:
    a = ClusterSnapshot([node(i) for i in range(50)])
    b = ClusterSnapshot([node(i) for i in reversed(range(50))])
    assert [n.info.id for n in a.order] == [n.info.id for n in b.order]
    assert [n.info.id for n in a.order] != [f"n{i}" for i in range(50)]  # shuffled, not sorted


def test_unique_attributes_do_not_split_classes() -> None:
    snap = ClusterSnapshot([node(i, attributes={"unique.hostname": f"h{i}", "os": "linux"})
                            for i in range(10)])
    assert len({n.cls.id for n in snap.order}) == 1
    n3 = snap.node("n3")
    assert n3 is not None
    assert n3.prop("attr.unique.hostname") == "h3"
    assert n3.prop("node.unique.name") == "n3"
    assert n3.prop("attr.os") == "linux"
    assert n3.prop("meta.nothing") is None


def test_conversions_from_the_wire() -> None:
    pb = node_pb2.Node(
        id="n1", name="agent-1", datacenter="dc2", node_class="gpu", attributes={"a": "1"},
        capacity=job_pb2.Resources(cpu_millicores=8000, memory_mb=16384),
        reserved=job_pb2.Resources(cpu_millicores=100), drivers=["docker"],
        status=node_pb2.NODE_STATUS_READY, eligible=True, reserved_ports=[22],
        drain=node_pb2.DrainStrategy(ignore_system_jobs=True))
    info = node_info_from_proto(pb)
    assert (info.datacenter, info.region, info.cpu_millicores, info.status) == (
        "dc2", "global", 8000, "ready")
    assert info.draining
    assert info.drain_ignore_system_jobs
    assert not info.schedulable
    g = group(cpu=250)
    apb = node_pb2.Allocation(
        id="x", job="app", group="web", index=2, node_id="n1", job_version=3,
        desired_status=node_pb2.DESIRED_STATUS_RUN, client_status=node_pb2.CLIENT_STATUS_RUNNING,
        resources=job_pb2.Resources(cpu_millicores=250, memory_mb=256), ports={"http": 20001},
        spec=group_to_proto(g), modify_time_ns=5_000_000_000)
    a = alloc_info_from_proto(apb)
    assert (a.name, a.client, a.desired, a.modify_time, a.ports) == (
        "app.web[2]", "running", "run", 5.0, {"http": 20001})
    assert a.spec == g
