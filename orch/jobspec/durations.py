"""Durations as people write them in job files: ``"30s"``, ``"1m30s"``, ``"250ms"``, ``"2h"``.

The grammar is Go's ``time.ParseDuration`` (the one Nomad users know): one or
more ``<number><unit>`` terms, units ``ns``, ``us``/``µs``, ``ms``, ``s``, ``m``,
``h``, an optional leading sign; ``"0"`` alone is zero. ``d`` (days) is accepted
too because people write ``"1d"`` for intervals.
"""

from __future__ import annotations

import re

_UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
    "d": 86_400_000_000_000,
}
MAX_NS = 315_576_000_000 * 1_000_000_000
"""The longest duration a job may name: what ``google.protobuf.Duration`` holds (10,000
years), past which it cannot go on the wire at all."""
_TERM = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h|d)")


def parse_duration(text: str) -> int:
    """Nanoseconds in ``text``; ValueError with a hint when it is not a duration."""
    s = text.strip()
    sign = 1
    if s[:1] in ("+", "-"):
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise ValueError(f'not a duration: {text!r} (write e.g. "30s", "1m30s", "250ms")')
    total = 0
    pos = 0
    while pos < len(s):
        m = _TERM.match(s, pos)
        if m is None:
            if s[pos:].replace(".", "", 1).isdigit():
                raise ValueError(f"duration {text!r} needs a unit (ns, us, ms, s, m, h, d)")
            raise ValueError(f'not a duration: {text!r} (write e.g. "30s", "1m30s", "250ms")')
        number, unit = m.groups()
        whole, _, frac = number.partition(".")
        scale = _UNITS_NS[unit]
        total += int(whole or 0) * scale
        if frac:
            total += int(frac) * scale // 10 ** len(frac)
        pos = m.end()
        if total > MAX_NS:
            raise ValueError(f"duration {text!r} is too long: at most 10,000 years, as the "
                             "wire format holds")
    return sign * total


def format_duration(ns: int) -> str:
    """The shortest readable form of ``ns`` that :func:`parse_duration` reads back exactly."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000_000_000:
        for unit, scale in (("ms", 1_000_000), ("us", 1_000)):
            if ns % scale == 0:
                return f"{sign}{ns // scale}{unit}"
        return f"{sign}{ns}ns"
    secs, frac = divmod(ns, 1_000_000_000)
    out = []
    for unit, size in (("h", 3600), ("m", 60)):
        if secs >= size:
            out.append(f"{secs // size}{unit}")
            secs %= size
    if secs or frac:
        out.append(f"{secs}.{frac:09d}".rstrip("0").rstrip(".") + "s")
    return sign + "".join(out)
