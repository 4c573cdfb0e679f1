"""Shared test settings and fixture plugins."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

from tests.components import under_ci

# CI runs the same examples every time; locally hypothesis explores.
settings.register_profile("ci", derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if under_ci() else "dev")

pytest_plugins = ("tests.docker_engine", "tests.etcd_server", "pytester")


def pytest_sessionfinish() -> None:
    """Remove the empty cgroups of the process tasks the tests ran: tests kill supervisors
    with SIGKILL and throw their agents' data dirs away, so no agent comes back to sweep
    its node's scope. Anything still running keeps its cgroup."""
    from agent.runtime.cgroups import sweep_scopes

    sweep_scopes()
