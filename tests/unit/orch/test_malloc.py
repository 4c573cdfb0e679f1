"""Pinning glibc's mmap threshold: an operator's setting wins, other C libraries are left be."""

from __future__ import annotations

import pytest

from orch import malloc


def test_an_operator_s_threshold_in_the_environment_is_left_as_it_is() -> None:
    assert malloc.pin_mmap_threshold({malloc.ENV: "65536"}) is None


def test_a_c_library_other_than_glibc_is_left_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(malloc, "is_glibc", lambda: False)
    assert malloc.pin_mmap_threshold({}) is None


def test_on_glibc_the_threshold_is_fixed_at_its_starting_value() -> None:
    assert malloc.is_glibc()  # Debian's
    assert malloc.pin_mmap_threshold({}) == malloc.MMAP_THRESHOLD == 128 * 1024
