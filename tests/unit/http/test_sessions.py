"""The web UI's sessions: opaque ids, expiry, a bounded table, CSRF tokens; the vendored
front-end files are the pinned ones; the overview's round-trip map."""

from __future__ import annotations

import random

from controller.http import vendor
from controller.http.sessions import Sessions, csrf_ok
from controller.http.ui import log_lines, rtt_map
from orch.v1 import controller_pb2


def _sessions(**kw: float) -> Sessions:
    rng = random.Random(7)
    return Sessions(rng.randbytes, **kw)  # type: ignore[arg-type]


def test_a_session_holds_the_token_and_the_browser_only_an_id() -> None:
    s = _sessions()
    a = s.create("secret-1", "ops", now=0.0)
    assert "secret" not in a.id
    assert len(a.id) >= 40
    assert a.csrf != a.id
    assert s.get(a.id, now=1.0) is a
    assert s.get("guess", now=1.0) is None
    assert csrf_ok(a, a.csrf)
    assert not csrf_ok(a, "")
    assert not csrf_ok(a, a.id)


def test_sessions_end_when_idle_old_or_logged_out_and_stay_bounded() -> None:
    s = _sessions(idle=10.0, lifetime=100.0, max_sessions=3)
    a = s.create("t", "a", now=0.0)
    assert s.get(a.id, now=9.0) is a
    assert s.get(a.id, now=20.0) is None  # idle
    b = s.create("t", "b", now=0.0)
    for now in range(5, 100, 5):
        assert s.get(b.id, now=float(now)) is b
    assert s.get(b.id, now=101.0) is None  # too old, used or not
    ids = [s.create("t", str(i), now=0.0).id for i in range(5)]
    assert len(s) == 3
    assert s.get(ids[0], now=0.0) is None
    assert s.get(ids[-1], now=0.0)
    s.drop_secret("t")
    assert len(s) == 0


def test_flash_messages_are_bounded() -> None:
    a = _sessions().create("t", "a", now=0.0)
    for i in range(20):
        a.say("ok", str(i))
    assert [m for _, m in a.take_flash()] == ["15", "16", "17", "18", "19"]
    assert a.take_flash() == []


def test_the_vendored_files_are_the_pinned_ones() -> None:
    assert vendor.check() == []


def test_log_lines_are_escaped_event_data() -> None:
    assert log_lines(b"<b>hi</b>\nsecond") == b"data: &lt;b&gt;hi&lt;/b&gt;\ndata: second\n"
    # a carriage return cannot smuggle a field (id:, event:) into the stream
    assert log_lines(b"50%\revent: x\r\nid: 9") == \
        b"data: 50%\ndata: event: x\ndata: id: 9\n"


def test_round_trip_map_from_coordinates() -> None:
    def member(name: str, x: float) -> controller_pb2.Member:
        return controller_pb2.Member(name=name, coordinate=controller_pb2.Coordinate(
            vec=[x, 0.0], height=0.0))
    names, grid = rtt_map([member("a", 0.0), member("b", 0.002), controller_pb2.Member(name="c")])
    assert names == ["a", "b"]
    assert grid[0][0] is None
    assert grid[0][1] is not None
    assert abs(grid[0][1] - 2.0) < 1e-9
