"""The one rule for tests that need a real component (etcd, a Docker engine, promtool,
docker-compose, systemd's tools...): when it is missing, the test is skipped here, saying how
to get it, but fails under CI, which must run every test. ``./run test`` installs them all.

CI is recognised one way only: the environment variable ``CI`` set to ``true`` (as GitHub
Actions, GitLab CI and most others set it).
"""

from __future__ import annotations

import os

import pytest


def under_ci() -> bool:
    """Whether these tests run under CI (``CI=true``)."""
    return os.environ.get("CI") == "true"


def optional(component: str, available: bool, how: str) -> bool:
    """For a test with a part that needs ``component``: whether that part runs. It runs when
    the component is ``available``; when not, the part is left out, except under CI, where
    the test fails saying what is missing and ``how`` to get it."""
    if available:
        return True
    if under_ci():
        pytest.fail(f"CI=true and {component} is missing: {how}", pytrace=False)
    return False


def require(component: str, available: bool, how: str) -> None:
    """The test needs ``component``: when it is not ``available`` the test is skipped, saying
    ``how`` to get it, except under CI, where it fails."""
    if not optional(component, available, how):
        pytest.skip(f"{component} is missing: {how}")
