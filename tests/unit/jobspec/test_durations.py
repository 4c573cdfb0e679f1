import pytest
from hypothesis import given
from hypothesis import strategies as st

from orch.jobspec.durations import format_duration, parse_duration

S = 1_000_000_000


@pytest.mark.parametrize(("text", "ns"), [
    ("30s", 30 * S), ("1m30s", 90 * S), ("2h45m", (2 * 3600 + 45 * 60) * S),
    ("250ms", 250_000_000), ("1.5s", 1_500_000_000), ("0", 0), ("0s", 0), ("1d", 86_400 * S),
    ("10us", 10_000), ("7ns", 7), ("-5s", -5 * S), (" 3m ", 180 * S),
])
def test_parses_go_style_durations(text: str, ns: int) -> None:
    assert parse_duration(text) == ns


@pytest.mark.parametrize(("text", "hint"), [
    ("30", "needs a unit"), ("1.5", "needs a unit"), ("", "not a duration"),
    ("thirty seconds", "not a duration"), ("5 s", "not a duration"), ("1x", "not a duration"),
])
def test_rejects_what_is_not_a_duration(text: str, hint: str) -> None:
    with pytest.raises(ValueError, match=hint):
        parse_duration(text)


@pytest.mark.parametrize(("ns", "text"), [
    (0, "0s"), (90 * S, "1m30s"), (3600 * S, "1h"), (250_000_000, "250ms"),
    (1_500_000_000, "1.5s"), (-5 * S, "-5s"),
])
def test_formats_the_shortest_form(ns: int, text: str) -> None:
    assert format_duration(ns) == text


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_format_then_parse_is_the_identity(ns: int) -> None:
    assert parse_duration(format_duration(ns)) == ns


def test_a_duration_past_what_the_wire_holds_is_refused_with_the_limit() -> None:
    with pytest.raises(ValueError, match="at most 10,000 years"):
        parse_duration("1" + "0" * 20 + "s")
    assert parse_duration("87600000h") == 87_600_000 * 3600 * S  # 10,000 years fits


def test_a_job_file_with_a_huge_duration_is_a_job_file_error() -> None:
    from orch.jobspec import JobSpecError, parse_job

    text = ("name: j\ngroups:\n  - name: g\n    restart: {delay: 10999999999999999999999s}\n"
            "    tasks:\n      - {name: t, driver: process, command: /bin/true}\n")
    with pytest.raises(JobSpecError, match=r"groups\[0\]\.restart\.delay: .*at most 10,000 years"):
        parse_job(text, "j.yaml")
