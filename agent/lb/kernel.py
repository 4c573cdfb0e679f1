"""The kernel data plane: published services forwarded by nftables, decided in user space.

``KernelBalancer`` has the proxy's shape (``update`` with the whole table, ``stats``,
``close``) and keeps the table ``ip orch`` equal to what it was given: the first update
replaces whatever table a previous agent left (one transaction: no duplicate, no moment
without rules), each later one applies only the difference (one transaction per update).
The endpoints given are the usable ones (health from gossip, ``prefer_local`` applied by the
caller); an endpoint that leaves takes no new flow at once, and its established flows keep
their NAT binding in conntrack until ``drain_grace`` ends, when they are deleted (unless it
came back). ``close`` removes the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Mapping

from agent.lb import nft
from agent.lb.config import LbConfig
from agent.lb.libnft import Nft, NftError
from agent.lb.model import Endpoint, ServiceSpec
from agent.lb.pool import endpoint_name
from agent.lb.stats import EndpointStats, Histogram, ServiceStats

log = logging.getLogger("lb")

MAX_DRAINS = 100_000
"""Endpoints waiting for their conntrack entries to be deleted; beyond it the oldest wait is
dropped (its flows then end on conntrack's own timeouts)."""


def kernel_capable(spec: ServiceSpec) -> str:
    """Why ``spec`` needs the proxy ('' when the kernel can forward it)."""
    if spec.proxy_protocol:
        return "proxy_protocol"
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
        self._drains: dict[tuple[str, nft.Target], asyncio.TimerHandle] = {}
        self._closed = False
        self.transactions = 0
        self.update_seconds: list[float] = []
        """Seconds of the last updates' transactions (at most 1,000 kept)."""
        self._stats_cache: tuple[float, dict[str, tuple[int, int]]] = (-1.0, {})

    # --- the table -------------------------------------------------------------------
    def _kernel_service(self, key: str, spec: ServiceSpec,
                        old: nft.KernelService | None) -> nft.KernelService:
        eps = [(nft.target(e.host, e.port), e) for e in spec.endpoints]
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
            old = self.services
            new: dict[str, nft.KernelService] = {}
            for key, spec in services.items():
                if not spec.endpoints or kernel_capable(spec):
                    continue
                new[key] = self._kernel_service(key, spec, (old or {}).get(key))
            cmds = nft.plan(old, new, bind=self.bind_host)
            if cmds:
                began = time.perf_counter()
                try:
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

    def _schedule_drains(self, old: Mapping[str, nft.KernelService],
                         new: Mapping[str, nft.KernelService]) -> None:
        loop = asyncio.get_running_loop()
        for key, svc in old.items():
            now = new.get(key)
            keep = now.targets() if now is not None and now.port == svc.port else set()
            for t in svc.targets() - keep:
                if (key, t) in self._drains:
                    continue
                if len(self._drains) >= MAX_DRAINS:
                    first = next(iter(self._drains))
                    self._drains.pop(first).cancel()
                self._drains[(key, t)] = loop.call_later(
                    self.cfg.drain_grace, self._end_drain, key, svc.protocol, svc.port, t)
        for key, svc in new.items():  # back before its drain ended: its flows stay
            for t in svc.targets():
                h = self._drains.pop((key, t), None)
                if h is not None:
                    h.cancel()

    def _end_drain(self, key: str, protocol: str, port: int, t: nft.Target) -> None:
        self._drains.pop((key, t), None)
        asyncio.get_running_loop().create_task(flush_flows(protocol, port, t))

    # --- observability ---------------------------------------------------------------
    def counters(self) -> dict[str, tuple[int, int]]:
        """Packets and bytes of every named counter of the table (read at most once a
        second)."""
        now = asyncio.get_running_loop().time()
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

    def stats(self) -> dict[str, ServiceStats]:
        counters = self.counters()
        out: dict[str, ServiceStats] = {}
        for key, spec in self.specs.items():
            svc = (self.services or {}).get(key)
            if svc is None:
                continue
            sid = svc.sid
            details = tuple(_endpoint_stats(e) for e in spec.endpoints)
            out[key] = ServiceStats(
                name=spec.name, namespace=spec.namespace, job=spec.job, group=spec.group,
                protocol=spec.protocol, policy=spec.policy, port=spec.published_port,
                listening=True, bind_error=None, active=0,
                total=counters.get(f"{sid}_flows", (0, 0))[0], rejected=0, failed=0,
                bytes_in=counters.get(f"{sid}_up", (0, 0))[1],
                bytes_out=counters.get(f"{sid}_down", (0, 0))[1], connect_failures=0,
                retries=0, ejections=0,
                endpoints={"healthy": len(details), "probing": 0, "ejected": 0,
                           "draining": 0},
                endpoint_details=details, connect_latency=Histogram(), mode="kernel",
                packets_in=counters.get(f"{sid}_up", (0, 0))[0],
                packets_out=counters.get(f"{sid}_down", (0, 0))[0])
        return out

    # --- stopping --------------------------------------------------------------------
    async def close(self, *, remove: bool = True) -> None:
        """Stop; remove the table unless ``remove`` is false (its flows stay in conntrack)."""
        async with self._lock:
            self._closed = True
            for h in self._drains.values():
                h.cancel()
            self._drains.clear()
            if remove:
                with contextlib.suppress(NftError):
                    await asyncio.to_thread(self.nft.run, nft.script(nft.delete_table()))
                log.info("kernel data plane table removed")
            self.nft.close()


def _endpoint_stats(e: Endpoint) -> EndpointStats:
    return EndpointStats(name=endpoint_name(e), alloc_id=e.alloc_id, node=e.node,
                         state="healthy", active=0, total=0, connect_failures=0, ejections=0)


async def flush_flows(protocol: str, port: int, t: nft.Target) -> int:
    """Delete the conntrack entries of flows to published ``port`` that were DNATed to
    ``t`` (a drained endpoint); how many were deleted (-1: ``conntrack`` is missing)."""
    tool = shutil.which("conntrack")
    if tool is None:
        log.warning("conntrack is missing: drained flows end on their own timeouts "
                    "(Debian: apt-get install conntrack)")
        return -1
    proc = await asyncio.create_subprocess_exec(
        tool, "-D", "-p", protocol, "--orig-port-dst", str(port), "--reply-src", t[0],
        "--reply-port-src", str(t[1]), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    text = err.decode(errors="replace")
    # "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been deleted."
    for word in text.split(":")[-1].split():
        if word.isdigit():
            return int(word)
    return 0
