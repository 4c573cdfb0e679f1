"""Prometheus naming conventions that ``promtool check metrics`` does not enforce.

promtool (2.42) flags counters without ``_total`` and a few unit spellings; the
conventions (https://prometheus.io/docs/practices/naming/) ask more: one prefix for the
application, base units only (seconds, bytes), and the unit as the last word of the
name (before ``_total`` on a counter): ``orch_gossip_sent_bytes_total``, not
``orch_gossip_bytes_sent_total``.
"""

from __future__ import annotations

CADVISOR = frozenset({"container_cpu_usage_seconds_total", "container_memory_usage_bytes"})
"""Names taken from cAdvisor on purpose, so that dashboards written for it work."""
BASE_UNITS = frozenset({"seconds", "bytes", "ratio"})
OTHER_UNITS = frozenset({
    "milliseconds", "microseconds", "nanoseconds", "ms", "us", "ns", "millis", "micros",
    "minutes", "hours", "days", "kilobytes", "megabytes", "gigabytes", "kb", "mb", "gb", "kib",
    "mib", "gib", "bits", "percent", "pct"})


def naming_problems(text: str) -> list[str]:
    """One sentence per convention a scrape's metric families break (empty when none)."""
    problems = []
    for line in text.splitlines():
        if not line.startswith("# TYPE "):
            continue
        _, _, name, kind = line.split(" ", 3)
        if not name.startswith("orch_") and name not in CADVISOR:
            problems.append(f"{name}: not under the orch_ prefix")
        if kind == "counter" and not name.endswith("_total"):
            problems.append(f"{name}: a counter without _total")
        if kind != "counter" and name.endswith("_total"):
            problems.append(f"{name}: a {kind} named like a counter (_total)")
        words = name.split("_")
        if kind == "counter" and words[-1] == "total":
            words = words[:-1]
        problems += [f"{name}: {w!r} is not a base unit (seconds, bytes)" for w in words
                     if w in OTHER_UNITS]
        problems += [f"{name}: the unit {w!r} must be the last word of the name" for w in words[:-1]
                     if w in BASE_UNITS]
    return problems
