"""The agent's verdict on an allocation for deployments (``agent.runtime.alloc_health``)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.runtime.alloc_health import HealthWatch

MHT, DEADLINE = 10.0, 60.0


def verdict(w: HealthWatch, now: float) -> tuple[str, float | None]:
    return w.verdict(now, min_healthy_time=MHT, healthy_deadline=DEADLINE)


def see(w: HealthWatch, now: float, *, ok: bool, running: bool = True) -> None:
    w.observe(running=running, ok=ok, now=now, min_healthy_time=MHT)


def test_healthy_once_it_has_run_for_min_healthy_time() -> None:
    w = HealthWatch(received_at=0.0)
    assert verdict(w, 0.0) == ("pending", DEADLINE)
    see(w, 2.0, ok=True)
    assert verdict(w, 2.0) == ("pending", 12.0)  # comes back when min_healthy_time is over
    assert verdict(w, 11.9)[0] == "pending"
    assert verdict(w, 12.0) == ("healthy", None)


def test_a_break_starts_the_time_again_and_ends_a_healthy_verdict_at_once() -> None:
    w = HealthWatch(received_at=0.0)
    see(w, 0.0, ok=True)
    see(w, 5.0, ok=False)  # a check failed, or the task restarted
    see(w, 6.0, ok=True)
    assert verdict(w, 12.0)[0] == "pending"
    assert verdict(w, 16.0)[0] == "healthy"
    see(w, 20.0, ok=False)
    assert verdict(w, 20.0) == ("pending", DEADLINE)


def test_unhealthy_past_the_deadline_counted_from_its_arrival() -> None:
    w = HealthWatch(received_at=100.0)
    assert verdict(w, 159.9)[0] == "pending"
    assert verdict(w, 160.0) == ("unhealthy", None)
    see(w, 170.0, ok=True)  # late, but it may still turn healthy (the deployment failed)
    assert verdict(w, 170.0) == ("unhealthy", 180.0)
    assert verdict(w, 180.0)[0] == "healthy"


def test_adopted_tasks_the_controller_held_healthy_stay_healthy() -> None:
    """An agent restart does not make a healthy allocation wait min_healthy_time again."""
    w = HealthWatch(received_at=0.0, trusted=True)
    see(w, 0.0, ok=False)  # its checks have not run yet since the restart
    see(w, 3.0, ok=True)
    assert verdict(w, 3.0) == ("healthy", None)


def test_trust_ends_once_a_task_stopped() -> None:
    w = HealthWatch(received_at=0.0, trusted=True)
    see(w, 1.0, ok=False, running=False)
    see(w, 2.0, ok=True)
    assert verdict(w, 2.0)[0] == "pending"
    assert verdict(w, 12.0)[0] == "healthy"


@given(st.lists(st.tuples(st.floats(0.0, 30.0), st.booleans()), max_size=20),
       st.floats(0.0, 30.0))
def test_healthy_exactly_when_ok_without_a_break_for_min_healthy_time(
        steps: list[tuple[float, bool]], later: float) -> None:
    w = HealthWatch(received_at=0.0)
    now, since = 0.0, None
    for dt, ok in steps:
        now += dt
        see(w, now, ok=ok)
        since = (since if since is not None else now) if ok else None
    at = now + later
    state, next_at = verdict(w, at)
    assert (state == "healthy") == (since is not None and at - since >= MHT)
    if state != "healthy" and at < DEADLINE:
        assert state == "pending"
        assert next_at is not None
        assert next_at > at
