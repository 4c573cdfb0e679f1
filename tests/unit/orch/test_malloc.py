"""Pinning glibc's thresholds: an operator's setting wins, other C libraries are left be."""

from __future__ import annotations

import pytest

from orch import malloc


def test_on_glibc_both_thresholds_are_fixed() -> None:
    assert malloc.is_glibc()  # Debian's
    assert malloc.pin_thresholds({}) == {"MALLOC_MMAP_THRESHOLD_": 1 << 20,
                                         "MALLOC_TRIM_THRESHOLD_": 2 << 20}


def test_an_operator_s_setting_in_the_environment_is_left_as_it_is() -> None:
    assert malloc.pin_thresholds({"MALLOC_MMAP_THRESHOLD_": "65536"}) == {
        "MALLOC_TRIM_THRESHOLD_": 2 << 20}
    assert malloc.pin_thresholds({"MALLOC_MMAP_THRESHOLD_": "65536",
                                  "MALLOC_TRIM_THRESHOLD_": "131072"}) == {}


def test_a_c_library_other_than_glibc_is_left_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(malloc, "is_glibc", lambda: False)
    assert malloc.pin_thresholds({}) == {}
