"""Allocation status from task states (Nomad's rule)."""

from __future__ import annotations

from agent.runtime.state import TaskStatus, client_status


def test_client_status() -> None:
    run, pend = TaskStatus(state="running"), TaskStatus(state="pending")
    done, failed = TaskStatus(state="dead"), TaskStatus(state="dead", failed=True)
    assert client_status([run, failed]) == "failed"
    assert client_status([run, pend]) == "pending"
    assert client_status([run, done]) == "running"
    assert client_status([done, done]) == "complete"
    assert client_status([]) == "pending"
