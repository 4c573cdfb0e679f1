"""The placer's bookkeeping: dropping rejected nodes and bounded sampling."""

from hypothesis import given
from hypothesis import strategies as st

from controller.scheduler import ClusterSnapshot, SchedulerConfig
from controller.scheduler.placer import _drop
from tests.unit.scheduler.factories import group, job, node, run


@given(st.integers(1, 200), st.data())
def test_drop_removes_exactly_the_scanned_positions(n: int, data: st.DataObject) -> None:
    start = data.draw(st.integers(0, n - 1))
    length = data.draw(st.integers(1, n))
    scanned = [(start + k) % n for k in range(length)]  # a scan that may wrap around
    dead = [i for i in scanned if data.draw(st.booleans())]
    before = (start + length) % n
    items = list(range(n))
    below = _drop(items, dead, before)  # type: ignore[arg-type]
    assert items == [i for i in range(n) if i not in set(dead)]
    assert below == sum(1 for i in dead if i < before)


def test_limit_follows_nomad_and_exact_mode_scores_everything() -> None:
    cfg = SchedulerConfig()
    assert cfg.limit(5000, batch=False) == 13
    assert cfg.limit(5000, batch=True) == 2
    assert cfg.limit(50, batch=False) == 50
    assert SchedulerConfig(exact=True).limit(5000, batch=True) == 5000
    assert SchedulerConfig(sample_limit=5).limit(5000, batch=False) == 5


def test_bounded_sampling_still_packs_onto_already_used_nodes() -> None:
    snap = ClusterSnapshot([node(i, cpu_millicores=1000, memory_mb=1000) for i in range(200)])
    for k in range(20):
        run(job(group(count=5, cpu=100, mem=100), name=f"j{k}"), snap, apply=True, seed=k)
    used = [n for n in snap.order if n.allocs]
    assert len(used) == 10  # 100 allocations of a tenth of a node: ten full nodes
    assert all(n.cpu_used == 1000 for n in used)
