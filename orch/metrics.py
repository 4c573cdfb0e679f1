"""Prometheus exposition: one registry per daemon, served at ``/metrics`` on the daemon's loop.

Components describe themselves with *collectors* that read their own counters
at scrape time, so the hot paths only bump plain integers. Names follow the
Prometheus conventions: the ``orch_`` prefix, base units, ``_total`` counters,
labels of bounded cardinality.
"""

from __future__ import annotations

import bisect
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.openmetrics.exposition import escape_label_name, escape_metric_name
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

log = logging.getLogger("metrics")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def histogram(name: str, doc: str, bounds: Sequence[float], counts: Sequence[int], total: float,
              labels: Iterable[str] = (), values: Sequence[str] = ()) -> HistogramMetricFamily:
    """A histogram family from per-bucket counts (the last count is above every bound)."""
    fam = HistogramMetricFamily(name, doc, labels=list(labels))
    running, buckets = 0, []
    for bound, n in zip(bounds, counts, strict=False):
        running += n
        buckets.append((repr(float(bound)), running))
    buckets.append(("+Inf", running + (counts[len(bounds)] if len(counts) > len(bounds) else 0)))
    fam.add_metric(list(values), buckets, total)
    return fam


class MetricsServer:
    """``GET /metrics`` (Prometheus text format) and ``GET /healthz`` on ``host:port``."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int,
                 json_routes: Mapping[str, Callable[[], Any]] | None = None) -> None:
        self.registry = registry
        self.host, self.port = host, port
        self.json_routes = dict(json_routes or {})
        """More read-only routes: path -> what to serve as JSON (Prometheus's HTTP SD)."""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        for path, fn in self.json_routes.items():
            app.router.add_get(path, self._json(fn))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self._runner.addresses:
            self.port = int(self._runner.addresses[0][1])
        log.info("metrics served", extra={"addr": f"{self.host}:{self.port}"})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        body = render(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    @staticmethod
    def _json(fn: Callable[[], Any]) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            return web.json_response(fn())
        return handler

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")


SD_PATH = "/v1/sd/prometheus"
"""Where agents serve Prometheus's HTTP service discovery (``orch.prometheus_sd``)."""


def announce_metrics(gossip: Any, host: str, port: int) -> None:
    """Say in gossip where this member's ``/metrics`` is (for Prometheus's discovery): at
    its gossip address when it listens there or on every address; not at all when it
    listens elsewhere (loopback on a node gossiping on its LAN address: no one else could
    scrape it)."""
    if gossip is None or gossip.core is None:
        return
    own = gossip.addr[0]
    if host in ("", "0.0.0.0", "::"):
        host = own
    if host == own:
        gossip.set_state({"metrics": f"{host}:{port}"})
    else:
        log.info("metrics not announced for discovery (they listen at another address than "
                 "gossip's)", extra={"metrics": f"{host}:{port}", "gossip": own})


_NEEDS_ESCAPE = re.compile(r'[\\\n"]')
_value_text: Callable[[float], str] = floatToGoString
"""A sample value as Go (and prometheus_client) writes it: 1.0, +Inf, NaN, 1.5e+10."""
_OM_ONLY = ("_created", "_gsum", "_gcount")
"""OpenMetrics samples that the Prometheus text format shows as gauges of their own."""


def render(registry: Collector) -> bytes:
    """The Prometheus text format (0.0.4) of what ``registry`` collects: the very bytes of
    prometheus_client's ``generate_latest`` (a test holds them equal), in about half the time.

    ``generate_latest`` checks and escapes every label name and value of every sample; an
    agent with 200 allocations and 50 services exposes some 3,000 samples, and that took
    more of a scrape than collecting them. Here each sample name and each set of label
    names is escaped once per scrape, and a label value only when it holds a character to
    escape."""
    out: list[str] = []
    names: dict[str, str] = {}
    orders: dict[tuple[str, ...], list[tuple[str, str]]] = {}
    for metric in registry.collect():
        try:
            mname, mtype = metric.name, metric.type
            if mtype == "counter":  # OpenMetrics types and names in the Prometheus format
                mname += "_total"
            elif mtype == "info":
                mname, mtype = mname + "_info", "gauge"
            elif mtype == "stateset":
                mtype = "gauge"
            elif mtype == "gaugehistogram":
                mtype = "histogram"
            elif mtype == "unknown":
                mtype = "untyped"
            doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
            shown = escape_metric_name(mname)
            out.append(f"# HELP {shown} {doc}\n# TYPE {shown} {mtype}\n")
            om: dict[str, list[str]] = {}
            for s in metric.samples:
                name = names.get(s.name)
                if name is None:
                    name = names[s.name] = escape_metric_name(s.name)
                labels = s.labels
                if labels:
                    keys = tuple(labels)
                    order = orders.get(keys)
                    if order is None:
                        order = orders[keys] = [(k, f'{escape_label_name(k)}="')
                                                for k in sorted(keys)]
                    parts = []
                    for k, head in order:
                        v = labels[k]
                        if _NEEDS_ESCAPE.search(v):
                            v = v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')
                        parts.append(f'{head}{v}"')
                    name = f"{name}{{{','.join(parts)}}}"
                ts = "" if s.timestamp is None else f" {int(float(s.timestamp) * 1000):d}"
                line = f"{name} {_value_text(s.value)}{ts}\n"
                suffix = s.name[len(metric.name):] if s.name.startswith(metric.name) else ""
                if suffix in _OM_ONLY:
                    om.setdefault(suffix, []).append(line)
                else:
                    out.append(line)
        except Exception as e:
            e.args = (e.args or ("",)) + (metric,)
            raise
        for suffix, lines in sorted(om.items()):
            shown = escape_metric_name(metric.name + suffix)
            out.append(f"# HELP {shown} {doc}\n# TYPE {shown} gauge\n")
            out.extend(lines)
    return "".join(out).encode("utf-8")


def registry_with(*collectors: Collector) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    for c in collectors:
        reg.register(c)
    return reg


class Hist:
    """A histogram kept as plain counts (cheap to observe; exported by a collector)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.total += value
        self.counts[bisect.bisect_left(self.bounds, value)] += 1

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        return histogram(name, doc, self.bounds, self.counts, self.total)


LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Bucket bounds (seconds) for latencies of in-process work and local I/O."""
