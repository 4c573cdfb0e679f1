"""The two data planes of the routing mesh, fed from one endpoint table.

``DataPlane`` takes the mesh's whole table (``update``) and gives each service to the kernel
(nftables, ``kernel.KernelBalancer``) when the agent runs in kernel mode and the service
asks nothing only the proxy does (PROXY protocol, least_conn, p2c, IPv6 endpoints), and to
the user-space proxy (``balancer.LoadBalancer``) otherwise. The kernel is given the usable
endpoints: those of this node first while there is one (``prefer_local``).

Kernel mode needs libnftables, CAP_NET_ADMIN and a network namespace of the agent's own:
``lb_bind`` on a loopback address means several agents may share one namespace (in-process
clusters, the demo), so they keep the proxy. Where kernel mode cannot run, the agent says
why (``reason``, a node attribute and its log) and runs the proxy.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping

from agent.lb.balancer import LoadBalancer
from agent.lb.config import LbConfig
from agent.lb.kernel import KernelBalancer, kernel_capable
from agent.lb.libnft import unavailable
from agent.lb.model import ServiceSpec
from agent.lb.stats import ServiceStats

log = logging.getLogger("lb")


def kernel_unavailable(cfg: LbConfig, bind_host: str) -> str:
    """Why this agent cannot run kernel mode ('' when it can)."""
    if cfg.mode != "kernel":
        return "lb.mode is proxy"
    try:
        if ipaddress.ip_address(bind_host).is_loopback:
            return (f"lb_bind {bind_host} is a loopback address (agents may share this "
                    "network namespace)")
        if ":" in bind_host:
            return f"lb_bind {bind_host} is an IPv6 address (the kernel data plane is IPv4)"
    except ValueError:
        return f"lb_bind {bind_host!r} is not an address"
    return unavailable()


class DataPlane:
    """What the mesh drives: the proxy, and the kernel where it may."""

    def __init__(self, cfg: LbConfig, *, bind_host: str = "0.0.0.0",
                 proxy: LoadBalancer | None = None, kernel: KernelBalancer | None = None,
                 probe: bool = True) -> None:
        self.cfg = cfg
        self.proxy = proxy or LoadBalancer(cfg, bind_host=bind_host)
        self.reason = ""
        if kernel is None and probe:
            self.reason = kernel_unavailable(cfg, bind_host)
            if not self.reason:
                kernel = KernelBalancer(cfg, bind_host=bind_host)
        self.kernel = kernel
        if self.kernel is None and cfg.mode == "kernel":
            log.warning("kernel data plane unavailable: the user-space proxy forwards every "
                        "service", extra={"reason": self.reason})
        self.modes: dict[str, str] = {}
        """Each service's data plane (kernel or proxy), by service key."""

    @property
    def mode(self) -> str:
        return "kernel" if self.kernel is not None else "proxy"

    def attributes(self) -> dict[str, str]:
        """The node attributes that say which data plane runs here, and why not the kernel."""
        attrs = {"lb.mode": self.mode}
        if self.kernel is None and self.reason:
            attrs["lb.kernel_unavailable"] = self.reason
        return attrs

    def split(self, services: Mapping[str, ServiceSpec]
              ) -> tuple[dict[str, ServiceSpec], dict[str, ServiceSpec]]:
        """(kernel, proxy) shares of the table."""
        if self.kernel is None:
            return {}, dict(services)
        kern: dict[str, ServiceSpec] = {}
        prox: dict[str, ServiceSpec] = {}
        for key, spec in services.items():
            if kernel_capable(spec):
                prox[key] = spec
                continue
            eps = spec.endpoints
            if self.cfg.prefer_local and any(e.local for e in eps):
                eps = tuple(e for e in eps if e.local)
            kern[key] = ServiceSpec(
                name=spec.name, namespace=spec.namespace, job=spec.job, group=spec.group,
                published_port=spec.published_port, protocol=spec.protocol,
                policy=spec.policy, proxy_protocol=spec.proxy_protocol, endpoints=eps)
        return kern, prox

    async def update(self, services: Mapping[str, ServiceSpec]) -> None:
        kern, prox = self.split(services)
        # The kernel first: a service that moves to the proxy leaves the kernel's table
        # before the proxy binds its port.
        try:
            if self.kernel is not None:
                await self.kernel.update(kern)  # refused: logged, rebuilt at the next update
        finally:
            await self.proxy.update(prox)
        self.modes = {**dict.fromkeys(prox, "proxy"), **dict.fromkeys(kern, "kernel")}

    def stats(self) -> dict[str, ServiceStats]:
        out = self.proxy.stats()
        if self.kernel is not None:
            out.update(self.kernel.stats())
        return out

    async def close(self) -> None:
        await self.proxy.close()
        if self.kernel is not None:
            await self.kernel.close()
