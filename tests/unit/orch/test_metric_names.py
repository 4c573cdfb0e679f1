"""The naming check the metrics tests run on every daemon's scrape catches what it should."""

from __future__ import annotations

from tests.metric_names import naming_problems


def family(name: str, kind: str) -> str:
    return f"# HELP {name} Something.\n# TYPE {name} {kind}\n{name} 1.0\n"


def test_conventional_names_pass() -> None:
    text = "".join([family("orch_gossip_sent_bytes_total", "counter"),
                    family("orch_lb_connect_duration_seconds", "histogram"),
                    family("orch_task_restarts_total", "counter"),
                    family("orch_allocations", "gauge"),
                    family("container_memory_usage_bytes", "gauge")])
    assert naming_problems(text) == []


def test_each_broken_convention_is_named() -> None:
    assert naming_problems(family("orch_gossip_bytes_sent_total", "counter")) == [
        "orch_gossip_bytes_sent_total: the unit 'bytes' must be the last word of the name"]
    assert naming_problems(family("orch_task_restarts", "counter")) == [
        "orch_task_restarts: a counter without _total"]
    assert naming_problems(family("orch_queue_total", "gauge")) == [
        "orch_queue_total: a gauge named like a counter (_total)"]
    assert naming_problems(family("orch_probe_rtt_ms", "histogram")) == [
        "orch_probe_rtt_ms: 'ms' is not a base unit (seconds, bytes)"]
    assert naming_problems(family("process_cpu_seconds_total", "counter")) == [
        "process_cpu_seconds_total: not under the orch_ prefix"]
