"""``orchctl job logs`` without a cluster: lines cut whole and bounded, prefixes aligned, JSON
lines for scripts; and the time marks that let a process task's logs start at a time."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.runtime import logfiles
from orchctl.client import CliError
from orchctl.commands.job import since
from orchctl.joblogs import Lines, Printer, Source


@given(st.lists(st.binary(max_size=40), max_size=30), st.integers(min_value=1, max_value=16))
def test_lines_come_out_whole_in_order_and_bounded(chunks: list[bytes], limit: int) -> None:
    lines = Lines(limit)
    got = [line for c in chunks for line in lines.feed(c)]
    rest = lines.rest()
    assert b"".join(got) + rest == b"".join(chunks)
    for line in got:
        assert len(line) <= limit
        assert line.endswith(b"\n") or len(line) == limit
        assert b"\n" not in line[:-1]
    assert b"\n" not in rest
    assert len(rest) < limit


def test_prefixes_align_and_stderr_goes_to_stderr() -> None:
    out, err = io.BytesIO(), io.BytesIO()
    p = Printer(out=out, err=err)
    web = Source("3f2a1b2c-aaaa", "shop.web[0]", "nginx", False)
    db = Source("9e8d7c6b-bbbb", "shop.database[1]", "postgres", True)
    p.line(web, b"GET /\n")
    p.line(db, b"ready\n")
    p.line(web, b"no newline")
    assert out.getvalue().decode().splitlines() == [
        "shop.web[0] 3f2a1b2c nginx | GET /",
        "shop.web[0] 3f2a1b2c nginx".ljust(len("shop.database[1] 9e8d7c6b postgres"))
        + " | no newline"]
    assert err.getvalue() == b"shop.database[1] 9e8d7c6b postgres | ready\n"
    js = io.BytesIO()
    Printer(json=True, out=js).line(db, b"ready\n")
    assert json.loads(js.getvalue()) == {"alloc_id": "9e8d7c6b-bbbb", "alloc": "shop.database[1]",
                                         "task": "postgres", "stream": "stderr", "line": "ready"}


S = 1_000_000_000


def test_time_marks_turn_a_time_into_an_offset(tmp_path: Path) -> None:
    now = [100 * S]
    w = logfiles.RotatingWriter(tmp_path, "t.stdout", max_bytes=1 << 20, max_files=2,
                                clock=lambda: now[0])
    w.write(b"a1\n")                   # 100 s: marked
    now[0] += S // 2
    w.write(b"a2\n")                   # 100.5 s: within a second of the last mark
    now[0] = 105 * S
    w.write(b"b1\n")                   # 105 s: marked
    now[0] = 107 * S
    w.write(b"c1\n")                   # 107 s: marked
    w.close()
    assert logfiles.read_marks(tmp_path, "t.stdout") == [(100 * S, 0), (105 * S, 6), (107 * S, 9)]

    def at(t: float) -> int:
        return logfiles.offset_at(tmp_path, "t.stdout", int(t * S))
    assert at(99) == 0            # before everything: from the start
    assert at(100.2) == 0         # within the first second: a1 and a2 may be after it
    assert at(103) == 6           # the gap: b1 on
    assert at(105) == 6
    assert at(106.5) == 9
    assert at(107.5) == 9         # c1 was written within the second
    assert at(200) == 12          # nothing since: the end
    assert logfiles.read(tmp_path, "t.stdout", at(103)) == (6, b"b1\nc1\n")


def test_time_marks_stay_bounded_and_follow_rotation(tmp_path: Path) -> None:
    now = [0]
    w = logfiles.RotatingWriter(tmp_path, "t.stdout", max_bytes=100, max_files=2,
                                clock=lambda: now[0])
    for i in range(logfiles.MAX_MARKS + 50):
        now[0] = i * S
        w.write(b"x")                 # one byte a second: one mark each
    marks = logfiles.read_marks(tmp_path, "t.stdout")
    oldest = logfiles.segments(tmp_path, "t.stdout")[0][0]
    assert len(marks) <= logfiles.MAX_MARKS
    assert all(off >= oldest for _, off in marks)   # none for bytes rotated away
    assert marks[-1] == ((logfiles.MAX_MARKS + 49) * S, logfiles.MAX_MARKS + 49)
    w.close()
    w = logfiles.RotatingWriter(tmp_path, "t.stdout", max_bytes=100, max_files=2,
                                clock=lambda: now[0])
    w.write(b"y")                     # the same second as the last mark: no new one
    w.close()
    assert logfiles.read_marks(tmp_path, "t.stdout")[-1] == marks[-1]


def test_since_is_a_duration_back_or_a_time() -> None:
    assert since("90s", now_ns=100 * S) == 10 * S
    assert since("2024-05-01T10:00:00Z") == 1_714_557_600 * S
    assert since("2024-05-01T12:00:00.5+02:00") == 1_714_557_600_500_000_000
    with pytest.raises(CliError, match="or a time such as") as e:
        since("soon")
    assert e.value.code == 2
