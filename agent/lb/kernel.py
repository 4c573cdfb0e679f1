"""The kernel data plane: published services forwarded by nftables, decided in user space.

``KernelBalancer`` has the proxy's shape (``update`` with the whole table, ``stats``,
``close``) and keeps the table ``ip orch`` equal to what it was given: the first update
replaces whatever table a previous agent left (one transaction: no duplicate, no moment
without rules), each later one applies only the difference (one transaction per update).
The endpoints given are the usable ones (health from gossip, ``prefer_local`` applied by the
caller); an endpoint that leaves takes no new flow at once, and its established flows keep
their NAT binding in conntrack until ``drain_grace`` ends, when they are deleted (unless it
came back). ``close`` removes the table.

The kernel sees no failed connect, so outlier detection is fed by probes: every
``kernel_probe_interval`` a TCP connect to each endpoint of a TCP service (at most
``kernel_probe_concurrency`` at once), each outcome told to the service's ``OutlierDetector``
(the proxy's rules: consecutive failures, growing ejections, at most a share of the
endpoints out, never the last one). An ejected endpoint leaves the service's slots until its
ejection ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping

from agent.lb import nft
from agent.lb.config import LbConfig
from agent.lb.libnft import Nft, NftError
from agent.lb.model import Endpoint, ServiceSpec
from agent.lb.outlier import OutlierDetector
from agent.lb.pool import endpoint_name
from agent.lb.stats import EndpointStats, Histogram, ServiceStats

log = logging.getLogger("lb")

INLINE_COMMANDS = 32
"""Transactions of at most this many commands (an endpoint or two added or removed) run on
the event loop: they take well under a millisecond, less than handing them to a thread."""
MAX_DRAINS = 100_000
"""Endpoints waiting for their conntrack entries to be deleted; beyond it the oldest wait is
dropped (its flows then end on conntrack's own timeouts)."""


def kernel_capable(spec: ServiceSpec) -> str:
    """Why ``spec`` needs the proxy ('' when the kernel can forward it)."""
    if spec.proxy_protocol:
        return "proxy_protocol"
    if not 0 < spec.published_port < 65536:
        return "no published port"
    if spec.policy not in nft.KERNEL_POLICIES:
        return f"policy {spec.policy}"
    for ep in spec.endpoints:
        try:
            nft.target(ep.host, ep.port)
        except ValueError:
            return "an endpoint is not an IPv4 address"
    return ""


class KernelBalancer:
    def __init__(self, cfg: LbConfig, nft_ctx: Nft | None = None, *,
                 bind_host: str = "0.0.0.0") -> None:
        self.cfg = cfg
        self.bind_host = bind_host
        """Published ports are DNATed on this address only (0.0.0.0: every local one)."""
        self.nft = nft_ctx or Nft()
        self.services: dict[str, nft.KernelService] | None = None
        """What the table holds (None: not written yet, or to be rebuilt)."""
        self.specs: dict[str, ServiceSpec] = {}
        self._lock = asyncio.Lock()
        self._drains: dict[tuple[str, nft.Target], tuple[float, str, int]] = {}
        """(service, endpoint) -> (when its drain ends, protocol, published port)."""
        self._drainer: asyncio.Task[None] | None = None
        self.flushed = 0
        """Conntrack entries of drained endpoints deleted."""
        self._closed = False
        self.transactions = 0
        self.update_seconds: list[float] = []
        """Seconds of the last updates' transactions (at most 1,000 kept)."""
        self._stats_cache: tuple[float, dict[str, tuple[int, int]]] = (-1.0, {})
        self.outliers: dict[str, OutlierDetector] = {}
        """By service key: the probes' outcomes."""
        self._prober: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.probes = 0

    # --- the table -------------------------------------------------------------------
    def _detector(self, key: str, spec: ServiceSpec) -> OutlierDetector:
        det = self.outliers.get(key)
        if det is None:
            cfg = self.cfg
            det = self.outliers[key] = OutlierDetector(
                consecutive_failures=cfg.outlier_consecutive_failures,
                base_ejection=cfg.outlier_base_ejection, max_ejection=cfg.outlier_max_ejection,
                max_ejection_percent=cfg.outlier_max_ejection_percent)
        det.reset([endpoint_name(e) for e in spec.endpoints])
        return det

    def usable(self, key: str, spec: ServiceSpec, now: float) -> list[Endpoint]:
        """The endpoints not ejected now (all of them when every one is)."""
        det = self.outliers.get(key)
        if det is None:
            return list(spec.endpoints)
        return ([e for e in spec.endpoints if det.usable(endpoint_name(e), now)]
                or list(spec.endpoints))

    def _kernel_service(self, key: str, spec: ServiceSpec,
                        old: nft.KernelService | None) -> nft.KernelService:
        now = asyncio.get_running_loop().time()
        eps = [(nft.target(e.host, e.port), e) for e in self.usable(key, spec, now)]
        policy = spec.policy
        if policy == "maglev":
            slots = nft.maglev_slots(((t, max(e.weight, 1)) for t, e in eps),
                                     self.cfg.maglev_table_size)
        else:
            keep = old.slots if old is not None and old.policy == policy else ()
            slots = nft.dense_slots(keep, (t for t, _ in eps))
        remote = frozenset(t for t, e in eps if not e.local)
        return nft.KernelService(key=key, protocol=spec.protocol, port=spec.published_port,
                                 policy=policy, slots=slots, remote=remote)

    async def update(self, services: Mapping[str, ServiceSpec]) -> None:
        """Make the kernel forward ``services`` (with their usable endpoints); services
        without an endpoint are left out (their port refuses connections)."""
        async with self._lock:
            if self._closed:
                return
            self._loop = asyncio.get_running_loop()
            old = self.services
            new: dict[str, nft.KernelService] = {}
            for key, spec in services.items():
                if not spec.endpoints or kernel_capable(spec):
                    continue
                self._detector(key, spec)
                new[key] = self._kernel_service(key, spec, (old or {}).get(key))
            for key in set(self.outliers) - set(new):
                del self.outliers[key]
            cmds = nft.plan(old, new, bind=self.bind_host)
            if cmds:
                began = time.perf_counter()
                try:
                    if len(cmds) <= INLINE_COMMANDS:  # a few elements: under a millisecond
                        self.nft.run(nft.script(cmds))
                    else:  # a table built anew, a Maglev table rewritten: off the loop
                        await asyncio.to_thread(self.nft.run, nft.script(cmds))
                except NftError as e:
                    log.error("kernel data plane update refused; the table will be rebuilt",
                              extra={"error": str(e)[:500]})
                    self.services = None
                    raise
                self.transactions += 1
                self.update_seconds.append(time.perf_counter() - began)
                del self.update_seconds[:-1000]
                if old is None:
                    log.info("kernel data plane table written", extra={
                        "table": f"{nft.FAMILY} {nft.TABLE}", "services": len(new)})
            self._schedule_drains(old or {}, new)
            self.services = new
            self.specs = dict(services)
            if self._prober is None and self.cfg.kernel_probe_interval > 0:
                self._prober = asyncio.get_running_loop().create_task(self._probe_loop())

    # --- probes (outlier detection) ---------------------------------------------------
    async def _probe_loop(self) -> None:
        sem = asyncio.Semaphore(self.cfg.kernel_probe_concurrency)
        while True:
            await asyncio.sleep(self.cfg.kernel_probe_interval)
            targets: dict[nft.Target, list[tuple[str, str]]] = {}
            for key, spec in self.specs.items():
                if spec.protocol != "tcp" or key not in (self.services or {}):
                    continue
                for e in spec.endpoints:
                    targets.setdefault(nft.target(e.host, e.port), []).append(
                        (key, endpoint_name(e)))
            results = await asyncio.gather(*(self._probe(t, sem) for t in targets))
            now = asyncio.get_running_loop().time()
            for (t, users), ok in zip(targets.items(), results, strict=True):
                for key, name in users:
                    det = self.outliers.get(key)
                    if det is None:
                        continue
                    if ok:
                        det.success(name, now)
                    elif det.failure(name, now):
                        log.warning("endpoint ejected: its probes failed", extra={
                            "service": key, "endpoint": f"{t[0]}:{t[1]}"})
            # an endpoint ejected, or back from its ejection: the slots change
            services = self.services or {}
            if any(key in services and {nft.target(e.host, e.port)
                                        for e in self.usable(key, spec, now)}
                   != services[key].targets() for key, spec in self.specs.items()):
                with contextlib.suppress(NftError):
                    await self.update(self.specs)

    async def _probe(self, t: nft.Target, sem: asyncio.Semaphore) -> bool:
        """A TCP connect to ``t`` within ``connect_timeout``, closed at once (no byte sent).
        The socket is this function's own and always closed, whatever the timing."""
        async with sem:
            self.probes += 1
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                async with asyncio.timeout(self.cfg.connect_timeout):
                    await asyncio.get_running_loop().sock_connect(sock, t)
            except (OSError, TimeoutError):
                return False
            finally:
                sock.close()
            return True

    def _schedule_drains(self, old: Mapping[str, nft.KernelService],
                         new: Mapping[str, nft.KernelService]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.drain_grace
        for key, svc in old.items():
            now = new.get(key)
            keep = now.targets() if now is not None and now.port == svc.port else set()
            for t in svc.targets() - keep:
                if (key, t) in self._drains:
                    continue
                if len(self._drains) >= MAX_DRAINS:
                    del self._drains[next(iter(self._drains))]
                self._drains[(key, t)] = (deadline, svc.protocol, svc.port)
        for key, svc in new.items():  # back before its drain ended: its flows stay
            for t in svc.targets():
                self._drains.pop((key, t), None)
        if self._drains and self._drainer is None:
            self._drainer = loop.create_task(self._drain_loop())

    async def _drain_loop(self) -> None:
        """Ends the drains that are due, one ``conntrack`` at a time (a thousand endpoints
        removed at once cost a thousand short runs in a row, never a thousand processes)."""
        loop = asyncio.get_running_loop()
        try:
            while self._drains:
                first = min(d for d, _, _ in self._drains.values())
                await asyncio.sleep(max(0.0, first - loop.time()))
                now = loop.time()
                due: dict[tuple[str, int], list[nft.Target]] = {}
                for (key, t), (deadline, protocol, port) in list(self._drains.items()):
                    if deadline <= now:
                        del self._drains[(key, t)]
                        due.setdefault((protocol, port), []).append(t)
                for (protocol, port), targets in due.items():
                    if not await has_flows(protocol, port):
                        continue  # nothing DNATed from that port: nothing to delete
                    for t in targets:
                        self.flushed += max(0, await flush_flows(protocol, port, t))
        finally:
            self._drainer = None

    # --- observability ---------------------------------------------------------------
    def counters(self) -> dict[str, tuple[int, int]]:
        """Packets and bytes of every named counter of the table (read at most once a
        second)."""
        now = self._now()
        at, cached = self._stats_cache
        if now - at < 1.0:
            return cached
        out: dict[str, tuple[int, int]] = {}
        try:
            for item in self.nft.list_json(f"counters table {nft.FAMILY} {nft.TABLE}"):
                c = item.get("counter")
                if c:
                    out[c["name"]] = (int(c.get("packets", 0)), int(c.get("bytes", 0)))
        except (NftError, ValueError) as e:
            log.warning("cannot read the kernel data plane's counters", extra={"error": str(e)})
        self._stats_cache = (now, out)
        return out

    def _now(self) -> float:
        """The event loop's clock (outlier records are kept in it), from any thread."""
        return self._loop.time() if self._loop is not None else 0.0

    def stats(self) -> dict[str, ServiceStats]:
        counters = self.counters()
        now = self._now()
        out: dict[str, ServiceStats] = {}
        for key, spec in self.specs.items():
            svc = (self.services or {}).get(key)
            if svc is None:
                continue
            sid = svc.sid
            det = self.outliers.get(key)
            details = tuple(_endpoint_stats(e, det, now) for e in spec.endpoints)
            states = {"healthy": 0, "probing": 0, "ejected": 0, "draining": 0}
            for d in details:
                states[d.state] += 1
            out[key] = ServiceStats(
                name=spec.name, namespace=spec.namespace, job=spec.job, group=spec.group,
                protocol=spec.protocol, policy=spec.policy, port=spec.published_port,
                listening=True, bind_error=None, active=0,
                total=counters.get(f"{sid}_flows", (0, 0))[0], rejected=0, failed=0,
                bytes_in=counters.get(f"{sid}_up", (0, 0))[1],
                bytes_out=counters.get(f"{sid}_down", (0, 0))[1], connect_failures=0,
                retries=0, ejections=det.total_ejections if det is not None else 0,
                endpoints=states,
                endpoint_details=details, connect_latency=Histogram(), mode="kernel",
                packets_in=counters.get(f"{sid}_up", (0, 0))[0],
                packets_out=counters.get(f"{sid}_down", (0, 0))[0])
        return out

    # --- stopping --------------------------------------------------------------------
    async def close(self, *, remove: bool = True) -> None:
        """Stop; remove the table unless ``remove`` is false (its flows stay in conntrack)."""
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
            self._prober = None
        async with self._lock:
            self._closed = True
            self._drains.clear()
            if self._drainer is not None:
                self._drainer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._drainer
            if remove:
                with contextlib.suppress(NftError):
                    await asyncio.to_thread(self.nft.run, nft.script(nft.delete_table()))
                log.info("kernel data plane table removed")
            self.nft.close()


def _endpoint_stats(e: Endpoint, det: OutlierDetector | None, now: float) -> EndpointStats:
    name = endpoint_name(e)
    rec = det.records.get(name) if det is not None else None
    return EndpointStats(name=name, alloc_id=e.alloc_id, node=e.node,
                         state=det.state(name, now) if det is not None else "healthy",
                         active=0, total=0, connect_failures=rec.failures if rec else 0,
                         ejections=rec.ejections if rec else 0)


def _conntrack(*args: str) -> tuple[str, str]:
    """``conntrack`` with ``args`` (in a worker thread: no event-loop handle outlives it);
    its stdout and stderr."""
    tool = shutil.which("conntrack")
    if tool is None:
        raise FileNotFoundError("conntrack")
    done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=60,
                          check=False)
    return done.stdout, done.stderr


async def has_flows(protocol: str, port: int) -> bool:
    """Whether conntrack holds a DNATed flow to published ``port`` (True when unknown)."""
    try:
        out, _ = await asyncio.to_thread(_conntrack, "-C")
        if out.strip() == "0":
            return False
        _, err = await asyncio.to_thread(_conntrack, "-L", "-p", protocol, "--orig-port-dst",
                                         str(port), "--dst-nat")
    except (OSError, subprocess.SubprocessError):
        return True
    # "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown."
    return _count(err) != 0


def _count(text: str) -> int:
    for word in text.split(":")[-1].split():
        if word.isdigit():
            return int(word)
    return -1


async def flush_flows(protocol: str, port: int, t: nft.Target) -> int:
    """Delete the conntrack entries of flows to published ``port`` that were DNATed to
    ``t`` (a drained endpoint); how many were deleted (-1: ``conntrack`` is missing)."""
    try:
        _, err = await asyncio.to_thread(
            _conntrack, "-D", "-p", protocol, "--orig-port-dst", str(port), "--reply-src", t[0],
            "--reply-port-src", str(t[1]))
    except FileNotFoundError:
        log.warning("conntrack is missing: drained flows end on their own timeouts "
                    "(Debian: apt-get install conntrack)")
        return -1
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("conntrack failed; drained flows end on their own timeouts",
                    extra={"error": str(e)})
        return -1
    # "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been deleted."
    return max(0, _count(err))
