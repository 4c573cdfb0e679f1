"""orch.metrics.render writes the very bytes prometheus_client's generate_latest writes, for
every kind of metric family and every character that needs escaping."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
    SummaryMetricFamily,
    UnknownMetricFamily,
)
from prometheus_client.registry import Collector

from orch.metrics import Hist, histogram, registry_with, render


class Families(Collector):
    def __init__(self, *families: Metric) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def test_every_kind_of_family_and_escape_renders_as_prometheus_client_does() -> None:
    counter = CounterMetricFamily("orch_things", 'Doc with \\ a backslash,\na newline and "quotes".',
                                  labels=["b", "a"])
    counter.add_metric(['x"y', "back\\slash"], 3)
    counter.add_metric(["new\nline", "é ü"], 1.5e10)
    counter.add_metric(["nan", "big"], float("nan"))
    counter.add_metric(["tiny", "neg"], 1e-9)
    labelled = GaugeMetricFamily("orch_gauge", "Gauge.", labels=["z", "a", "m"])
    labelled.add_metric(["1", "2", "3"], float("inf"), timestamp=1234.5)
    labelled.add_metric(["", "", ""], float("-inf"))
    hist = HistogramMetricFamily("orch_wait_seconds", "H.", labels=["service"])
    hist.add_metric(["web"], [("0.1", 1), ("1.0", 2), ("+Inf", 4)], 2.25)
    h = Hist((0.001, 0.01))
    for v in (0.0005, 0.002, 5.0):
        h.observe(v)
    families = [
        counter, labelled, hist, h.family("orch_plain_seconds", "Plain."),
        histogram("orch_lat_seconds", "L.", (0.5, 1.0), (1, 2, 3), 4.0, ["k"], ["v"]),
        CounterMetricFamily("orch_created", "With a created time.", value=7, created=1700000000.5),
        GaugeMetricFamily("orch_zero", "Zeros.", value=-0.0),
        GaugeMetricFamily("orch_ints", "Ints.", value=12345678),
        GaugeMetricFamily("orch.dotted-name", "A name to escape.", value=1),
        InfoMetricFamily("orch_build", "Info.", value={"version": "1.0", "commit": "abc"}),
        StateSetMetricFamily("orch_mode", "State set.", value={"on": True, "off": False}),
        GaugeHistogramMetricFamily("orch_queue", "Gauge histogram.", buckets=[("1.0", 4),
                                   ("+Inf", 5)], gsum_value=7),
        UnknownMetricFamily("orch_unknown", "Unknown.", value=2),
        SummaryMetricFamily("orch_summary_seconds", "Summary.", count_value=3, sum_value=2.5),
        CounterMetricFamily("orch_empty", "No samples.", labels=["x"]),
    ]
    reg = registry_with(Families(*families))
    assert render(reg) == generate_latest(reg)
    assert b'orch_things_total{a="back\\\\slash",b="x\\"y"} 3.0\n' in render(reg)
