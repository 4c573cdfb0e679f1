"""Job files and jobs past the limits are refused with clear errors, quickly."""

from __future__ import annotations

import time

from orch.jobspec import load_job_file
from orch.jobspec.document import MAX_BYTES, load_document
from orch.jobspec.validate import validate_job

BASE = "deploy/examples/web.yaml"


def _billion_laughs(levels: int = 9) -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        prev, cur = chr(96 + i), chr(97 + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_alias_bombs_are_refused_fast() -> None:
    t0 = time.perf_counter()
    doc, problems = load_document(_billion_laughs(), "yaml")
    assert doc is None
    assert "more than 100,000 values" in problems[0].message
    assert time.perf_counter() - t0 < 5.0  # ~0.3 s idle; a bomb left to expand takes minutes


def test_deep_nesting_and_huge_files() -> None:
    for fmt in ("yaml", "json"):
        _, problems = load_document("[" * 10_000 + "]" * 10_000, fmt)
        assert "nests deeper than" in problems[0].message
    _, problems = load_document("a: 1\n" + "#" * MAX_BYTES, "yaml")
    assert "at most 1,048,576" in problems[0].message


def test_huge_counts_and_lists() -> None:
    job = load_job_file(BASE)
    job.groups[0].count = 1_000_000
    assert [p.path for p in validate_job(job)] == ["groups[0].count"]
    job = load_job_file(BASE)
    job.groups[0].tasks[0].env.update({f"K{i}": "v" for i in range(2000)})
    job.groups[0].tasks[0].args.append("x" * 100_000)
    problems = {p.path: p.message for p in validate_job(job)}
    assert problems["groups[0].tasks[0].env"].startswith("at most 1,000 entries, got 2,")
    assert "at most 65,536 characters" in problems["groups[0].tasks[0].args[0]"]
    job = load_job_file(BASE)
    del job.groups[0].network.ports[:]
    job.groups[0].network.ports.add(label="x", static=70000)
    assert any("1..65535" in p.message for p in validate_job(job))
