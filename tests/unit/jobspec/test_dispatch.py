"""Dispatching a parameterized job (orch.jobspec.dispatch): what a dispatch may carry, the
child's name, and the job file's checks of the parameterized block."""

from __future__ import annotations

import random
import re

import pytest

from orch.errors import JobSpecError
from orch.jobspec import parse_job
from orch.jobspec.dispatch import MAX_META_VALUE, MAX_PAYLOAD, dispatch_child, dispatch_problems
from orch.v1 import job_pb2


def params(payload: str = "", required: tuple[str, ...] = ("input",),
           optional: tuple[str, ...] = ("mode",)) -> job_pb2.Parameterized:
    return job_pb2.Parameterized(meta_required=required, meta_optional=optional, payload=payload)


def test_a_dispatch_with_what_the_job_takes_is_fine() -> None:
    assert dispatch_problems("conv", params(), {"input": "a.csv"}, b"") == []
    assert dispatch_problems("conv", params(), {"input": "a.csv", "mode": "fast"}, b"x") == []
    assert dispatch_problems("conv", params(payload="required"), {"input": "a"}, b"x") == []


def test_missing_required_meta() -> None:
    (why,) = dispatch_problems("conv", params(), {"mode": "fast"}, b"")
    assert "missing required meta 'input'" in why
    assert "--meta" in why


def test_meta_neither_required_nor_optional() -> None:
    (why,) = dispatch_problems("conv", params(), {"input": "a", "colour": "red"}, b"")
    assert "'colour' is neither required nor optional" in why
    assert "it takes: input, mode" in why


def test_payload_rules() -> None:
    (why,) = dispatch_problems("conv", params(payload="required"), {"input": "a"}, b"")
    assert "requires a payload" in why
    (why,) = dispatch_problems("conv", params(payload="forbidden"), {"input": "a"}, b"x")
    assert "takes no payload" in why
    (why,) = dispatch_problems("conv", params(), {"input": "a"}, b"x" * (MAX_PAYLOAD + 1))
    assert "at most 16,384" in why


def test_meta_values_are_bounded_and_env_safe() -> None:
    problems = dispatch_problems("conv", params(), {"input": "x" * (MAX_META_VALUE + 1)}, b"")
    assert any("at most 4,096" in p for p in problems)
    assert any("NUL" in p for p in dispatch_problems("conv", params(), {"input": "a\0b"}, b""))


def test_every_problem_is_reported_at_once() -> None:
    problems = dispatch_problems("conv", params(payload="forbidden"), {"colour": "red"}, b"x")
    assert len(problems) == 3


def test_child_names_are_the_parent_the_time_and_8_hex() -> None:
    name = dispatch_child("conv", 1714532400.7, random.Random(1).getrandbits(32))
    assert re.fullmatch(r"conv/dispatch-1714532400-[0-9a-f]{8}", name)
    assert dispatch_child("conv", 1, 0xABC) == "conv/dispatch-1-00000abc"


JOB = """
name: conv
type: batch
parameterized:
{block}
groups:
  - name: g
    tasks: [{{name: t, driver: process, command: /bin/true}}]
"""


def test_a_job_file_with_a_parameterized_block() -> None:
    job = parse_job(JOB.format(block="  meta_required: [input]\n  payload: required"))
    assert list(job.parameterized.meta_required) == ["input"]
    assert job.parameterized.payload == "required"


def test_a_bad_parameterized_block_names_the_field() -> None:
    with pytest.raises(JobSpecError) as e:
        parse_job(JOB.format(block="  meta_required: [input, 'bad key']\n"
                                   "  meta_optional: [input]\n  payload: sometimes"))
    got = {p.path: p.message for p in e.value.problems}
    assert "must be one of optional, required, forbidden" in got["parameterized.payload"]
    assert "must be a meta key" in got["parameterized.meta_required[1]"]
    assert "meta key 'input' is used 2 times" in got["parameterized"]
