"""Prometheus exposition: one registry per daemon, served at ``/metrics`` on the daemon's loop.

Components describe themselves with *collectors* that read their own counters
at scrape time, so the hot paths only bump plain integers. Names follow the
Prometheus conventions: the ``orch_`` prefix, base units, ``_total`` counters,
labels of bounded cardinality.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterable, Sequence

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

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

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.registry = registry
        self.host, self.port = host, port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
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
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")


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
