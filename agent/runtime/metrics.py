"""The runtime's metrics: allocations, restarts, checks, usage (cAdvisor's names), engines.

Per-allocation series carry ``alloc`` (the first 8 characters of its id), ``job``,
``group`` and ``task``: bounded by what one node can run.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.runtime.runtime import Runtime

STATES = ("pending", "running", "complete", "failed", "lost")


class RuntimeCollector(Collector):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        rt = self.runtime
        specs = rt.specs()
        statuses = rt.statuses()
        by_state = GaugeMetricFamily("orch_allocations", "Allocations on this node by client "
                                     "status.", labels=["state"])
        counts = dict.fromkeys(STATES, 0)
        for st in statuses:
            counts[st.client_status] = counts.get(st.client_status, 0) + 1
        for state, n in counts.items():
            by_state.add_metric([state], n)
        yield by_state
        healthy = GaugeMetricFamily("orch_allocation_healthy", "1 when every task of the "
                                    "allocation runs and passes its checks.",
                                    labels=["alloc", "job", "group"])
        restarts = CounterMetricFamily("orch_task_restarts", "Restarts of each task of the "
                                       "allocations on this node.",
                                       labels=["alloc", "job", "group", "task"])
        for st in statuses:
            spec = specs.get(st.alloc_id)
            job, group = (spec.job, spec.group.name) if spec is not None else ("", "")
            healthy.add_metric([st.alloc_id[:8], job, group], 1 if st.healthy else 0)
            for task, ts in st.tasks.items():
                restarts.add_metric([st.alloc_id[:8], job, group, task], ts.restarts)
        yield healthy
        yield restarts
        checks = CounterMetricFamily("orch_health_checks", "Health check probes by result.",
                                     labels=["alloc", "task", "check", "result"])
        passing = GaugeMetricFamily("orch_health_check_passing", "1 when the check's verdict is "
                                    "passing.", labels=["alloc", "task", "check"])
        for alloc_id, task, check, ok, bad, now in rt.check_results():
            checks.add_metric([alloc_id[:8], task, check, "pass"], ok)
            checks.add_metric([alloc_id[:8], task, check, "fail"], bad)
            passing.add_metric([alloc_id[:8], task, check], 1 if now else 0)
        yield checks
        yield passing
        cpu = CounterMetricFamily("container_cpu_usage_seconds", "CPU time used by the task "
                                  "(as cAdvisor names it).", labels=["alloc", "job", "task"])
        mem = GaugeMetricFamily("container_memory_usage_bytes", "Memory used by the task (as "
                                "cAdvisor names it).", labels=["alloc", "job", "task"])
        for alloc_id, usage in rt.usage().items():
            spec = specs.get(alloc_id)
            job = spec.job if spec is not None else ""
            for task, u in usage.tasks.items():
                cpu.add_metric([alloc_id[:8], job, task], u.cpu_seconds)
                mem.add_metric([alloc_id[:8], job, task], u.memory_bytes)
        yield cpu
        yield mem
        drivers = GaugeMetricFamily("orch_driver_healthy", "1 when the task driver's engine "
                                    "answers.", labels=["driver"])
        failures = CounterMetricFamily("orch_driver_failures", "Times a driver's engine stopped "
                                       "answering.", labels=["driver"])
        for d in rt.driver_statuses():
            drivers.add_metric([d.name], 1 if d.healthy else 0)
            failures.add_metric([d.name], rt.driver_failures.get(d.name, 0))
        yield drivers
        yield failures
