"""tests/components.py: a missing component skips a test here and fails it under CI=true."""

from __future__ import annotations

import pytest

from tests.components import optional, require, under_ci


@pytest.mark.parametrize(("value", "ci"), [("true", True), ("1", False), ("false", False),
                                           ("", False), (None, False)])
def test_ci_is_recognised_by_ci_true_only(monkeypatch: pytest.MonkeyPatch, value: str | None,
                                          ci: bool) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert under_ci() is ci


def test_a_component_that_is_here_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    for ci in ("true", "false"):
        monkeypatch.setenv("CI", ci)
        require("the etcd binary", True, "apt-get install etcd-server")
        assert optional("the etcd binary", True, "apt-get install etcd-server") is True


def test_a_missing_component_skips_here_saying_how_to_get_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception,
                       match=r"^promtool is missing: apt-get install prometheus$"):
        require("promtool", False, "apt-get install prometheus")
    assert optional("promtool", False, "apt-get install prometheus") is False


def test_a_missing_component_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    for check in (require, optional):
        with pytest.raises(pytest.fail.Exception,
                           match=r"^CI=true and promtool is missing: apt-get install prometheus$"):
            check("promtool", False, "apt-get install prometheus")
