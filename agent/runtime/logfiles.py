"""Task logs as files, rotated by size and count, readable from a byte offset.

One stream (``web.stdout``) is a series of files in one folder, each named by
the offset of its first byte in the stream: ``web.stdout.000000000000000``,
``web.stdout.000000010485760``, ... The newest grows up to ``max_bytes``, then
a new one starts; only the ``max_files`` newest are kept. Offsets therefore
count every byte the task ever wrote, they survive rotation and agent restarts,
and a reader asking for bytes that were rotated away gets the oldest bytes
still kept (and learns the offset it really got).

Beside them, ``web.stdout.times`` marks when the stream was written: a line ``<unix ns>
<offset>`` at the first write after at least ``MARK_INTERVAL_NS`` without one, so the bytes
between two marks were written within that long after the first. ``offset_at`` turns a
time into an offset from them (``--since``), to about a second. The marks of rotated-away
files are dropped, and past ``MAX_MARKS`` every other one is (coarser, still bounded).

Standard library only: the process shim (``process_shim``) imports it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

_DIGITS = 15
MARK_INTERVAL_NS = 1_000_000_000
"""A time mark at most once a second (the precision of ``offset_at``)."""
MAX_MARKS = 4096
"""Marks kept per stream (about 100 KB); past it every other one is dropped."""


def marks_name(stream: str) -> str:
    return f"{stream}.times"


def read_marks(folder: Path, stream: str) -> list[tuple[int, int]]:
    """(unix ns, offset) marks of ``stream``, oldest first; what does not parse is skipped."""
    try:
        text = (folder / marks_name(stream)).read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return []
    out = []
    for line in text.splitlines():
        t, _, off = line.partition(" ")
        if t.isdigit() and off.isdigit():
            out.append((int(t), int(off)))
    return out


def offset_at(folder: Path, stream: str, since_ns: int) -> int:
    """The offset from which ``stream`` holds what was written at or after ``since_ns`` (up
    to ``MARK_INTERVAL_NS`` earlier); 0 (the oldest byte kept) when that is before every mark,
    the end when nothing was written since."""
    marks = read_marks(folder, stream)
    before = [m for m in marks if m[0] <= since_ns]
    if not before:
        return 0
    t, off = before[-1]
    if since_ns < t + MARK_INTERVAL_NS:
        return off  # what follows this mark may have been written at since_ns or after
    # what follows this mark was written within a second of it, before since_ns
    return marks[len(before)][1] if len(before) < len(marks) else stream_end(folder, stream)


def segment_name(stream: str, start: int) -> str:
    return f"{stream}.{start:0{_DIGITS}d}"


def segments(folder: Path, stream: str) -> list[tuple[int, Path]]:
    """The files of ``stream`` in ``folder`` as (offset of first byte, path), oldest first."""
    out = []
    prefix = stream + "."
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    for name in names:
        rest = name[len(prefix):]
        if name.startswith(prefix) and len(rest) == _DIGITS and rest.isdigit():
            out.append((int(rest), folder / name))
    out.sort()
    return out


def stream_end(folder: Path, stream: str) -> int:
    """The offset just past the last byte written to ``stream``."""
    segs = segments(folder, stream)
    if not segs:
        return 0
    start, path = segs[-1]
    try:
        return start + path.stat().st_size
    except FileNotFoundError:
        return start


class RotatingWriter:
    """Appends to a stream's newest file, starting a new one every ``max_bytes``."""

    def __init__(self, folder: Path, stream: str, *, max_bytes: int, max_files: int,
                 clock: Callable[[], int] = time.time_ns) -> None:
        if max_bytes < 1 or max_files < 1:
            raise ValueError("max_bytes and max_files must be at least 1")
        self.folder, self.stream = folder, stream
        self.max_bytes, self.max_files = max_bytes, max_files
        self._clock = clock
        folder.mkdir(parents=True, exist_ok=True)
        segs = segments(folder, stream)
        self._start = segs[-1][0] if segs else 0
        self._fd = os.open(folder / segment_name(stream, self._start),
                           os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._size = os.fstat(self._fd).st_size
        marks = read_marks(folder, stream)
        self._last_mark = marks[-1][0] if marks else 0
        self._marks = len(marks)
        self._mfd = self._open_marks()

    def _open_marks(self) -> int:
        return os.open(self.folder / marks_name(self.stream),
                       os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    @property
    def offset(self) -> int:
        """The offset the next byte will have."""
        return self._start + self._size

    def write(self, data: bytes) -> None:
        now = self._clock()
        if data and now - self._last_mark >= MARK_INTERVAL_NS:
            os.write(self._mfd, f"{now} {self.offset}\n".encode())
            self._last_mark = now
            self._marks += 1
            if self._marks > MAX_MARKS:
                self._rewrite_marks(thin=True)
        view = memoryview(data)
        while view:
            room = self.max_bytes - self._size
            if room <= 0:
                self._rotate()
                continue
            n = os.write(self._fd, view[:room])
            self._size += n
            view = view[n:]

    def _rotate(self) -> None:
        os.close(self._fd)
        self._start += self._size
        self._fd = os.open(self.folder / segment_name(self.stream, self._start),
                           os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._size = 0
        dropped = segments(self.folder, self.stream)[:-self.max_files]
        for _, old in dropped:
            old.unlink(missing_ok=True)
        if dropped:
            self._rewrite_marks(thin=False)

    def _rewrite_marks(self, *, thin: bool) -> None:
        """Drop the marks of rotated-away bytes (and, ``thin``, every other one, keeping the
        newest)."""
        segs = segments(self.folder, self.stream)
        oldest = segs[0][0] if segs else 0
        keep = [m for m in read_marks(self.folder, self.stream) if m[1] >= oldest]
        if thin:
            keep = keep[::-2][::-1]
        path = self.folder / marks_name(self.stream)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(f"{t} {off}\n" for t, off in keep))
        os.close(self._mfd)
        os.replace(tmp, path)
        self._mfd = self._open_marks()
        self._marks = len(keep)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._mfd >= 0:
            os.close(self._mfd)
            self._mfd = -1


def read(folder: Path, stream: str, offset: int, limit: int = 1 << 20) -> tuple[int, bytes]:
    """Up to ``limit`` bytes of ``stream`` from ``offset``: (offset of the first byte, bytes).

    A negative ``offset`` counts from the end (``-100``: the last 100 bytes).
    An offset before the oldest kept byte starts at the oldest kept byte; one
    past the end gives no bytes (and the end as the offset).
    """
    segs = segments(folder, stream)
    if not segs:
        return 0, b""
    end = stream_end(folder, stream)
    if offset < 0:
        offset = max(end + offset, 0)
    offset = max(offset, segs[0][0])
    if offset >= end:
        return end, b""
    chunks: list[bytes] = []
    got = 0
    first = offset
    for i, (start, path) in enumerate(segs):
        stop = segs[i + 1][0] if i + 1 < len(segs) else end
        if stop <= offset or got >= limit:
            continue
        try:
            with path.open("rb") as f:
                f.seek(max(offset - start, 0))
                data = f.read(min(limit - got, stop - max(offset, start)))
        except FileNotFoundError:  # rotated away while we read: start again after it
            if not chunks:
                first = offset = stop
            continue
        chunks.append(data)
        got += len(data)
        offset = max(offset, start) + len(data)
    return first, b"".join(chunks)
