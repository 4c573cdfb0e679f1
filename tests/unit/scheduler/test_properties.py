"""Properties that must hold for any cluster and any job (hypothesis)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.scheduler_rounds import apply_plan
from controller.scheduler import (
    AllocInfo,
    ClusterSnapshot,
    NodeInfo,
    Plan,
    SchedulerConfig,
    schedule,
)
from controller.scheduler.snapshot import NodeState
from orch.jobspec.model import Constraint, Group, Job, Network, Port, Resources, Task

CONFIG = SchedulerConfig(dynamic_port_min=20000, dynamic_port_max=20007, exact_below=4)
"""A tiny dynamic port range (so it runs out) and sampling on all but the smallest clusters."""
SPREAD = SchedulerConfig(dynamic_port_min=20000, dynamic_port_max=20007, exact_below=2,
                         sample_limit=2, algorithm="spread")
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class Case:
    nodes: list[NodeInfo]
    background: list[AllocInfo]
    job: Job
    seed: int
    config: SchedulerConfig

    def snapshot(self, reverse: bool = False) -> ClusterSnapshot:
        nodes = list(reversed(self.nodes)) if reverse else self.nodes
        allocs = list(reversed(self.background)) if reverse else self.background
        return ClusterSnapshot(nodes, allocs)


@st.composite
def nodes(draw: st.DrawFn) -> list[NodeInfo]:
    out = []
    for i in range(draw(st.integers(1, 10))):
        out.append(NodeInfo(
            id=f"n{i}", name=f"n{i}",
            datacenter=draw(st.sampled_from(["dc1", "dc2"])),
            node_class=draw(st.sampled_from(["", "gpu"])),
            cpu_millicores=draw(st.integers(5, 40)) * 100,
            memory_mb=draw(st.integers(4, 40)) * 128,
            reserved_cpu_millicores=draw(st.sampled_from([0, 100])),
            reserved_ports=frozenset(draw(st.sets(st.sampled_from([8000, 8001, 20000, 20001]),
                                                  max_size=2))),
            drivers=frozenset(draw(st.sampled_from([["docker", "process"], ["docker"],
                                                    ["process"]]))),
            status=draw(st.sampled_from(["ready", "ready", "ready", "down", "init"])),
            eligible=draw(st.booleans() | st.just(True)),
            draining=draw(st.sampled_from([False, False, False, True]))))
    return out


def background(draw: st.DrawFn, infos: list[NodeInfo]) -> list[AllocInfo]:
    """Load from another job, within each node's capacity."""
    out = []
    for n in infos:
        cpu = n.cpu_millicores - n.reserved_cpu_millicores
        mem = n.memory_mb
        for j in range(draw(st.integers(0, 2))):
            c = draw(st.integers(0, cpu // 100)) * 100
            m = draw(st.integers(0, mem // 64)) * 64
            cpu -= c
            mem -= m
            out.append(AllocInfo(id=f"bg-{n.id}-{j}", job="other", group="g", index=j,
                                 node_id=n.id, cpu_millicores=c, memory_mb=m, client="running"))
    return out


@st.composite
def groups(draw: st.DrawFn, name: str) -> Group:
    ports = []
    for k in range(draw(st.integers(0, 2))):
        static = draw(st.sampled_from([0, 0, 8000, 8001]))
        ports.append(Port(label=f"p{k}", static=static))
    if len({p.static for p in ports if p.static}) < len([p for p in ports if p.static]):
        ports = ports[:1]
    cons = draw(st.lists(st.sampled_from([
        Constraint(attribute="${node.class}", value="gpu"),
        Constraint(attribute="${node.class}", operator="!=", value="gpu"),
        Constraint(attribute="${node.datacenter}", value="dc2"),
        Constraint(operator="distinct_hosts"),
    ]), max_size=2, unique=True))
    return Group(
        name=name, count=draw(st.integers(0, 8)), constraints=tuple(cons),
        network=Network(ports=tuple(ports)),
        tasks=(Task(name="t", driver=draw(st.sampled_from(["docker", "process"])),
                    resources=Resources(cpu_millicores=draw(st.integers(1, 15)) * 100,
                                        memory_mb=draw(st.integers(1, 16)) * 64)),))


@st.composite
def cases(draw: st.DrawFn, kind: str | None = None) -> Case:
    infos = draw(nodes())
    job_type = kind or draw(st.sampled_from(["service", "batch", "system"]))
    names = draw(st.lists(st.sampled_from(["a", "b"]), min_size=1, max_size=2, unique=True))
    job = Job(name="job", type=job_type, version=1,
              groups=tuple(draw(groups(n)) for n in names))
    return Case(infos, background(draw, infos), job, draw(st.integers(0, 2**32)),
                draw(st.sampled_from([CONFIG, SPREAD])))


def check_capacity(snap: ClusterSnapshot) -> None:
    for n in snap.order:
        assert n.cpu_used <= n.cpu_total, (n.info.id, "cpu", n.cpu_used, n.cpu_total)
        assert n.mem_used <= n.mem_total, (n.info.id, "memory", n.mem_used, n.mem_total)
        held = Counter(n.info.reserved_ports)
        for a in n.allocs.values():
            held.update(a.ports.values())
        assert all(v == 1 for v in held.values()), (n.info.id, held)


def may_run(n: NodeState, g: Group) -> bool:
    info = n.info
    if not (info.status == "ready" and info.eligible and not info.draining):
        return False
    if any(t.driver not in info.drivers for t in g.tasks):
        return False
    for c in g.constraints:
        if c.operator == "distinct_hosts":
            continue
        value = n.prop(c.attribute[2:-1])
        if (c.operator == "=") != (value == c.value):
            return False
    return True


@SETTINGS
@given(cases())
def test_never_overcommits_a_node(case: Case) -> None:
    snap = case.snapshot()
    check_capacity(snap)  # the generated load fits
    for round_ in range(2):  # a second round sees the first one's allocations
        plan = schedule(case.job, snap, now=100.0 + round_, seed=case.seed, config=case.config)
        apply_plan(snap, plan, case.job, now=100.0 + round_)
        check_capacity(snap)
        for p in plan.placements:
            g = next(g for g in case.job.groups if g.name == p.group)
            for port in g.network.ports:
                got = p.ports[port.label]
                if port.static:
                    assert got == port.static
                else:
                    assert CONFIG.dynamic_port_min <= got <= CONFIG.dynamic_port_max


@SETTINGS
@given(cases())
def test_places_only_where_the_group_may_run(case: Case) -> None:
    snap = case.snapshot()
    plan = schedule(case.job, snap, now=100.0, seed=case.seed, config=case.config)
    groups_ = {g.name: g for g in case.job.groups}
    for p in plan.placements:
        n = snap.node(p.node_id)
        assert n is not None
        assert may_run(n, groups_[p.group]), (p, n.info)


@SETTINGS
@given(cases())
def test_deterministic_for_a_seed(case: Case) -> None:
    a = schedule(case.job, case.snapshot(), now=100.0, seed=case.seed, config=case.config)
    b = schedule(case.job, case.snapshot(reverse=True), now=100.0, seed=case.seed,
                 config=case.config)
    assert a.to_dict() == b.to_dict()


@SETTINGS
@given(cases(kind="service"))
def test_every_wanted_allocation_is_placed_or_explained(case: Case) -> None:
    plan: Plan = schedule(case.job, case.snapshot(), now=100.0, seed=case.seed, config=case.config)
    for g in case.job.groups:
        placed = [p for p in plan.placements if p.group == g.name]
        gp = plan.groups[g.name]
        assert len(placed) + gp.unplaced == g.count
        assert sorted(p.index for p in placed) == sorted(set(p.index for p in placed))
        if gp.unplaced:
            assert gp.failure is not None
            assert gp.explain().startswith(f'group "{g.name}": {len(placed)} of {g.count} ')


@SETTINGS
@given(nodes(), st.integers(0, 2**32))
def test_a_system_job_lands_exactly_once_per_eligible_node(infos: list[NodeInfo],
                                                           seed: int) -> None:
    job = Job(name="agent", type="system", version=1, groups=(Group(
        name="agent", tasks=(Task(name="t", resources=Resources(cpu_millicores=100,
                                                                memory_mb=64)),)),))
    snap = ClusterSnapshot(infos)
    plan = schedule(job, snap, now=1.0, seed=seed, config=CONFIG)
    apply_plan(snap, plan, job, now=1.0)
    g = job.groups[0]
    for n in snap.order:
        mine = [a for a in n.allocs.values() if a.job == "agent"]
        assert len(mine) == (1 if may_run(n, g) else 0), n.info
    assert schedule(job, snap, now=2.0, seed=seed + 1, config=CONFIG).is_noop


@SETTINGS
@given(cases(kind="service"))
def test_a_settled_plan_is_not_redone(case: Case) -> None:
    snap = case.snapshot()
    plan = schedule(case.job, snap, now=1.0, seed=case.seed, config=case.config)
    apply_plan(snap, plan, case.job, now=1.0)
    again = schedule(case.job, snap, now=2.0, seed=case.seed + 1, config=case.config)
    assert not again.stops
    assert not again.updates
    # Only what found no node the first time may be tried again.
    assert len(again.placements) <= plan.unplaced
