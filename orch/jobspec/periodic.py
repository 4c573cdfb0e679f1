"""Cron schedules of periodic jobs: parsing, the next slot, and which slot is due.

Pure: every function takes the time it reasons about (unix seconds); nothing reads a
clock. Expressions are croniter's (a well-kept parser): 5 fields (minute hour
day-of-month month day-of-week), 6 with a seconds field FIRST (as Nomad's cron), 7 with a
year last, or a macro (``@hourly``, ``@daily``, ``@weekly``, ``@monthly``, ``@yearly``).
Slots are whole seconds, computed in the job's time zone (``zoneinfo``, IANA names):

- when the clock springs forward, a slot inside the skipped hour runs at the first time
  that exists after it (02:30 on the night 02:00 jumps to 03:00 runs at 03:00), once;
- when the clock falls back, a slot whose wall-clock time comes twice runs at its first
  occurrence only, unless the hour field is ``*`` (then every real hour has its slots).

The leader launches the latest slot in ``(last launched, now]`` (:func:`due_slot`): a
slot missed while there was no leader runs once, late; of several missed, only the
latest runs (as Nomad does); a slot at or before the last one recorded never runs again.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter

DEFAULT_TIME_ZONE = "UTC"
MAX_CRON = 256
"""Characters in a cron expression (a real one is a few dozen)."""
MAX_SKIPS = 1000
"""Repeated wall-clock slots (a clock falling back) passed over while looking for the next
one: an hour of a 6-field expression firing every second has 3600, so past this the
search stops at the repeated slot rather than loop."""
_REFERENCE = datetime(2000, 1, 1, tzinfo=UTC)
"""Where validation looks for a first slot (an expression that never fires fails there)."""


def zone(name: str) -> tzinfo:
    """The time zone ``name`` (UTC when empty); ValueError naming it when unknown."""
    if not name:
        return UTC
    if len(name) > 64 or name.startswith(("/", ".")) or ".." in name:
        raise ValueError(f"unknown time zone {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "Europe" is a folder
        raise ValueError(f"unknown time zone {name!r}: use an IANA name such as "
                         "'Europe/Berlin' or 'America/New_York' (or UTC)") from None


def cron_problem(expr: str) -> str:
    """Why ``expr`` is not a cron expression orch runs ("" when it is)."""
    if not expr.strip():
        return "is required: a cron expression such as '0 3 * * *' (03:00 every day)"
    if len(expr) > MAX_CRON:
        return f"must be at most {MAX_CRON} characters, got {len(expr)}"
    if expr.strip().lower() == "@reboot":
        return "@reboot has no time to run at; use a schedule"
    try:
        croniter(expr, _REFERENCE, second_at_beginning=True).get_next(float)
    except CroniterBadDateError:
        return f"{expr!r} never matches a date"
    except (CroniterBadCronError, CroniterError, ValueError, KeyError, IndexError) as e:
        return f"{expr!r} is not a cron expression ({e}); use 5 fields: minute hour " \
               "day-of-month month day-of-week, 6 with seconds first, or a macro (@daily)"
    return ""


class Schedule:
    """One periodic job's slots: a cron expression in a time zone."""

    def __init__(self, cron: str, time_zone: str = "") -> None:
        why = cron_problem(cron)
        if why:
            raise ValueError(why)
        self.cron = cron
        self.tz = zone(time_zone)
        self._hourly = croniter(cron, _REFERENCE, second_at_beginning=True).expanded[1] == ["*"]

    def _iter(self, t: float, *, is_prev: bool = False) -> croniter:
        start = datetime.fromtimestamp(t, UTC).astimezone(self.tz)
        return croniter(self.cron, start, second_at_beginning=True, is_prev=is_prev)

    def _repeat(self, slot: datetime) -> bool:
        """A wall-clock time the clock already showed (it fell back), for a fixed hour."""
        local = datetime.fromtimestamp(slot.timestamp(), self.tz)
        return bool(local.fold) and not self._hourly and \
            local.replace(fold=0).utcoffset() != local.utcoffset()

    def next_after(self, t: float) -> int | None:
        """The first slot strictly after ``t`` (None when there is none)."""
        it = self._iter(int(t))
        for _ in range(MAX_SKIPS):
            try:
                slot = it.get_next(datetime)
            except CroniterError:
                return None
            if not self._repeat(slot):
                return int(slot.timestamp())
        return int(slot.timestamp())

    def latest_at_or_before(self, t: float) -> int | None:
        """The last slot at or before ``t`` (None when there is none)."""
        it = self._iter(int(t) + 1, is_prev=True)
        for _ in range(MAX_SKIPS):
            try:
                slot = it.get_prev(datetime)
            except CroniterError:
                return None
            if not self._repeat(slot):
                return int(slot.timestamp())
        return int(slot.timestamp())


def due_slot(schedule: Schedule, last: float, now: float) -> int | None:
    """The slot to launch at ``now`` when ``last`` is the last slot launched (or decided):
    the latest slot in ``(last, now]``, or None when none is due."""
    slot = schedule.latest_at_or_before(now)
    if slot is None or slot <= last:
        return None
    return slot


def periodic_child(parent: str, slot: int) -> str:
    """A periodic job's child for a slot: ``<parent>/periodic-<unix seconds>``."""
    return f"{parent}/periodic-{slot}"


def child_slot(name: str) -> int | None:
    """The slot a periodic child was launched for (None for any other job)."""
    _, sep, tail = name.rpartition("/periodic-")
    return int(tail) if sep and tail.isdigit() else None
