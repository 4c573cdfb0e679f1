"""The constraint language: operators on node values, versions, targets."""

import pytest

from orch.jobspec.constraints import (
    Version,
    check_target,
    compile_predicate,
    describe,
    is_unique_target,
    target_name,
    version_range,
)


@pytest.mark.parametrize(("op", "rhs", "lhs", "expected"), [
    ("=", "linux", "linux", True), ("=", "linux", "darwin", False), ("=", "linux", None, False),
    ("==", "a", "a", True), ("is", "a", "a", True),
    ("!=", "linux", "darwin", True), ("!=", "linux", None, True), ("not", "a", "a", False),
    ("<", "10", "9", True),            # numbers compare as numbers, not text
    (">", "5.4", "5.15.0", True),      # versions compare as versions
    (">=", "2", "2.0", True), ("<=", "b", "a", True), (">", "b", "a", False),
    ("<", "10", None, False),
    ("version", ">= 1.2, < 2.0", "1.9.9", True), ("version", ">= 1.2, < 2.0", "2.0.0", False),
    ("version", "~> 1.6", "1.9", True), ("version", "~> 1.6", "2.0", False),
    ("version", "~> 1.6.3", "1.6.9", True), ("version", "~> 1.6.3", "1.7.0", False),
    ("semver", ">= 1.0.0", "1.0.0-rc.1", False), ("semver", ">= 1.0.0-rc.1", "1.0.0", True),
    ("version", "= 1.2", "v1.2.0", True), ("version", ">= 1.0", "latest", False),
    ("regexp", "^5\\.1[0-9]", "5.15.0-91-amd64", True), ("regexp", "^4", "5.1", False),
    ("regexp", ".*", None, False),
    ("set_contains", "ssd,nvme", "hdd, ssd, nvme", True), ("set_contains", "ssd,nvme", "ssd",
                                                             False),
    ("set_contains_any", "ssd,nvme", "nvme", True), ("set_contains_any", "ssd", "hdd", False),
    ("is_set", "", "x", True), ("is_set", "", None, False), ("is_not_set", "", None, True),
])
def test_operators(op: str, rhs: str, lhs: str | None, expected: bool) -> None:
    assert compile_predicate(op, rhs)(lhs) is expected


@pytest.mark.parametrize(("op", "rhs", "error"), [
    ("regexp", "(", "not a valid regular expression"), ("version", "new", "not a version range"),
    ("is_set", "x", "takes no value"), ("set_contains", " , ", "comma-separated"),
    ("<", "", "needs a value"), ("distinct_hosts", "maybe", "true or false"),
    ("like", "x", "unknown operator"),
])
def test_bad_operands_are_refused(op: str, rhs: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        compile_predicate(op, rhs)


def test_version_order_puts_prereleases_before_releases() -> None:
    order = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-beta", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.2",
             "1.10"]
    versions = [Version.parse(v) for v in order]
    assert all(v is not None for v in versions)
    assert sorted(versions) == versions  # type: ignore[type-var]
    assert Version.parse("1.2") == Version.parse("1.2.0")
    v120 = Version.parse("1.2.0")
    assert v120 is not None
    assert version_range("!= 1.2")(v120) is False


def test_targets() -> None:
    assert target_name("${attr.kernel.name}") == "attr.kernel.name"
    assert target_name("attr.kernel.name") is None
    assert check_target("${meta.rack}") is None
    assert check_target("${node.unique.name}") is None
    assert "unknown target" in (check_target("${nod.class}") or "")
    assert is_unique_target("node.unique.id")
    assert is_unique_target("attr.unique.hostname")
    assert not is_unique_target("node.class")


def test_describe_reads_like_the_job_file() -> None:
    assert describe("${node.class}", "==", "gpu") == "${node.class} = gpu"
    assert describe("", "distinct_hosts", "true") == "distinct_hosts"
    assert describe("${meta.rack}", "distinct_property", "2") == (
        "distinct_property ${meta.rack} = 2")
