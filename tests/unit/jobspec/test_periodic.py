"""Cron slots of periodic jobs (orch.jobspec.periodic): next slots in time zones across DST,
the missed-slot rule, child names; and the job file's checks of the periodic block."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orch.errors import JobSpecError
from orch.jobspec import parse_job
from orch.jobspec.periodic import (
    Schedule,
    child_slot,
    cron_problem,
    due_slot,
    periodic_child,
    zone,
)

BERLIN = ZoneInfo("Europe/Berlin")


def ts(*args: int, tz: ZoneInfo | None = None) -> int:
    return int(datetime(*args, tzinfo=tz or UTC).timestamp())  # type: ignore[misc, arg-type]


def test_next_slot_of_a_five_field_expression_in_utc() -> None:
    s = Schedule("0 3 * * *")
    assert s.next_after(ts(2024, 5, 1, 2, 59, 59)) == ts(2024, 5, 1, 3, 0)
    assert s.next_after(ts(2024, 5, 1, 3, 0)) == ts(2024, 5, 2, 3, 0)  # strictly after
    assert s.latest_at_or_before(ts(2024, 5, 1, 3, 0)) == ts(2024, 5, 1, 3, 0)  # inclusive
    assert s.latest_at_or_before(ts(2024, 5, 1, 2, 59)) == ts(2024, 4, 30, 3, 0)


def test_six_fields_put_seconds_first_as_nomad_does() -> None:
    s = Schedule("*/5 * * * * *")
    assert s.next_after(ts(2024, 5, 1, 0, 0, 1)) == ts(2024, 5, 1, 0, 0, 5)
    assert s.next_after(ts(2024, 5, 1, 0, 0, 5)) == ts(2024, 5, 1, 0, 0, 10)
    assert Schedule("30 0 12 * * *").next_after(ts(2024, 5, 1)) == ts(2024, 5, 1, 12, 0, 30)


def test_macros() -> None:
    assert Schedule("@hourly").next_after(ts(2024, 5, 1, 10, 1)) == ts(2024, 5, 1, 11, 0)
    assert Schedule("@daily").next_after(ts(2024, 5, 1, 10, 1)) == ts(2024, 5, 2)


def test_a_slot_is_read_in_its_time_zone_summer_and_winter() -> None:
    s = Schedule("0 9 * * *", "Europe/Berlin")
    # 09:00 in Berlin is 08:00 UTC in winter (CET) and 07:00 UTC in summer (CEST)
    assert s.next_after(ts(2024, 1, 15)) == ts(2024, 1, 15, 8, 0)
    assert s.next_after(ts(2024, 7, 15)) == ts(2024, 7, 15, 7, 0)
    ny = Schedule("0 9 * * *", "America/New_York")
    assert ny.next_after(ts(2024, 1, 15)) == ts(2024, 1, 15, 14, 0)


def test_spring_forward_runs_a_skipped_slot_once_at_the_first_time_that_exists() -> None:
    s = Schedule("30 2 * * *", "Europe/Berlin")  # 2024-03-31 02:00 CET jumps to 03:00 CEST
    first = s.next_after(ts(2024, 3, 30, 12, tz=BERLIN))
    assert first == ts(2024, 3, 31, 3, 0, tz=BERLIN)
    assert s.next_after(first) == ts(2024, 4, 1, 2, 30, tz=BERLIN)


def test_fall_back_runs_a_fixed_time_once_and_an_hourly_one_every_real_hour() -> None:
    # 2024-10-27 03:00 CEST falls back to 02:00 CET: 02:30 comes twice
    daily = Schedule("30 2 * * *", "Europe/Berlin")
    first = daily.next_after(ts(2024, 10, 26, 12, tz=BERLIN))
    assert first == ts(2024, 10, 27, 0, 30)  # 02:30 CEST
    assert daily.next_after(first) == ts(2024, 10, 28, 1, 30)  # not 02:30 CET on the 27th
    assert daily.latest_at_or_before(ts(2024, 10, 27, 2, 0)) == first
    hourly = Schedule("30 * * * *", "Europe/Berlin")
    slot = hourly.next_after(ts(2024, 10, 27, 0, 0))
    assert slot == ts(2024, 10, 27, 0, 30)
    assert hourly.next_after(slot) == ts(2024, 10, 27, 1, 30)  # the repeated hour: its own slot


def test_the_missed_slot_rule() -> None:
    s = Schedule("0 * * * *")  # hourly
    last = ts(2024, 5, 1, 10, 0)
    assert due_slot(s, last, ts(2024, 5, 1, 10, 59, 59)) is None  # nothing since
    assert due_slot(s, last, ts(2024, 5, 1, 11, 0)) == ts(2024, 5, 1, 11, 0)  # on time
    assert due_slot(s, last, ts(2024, 5, 1, 11, 20)) == ts(2024, 5, 1, 11, 0)  # late, once
    # several missed while there was no leader: only the latest runs
    assert due_slot(s, last, ts(2024, 5, 1, 14, 5)) == ts(2024, 5, 1, 14, 0)
    # a slot recorded is never due again
    assert due_slot(s, ts(2024, 5, 1, 14, 0), ts(2024, 5, 1, 14, 5)) is None
    # a registration between slots (a fractional record) launches the next one only
    assert due_slot(s, ts(2024, 5, 1, 10, 30) + 0.5, ts(2024, 5, 1, 10, 45)) is None


@given(last=st.integers(0, 2**31), gap=st.integers(0, 10 * 86400),
       cron=st.sampled_from(["*/7 * * * * *", "0 * * * *", "15 4 * * 1-5", "@daily"]))
def test_a_due_slot_is_after_the_record_at_or_before_now_and_the_latest(last: int, gap: int,
                                                                       cron: str) -> None:
    s = Schedule(cron, "Europe/Berlin")
    now = last + gap
    slot = due_slot(s, last, now)
    if slot is None:
        nxt = s.next_after(last)
        assert nxt is None or nxt > now
        return
    assert last < slot <= now
    after = s.next_after(slot)
    assert after is None or after > now
    assert due_slot(s, slot, now) is None  # launching it leaves nothing due: never twice


def test_child_names() -> None:
    assert periodic_child("report", 1714532400) == "report/periodic-1714532400"
    assert child_slot("report/periodic-1714532400") == 1714532400
    assert child_slot("report/dispatch-1714532400-0a1b2c3d") is None
    assert child_slot("report") is None


def test_bad_expressions_and_zones_say_what_is_wrong() -> None:
    assert cron_problem("*/5 * * * *") == ""
    assert "is required" in cron_problem("")
    assert "not a cron expression" in cron_problem("61 * * * *")
    assert "not a cron expression" in cron_problem("every day")
    assert "never matches" in cron_problem("0 0 30 2 *")
    assert "@reboot" in cron_problem("@reboot")
    assert "at most" in cron_problem("*" * 300)
    assert zone("") is UTC
    for bad in ("Mars/Olympus", "../etc/passwd", "/etc/localtime", "Europe"):
        with pytest.raises(ValueError, match="unknown time zone"):
            zone(bad)
    with pytest.raises(ValueError, match="not a cron"):
        Schedule("nope")


JOB = """
name: report
type: {type}
periodic:
  cron: "{cron}"
  time_zone: {zone}
groups:
  - name: g
    tasks: [{{name: t, driver: process, command: /bin/true}}]
"""


def _problems(text: str) -> dict[str, str]:
    with pytest.raises(JobSpecError) as e:
        parse_job(text, "report.yaml")
    return {p.path: p.message for p in e.value.problems}


def test_a_job_file_with_a_valid_periodic_block() -> None:
    job = parse_job(JOB.format(type="batch", cron="*/5 * * * * *", zone="Europe/Berlin"))
    assert job.periodic.cron == "*/5 * * * * *"
    assert job.periodic.time_zone == "Europe/Berlin"


def test_a_job_file_with_a_bad_cron_or_zone_names_the_field() -> None:
    got = _problems(JOB.format(type="batch", cron="61 * * * *", zone="Mars/Olympus"))
    assert "not a cron expression" in got["periodic.cron"]
    assert "unknown time zone 'Mars/Olympus'" in got["periodic.time_zone"]


def test_only_batch_jobs_are_periodic_and_not_parameterized_too() -> None:
    got = _problems(JOB.format(type="service", cron="@daily", zone="UTC"))
    assert "only batch jobs" in got["periodic"]
    both = JOB.format(type="batch", cron="@daily", zone="UTC") + "parameterized: {}\n"
    assert "not both" in _problems(both)["parameterized"]


def test_parent_and_payload_are_the_controllers() -> None:
    text = JOB.format(type="batch", cron="@daily", zone="UTC") + "parent: other\n"
    assert "set by the controller" in _problems(text)["parent"]
