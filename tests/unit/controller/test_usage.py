"""What an allocation uses, from its agent's reports and every load balancer's: fresh or not,
CPU from two samples, connections added up over the nodes that report them."""

from __future__ import annotations

from controller.usage import UsageTable
from orch.v1 import controller_pb2


def _report(t: float, cpu: float, mem: int, active: int = 0,
            total: int = 0) -> controller_pb2.UsageReport:
    return controller_pb2.UsageReport(
        time_ns=int(t * 1e9),
        allocations=[controller_pb2.AllocUsage(alloc_id="a", cpu_seconds=cpu, memory_bytes=mem)],
        endpoints=[controller_pb2.EndpointLoad(alloc_id="a", active_connections=active,
                                               connections_total=total)])


def test_figures_of_one_allocation() -> None:
    u = UsageTable(stale_after=60.0)
    assert not u.figures("a", now=0.0).reported
    u.report("n1", _report(100.0, 1.0, 10 << 20, active=2, total=100))
    f = u.figures("a", now=100.0)
    assert f.reported
    assert f.cpu_cores is None  # one sample measures no rate yet
    assert f.memory_bytes == 10 << 20
    u.report("n1", _report(110.0, 3.0, 12 << 20, active=3, total=150))
    balancer = _report(110.0, 0.0, 0, active=4, total=10)  # another node's load balancer
    del balancer.allocations[:]
    u.report("n2", balancer)
    f = u.figures("a", now=111.0)
    assert f.cpu_cores == 0.2
    assert f.memory_bytes == 12 << 20
    assert f.active_connections == 7
    assert f.connections_per_second == 5.0
    assert not u.figures("a", now=200.0).reported  # stale
