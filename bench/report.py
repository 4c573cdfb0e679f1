"""What every benchmark prints: progress on stderr, percentiles, aligned tables on stdout."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any


def progress(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation."""
    xs = sorted(values)
    if not xs:
        return math.nan
    k = (len(xs) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def table(title: str, head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A titled table with right-aligned columns."""
    cells = [[str(h) for h in head]] + [[fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    lines = [f"\n{title}",
             "  " + "  ".join(h.rjust(w) for h, w in zip(cells[0], widths, strict=True)),
             "  " + "  ".join("-" * w for w in widths)]
    lines += ["  " + "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True))
              for r in cells[1:]]
    return "\n".join(lines)


def fmt(v: Any) -> str:
    """Numbers for people: 3 decimals below 1, 2 below 1,000, then whole with separators."""
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if math.isinf(v):
            return "never"
        if abs(v) < 1:
            return f"{v:.3f}"
        return f"{v:,.2f}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)
