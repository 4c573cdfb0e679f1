"""The load balancer's metrics, per service (bounded by the services published in the
cluster; a service is named by its namespace, job, group and name): connections, bytes,
connect latency, failures, retries, endpoints by state, ejections, the data plane (kernel
services: packets from nftables' counters, and conntrack's fill); and the endpoints published in
gossip that this agent refuses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from agent.lb.dataplane import DataPlane
from agent.lb.discovery import REASONS
from agent.lb.mesh import Mesh

ENDPOINT_STATES = ("healthy", "probing", "ejected", "draining")


class LbCollector(Collector):
    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh

    def collect(self) -> Iterator[Metric]:
        stats = sorted(self.mesh.stats().values(),
                       key=lambda s: (s.name, s.namespace, s.job, s.group))
        svc = ["service", "namespace", "job", "group"]

        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"orch_lb_{name}", doc, labels=svc)

        def counter(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(f"orch_lb_{name}", doc, labels=svc)

        listening = gauge("listening", "1 while the service's published port is bound here.")
        active = gauge("connections_active", "Client connections (UDP: sessions) open now.")
        total = counter("connections", "Client connections (UDP: sessions) accepted.")
        rejected = CounterMetricFamily(
            "orch_lb_connections_rejected", "Client connections (UDP: sessions) turned away, by "
            "reason (limit: the service's max_connections; prefix: its max_per_prefix from one "
            "client network; rate: UDP datagrams from new clients past udp_new_session_rate).",
            labels=[*svc, "reason"])
        evicted = counter("udp_sessions_evicted", "UDP sessions not established yet ended to "
                          "make room for a new client (udp_new_sessions, max_connections).")
        failed = counter("connections_failed", "Client connections no endpoint could take.")
        bytes_in = counter("received_bytes", "Bytes received from clients.")
        bytes_out = counter("sent_bytes", "Bytes sent to clients.")
        failures = counter("connect_failures", "Connects to endpoints that failed or timed out.")
        retries = counter("connect_retries", "Connects retried on another endpoint.")
        ejections = counter("ejections", "Endpoints ejected by outlier detection.")
        endpoints = GaugeMetricFamily("orch_lb_endpoints", "Endpoints by state.",
                                      labels=[*svc, "state"])
        mode = GaugeMetricFamily("orch_lb_data_plane", "1 for the data plane that forwards "
                                 "the service here: kernel (nftables) or proxy (user space).",
                                 labels=[*svc, "mode"])
        packets_in = counter("received_packets", "Packets received from clients (kernel data "
                             "plane: its counters).")
        packets_out = counter("sent_packets", "Packets sent to clients (kernel data plane).")
        latency = HistogramMetricFamily("orch_lb_connect_duration_seconds", "Time to connect "
                                        "to an endpoint (successful TCP connects).", labels=svc)
        for s in stats:
            name = [s.name, s.namespace, s.job, s.group]
            listening.add_metric(name, 1 if s.listening else 0)
            mode.add_metric([*name, s.mode], 1)
            if s.mode == "kernel":
                packets_in.add_metric(name, s.packets_in)
                packets_out.add_metric(name, s.packets_out)
            active.add_metric(name, s.active)
            total.add_metric(name, s.total)
            rejected.add_metric([*name, "limit"], s.rejected)
            rejected.add_metric([*name, "prefix"], s.rejected_prefix)
            if s.protocol == "udp":
                rejected.add_metric([*name, "rate"], s.rejected_rate)
                rejected.add_metric([*name, "busy"], s.rejected_busy)
                evicted.add_metric(name, s.evicted)
            failed.add_metric(name, s.failed)
            bytes_in.add_metric(name, s.bytes_in)
            bytes_out.add_metric(name, s.bytes_out)
            failures.add_metric(name, s.connect_failures)
            retries.add_metric(name, s.retries)
            ejections.add_metric(name, s.ejections)
            for state in ENDPOINT_STATES:
                endpoints.add_metric([*name, state], s.endpoints.get(state, 0))
            h = s.connect_latency
            latency.add_metric(name, [(_le(b), n) for b, n in h.cumulative()], h.sum)
        yield from (listening, mode, active, total, rejected, evicted, failed, bytes_in,
                    bytes_out, packets_in, packets_out, failures, retries, ejections, endpoints,
                    latency)
        if isinstance(self.mesh.lb, DataPlane) and self.mesh.lb.kernel is not None:
            for key, metric, doc in (
                    ("count", "entries", "Connections conntrack tracks in this node's network "
                     "namespace now (every flow, the kernel data plane's included)."),
                    ("max", "limit", "The most conntrack may track (nf_conntrack_max): new "
                     "flows beyond it are dropped.")):
                value = conntrack_value(key)
                if value is not None:
                    yield GaugeMetricFamily(f"orch_lb_conntrack_{metric}", doc, value=value)
        yield GaugeMetricFamily("orch_lb_services", "Services this node's load balancer "
                                "publishes.", value=len(stats))
        yield CounterMetricFamily("orch_lb_table_updates", "Endpoint tables applied (from "
                                  "gossip).", value=self.mesh.updates)
        refused = GaugeMetricFamily(
            "orch_lb_endpoints_refused", "Endpoints published in gossip that this agent refuses "
            "now, by reason (malformed; unexpected: not placed by the controller for that "
            "service; node: published by another member than its node; address: not at the "
            "publishing member's own address; port: not at the port it was given).",
            labels=["reason"])
        for reason in REASONS:
            refused.add_metric([reason], self.mesh.endpoints.table.refused.get(reason, 0))
        yield refused


def conntrack_value(name: str) -> int | None:
    """``nf_conntrack_count`` or ``nf_conntrack_max`` of this network namespace (None when
    conntrack is not loaded)."""
    try:
        return int(Path(f"/proc/sys/net/netfilter/nf_conntrack_{name}").read_text())
    except (OSError, ValueError):
        return None


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)
