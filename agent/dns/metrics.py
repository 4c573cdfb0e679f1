"""The DNS server's metrics: queries by type and outcome, answer latency, the zone's size,
the sources being rate-limited."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.dns.server import LATENCY_BOUNDS, DnsServer
from orch.metrics import histogram


class DnsCollector(Collector):
    def __init__(self, server: DnsServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        s = self.server
        queries = CounterMetricFamily(
            "orch_dns_queries", "DNS queries by type and outcome (malformed: dropped unanswered; "
            "ratelimited: dropped, the source over its rate).", labels=["qtype", "outcome"])
        for (qtype, outcome), n in sorted(s.counts.items()):
            if n:
                queries.add_metric([qtype, outcome], n)
        yield queries
        yield histogram("orch_dns_answer_seconds", "Time from a query's arrival to its answer.",
                        LATENCY_BOUNDS, s.latency, s.latency_sum)
        names = GaugeMetricFamily("orch_dns_names", "Names in the zone this agent answers.")
        names.add_metric([], len(s.answerer.zone.names))
        yield names
        left = GaugeMetricFamily("orch_dns_names_left_out", "Services, nodes and allocations "
                                 "whose names are no DNS label (not answered).")
        left.add_metric([], s.answerer.zone.left_out)
        yield left
        rebuilds = CounterMetricFamily("orch_dns_zone_rebuilds", "Zones built that changed.")
        rebuilds.add_metric([], s.rebuilds)
        yield rebuilds
        listening = GaugeMetricFamily("orch_dns_listeners", "Addresses the DNS server "
                                      "listens on (UDP and TCP each); 0: not serving.")
        listening.add_metric([], len(s.addresses))
        yield listening
        sources = GaugeMetricFamily("orch_dns_limited_sources", "Source addresses whose rate "
                                    "is being tracked.")
        sources.add_metric([], len(s.limiter))
        yield sources
