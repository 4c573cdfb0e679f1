"""Rotated log files: offsets across rotation, retention, reading from an offset."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.runtime import logfiles


def test_rotates_by_size_and_keeps_count(tmp_path: Path) -> None:
    w = logfiles.RotatingWriter(tmp_path, "web.stdout", max_bytes=10, max_files=3)
    w.write(b"0123456789abcdefghij")  # two full files
    w.write(b"KLMNOPQRSTuvw")          # one more full, one started: the oldest goes
    w.close()
    segs = logfiles.segments(tmp_path, "web.stdout")
    assert [s for s, _ in segs] == [10, 20, 30]
    assert logfiles.stream_end(tmp_path, "web.stdout") == 33
    assert logfiles.read(tmp_path, "web.stdout", 0) == (10, b"abcdefghijKLMNOPQRSTuvw")
    assert logfiles.read(tmp_path, "web.stdout", 25) == (25, b"PQRSTuvw")
    assert logfiles.read(tmp_path, "web.stdout", -3) == (30, b"uvw")
    assert logfiles.read(tmp_path, "web.stdout", 99) == (33, b"")
    assert logfiles.read(tmp_path, "web.stdout", 12, limit=5) == (12, b"cdefg")


def test_reopening_continues_the_stream(tmp_path: Path) -> None:
    w = logfiles.RotatingWriter(tmp_path, "t.stderr", max_bytes=4, max_files=10)
    w.write(b"abcdef")
    w.close()
    w = logfiles.RotatingWriter(tmp_path, "t.stderr", max_bytes=4, max_files=10)
    assert w.offset == 6
    w.write(b"gh")
    w.close()
    assert logfiles.read(tmp_path, "t.stderr", 0) == (0, b"abcdefgh")


def test_missing_stream_reads_empty(tmp_path: Path) -> None:
    assert logfiles.read(tmp_path / "nope", "x.stdout", 0) == (0, b"")


@settings(max_examples=60, deadline=None)
@given(chunks=st.lists(st.binary(max_size=40), max_size=20),
       max_bytes=st.integers(1, 16), max_files=st.integers(1, 5), offset=st.integers(-100, 400))
def test_reads_match_the_retained_suffix(chunks: list[bytes], max_bytes: int, max_files: int,
                                         offset: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        w = logfiles.RotatingWriter(folder, "s", max_bytes=max_bytes, max_files=max_files)
        for c in chunks:
            w.write(c)
        w.close()
        everything = b"".join(chunks)
        first = logfiles.segments(folder, "s")[0][0]
        assert len(logfiles.segments(folder, "s")) <= max_files
        start, data = logfiles.read(folder, "s", offset, limit=1 << 20)
        want_start = len(everything) + offset if offset < 0 else offset
        want_start = min(max(want_start, first, 0), len(everything))
        assert start == want_start
        assert data == everything[want_start:]
