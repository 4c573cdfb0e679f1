"""Health-driven restarts (check_restart) on real process tasks: a task whose check keeps
failing is restarted, by its restart policy, with events that say why; a warning is ignored
when asked; a check that passes again in time restarts nothing."""

from __future__ import annotations

import pytest

from agent.runtime.runtime import Runtime
from orch.jobspec.model import Check, CheckRestart, RestartPolicy
from tests.integration.test_runtime_process import alloc, events, rt, running, sh, until

__all__ = ["rt"]
pytestmark = pytest.mark.timeout(60)


def exec_check(script: str, limit: int, *, ignore_warnings: bool = False,
               grace: float = 0.3) -> Check:
    return Check(type="exec", name="probe", command="/bin/sh", args=("-c", script),
                 interval=0.1, timeout=1.0, unhealthy_threshold=1,
                 check_restart=CheckRestart(limit=limit, grace=grace,
                                            ignore_warnings=ignore_warnings))


async def test_a_task_whose_check_keeps_failing_restarts_then_fails(rt: Runtime) -> None:
    task = sh("exec sleep 60", checks=(exec_check("exit 2", limit=3),))
    await rt.apply(1, [alloc("a1", task, restart=RestartPolicy(attempts=2, delay=0.05,
                                                                 interval=60.0, mode="fail"))])
    st = await until(rt, "a1", lambda s: s.client_status == "failed", within=30)
    t = st.tasks["main"]
    assert t.restarts == 2
    said = [(e.type, e.message) for e in t.events]
    signaled = [m for kind, m in said if kind == "Restart Signaled"]
    assert len(signaled) == 3, said
    assert "health check 'probe' failed 3 times in a row" in signaled[0]
    assert "check_restart limit 3" in signaled[0]
    assert any(kind == "Restarting" and "health check 'probe'" in m for kind, m in said)
    assert said[-1][0] == "Not Restarting" or tuple(k for k, _ in said) >= ("Not Restarting", )
    assert "Killed" not in events(st)  # not a stop: a restart for health


async def test_warnings_are_ignored_when_asked(rt: Runtime) -> None:
    warned = sh("exec sleep 60", checks=(exec_check("exit 1", limit=2, ignore_warnings=True),))
    failed = sh("exec sleep 60", name="other",
                checks=(exec_check("exit 1", limit=2, ignore_warnings=False),))
    await rt.apply(1, [alloc("w", warned), alloc("f", failed)])
    await until(rt, "f", lambda s: s.tasks["other"].restarts >= 1, within=20)
    st = await until(rt, "w", running)
    assert st.tasks["main"].restarts == 0
    assert "Restart Signaled" not in events(st)


async def test_a_check_that_recovers_in_time_restarts_nothing(rt: Runtime) -> None:
    # fails twice, then passes, again and again (a count in the task's folder, where exec
    # checks run): never three failures in a row
    script = 'n=$(cat count 2>/dev/null || echo 0); echo $((n+1)) > count; [ $((n % 3)) -eq 2 ]'
    task = sh("exec sleep 60", checks=(exec_check(script, limit=3),))
    await rt.apply(1, [alloc("a1", task)])
    await until(rt, "a1", running)
    await until(rt, "a1", lambda s: sum(e.type == "Health" for e in s.tasks["main"].events) >= 4,
                within=20)
    assert rt.status("a1").tasks["main"].restarts == 0
