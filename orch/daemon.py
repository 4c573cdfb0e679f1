"""What both daemons share: flags that override a TOML file, logging, uvloop, signals."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from agent.gossip.config import GossipConfig
from orch import config as configfile
from orch import logs
from orch.errors import ConfigError
from orch.tls import TlsConfig

C = TypeVar("C")


def common_flags(ap: argparse.ArgumentParser) -> None:
    """The flags both daemons take (Nomad-style: flags override the file)."""
    ap.add_argument("--config", metavar="FILE", help="TOML configuration file (flags override it)")
    ap.add_argument("--name", help="member name (default: host name)")
    ap.add_argument("--bind", metavar="ADDR:PORT", help="gossip address (default 0.0.0.0:7946)")
    ap.add_argument("--advertise", metavar="ADDR:PORT", help="gossip address announced to others")
    ap.add_argument("--join", metavar="ADDR:PORT", action="append", default=None,
                    help="gossip seed (repeatable)")
    ap.add_argument("--key", action="append", default=None,
                    help="gossip key, base64 (repeatable; the first is primary)")
    ap.add_argument("--label", help="cluster label (packets with another label are dropped)")
    ap.add_argument("--profile", choices=("lan", "fast"),
                    help="gossip timings: lan (memberlist's defaults) or fast (tests)")
    ap.add_argument("--data-dir", help="state directory (default /var/lib/orch)")
    ap.add_argument("--metrics-addr", metavar="ADDR:PORT",
                    help="where /metrics is served (empty: not served)")
    ap.add_argument("--tls-ca", metavar="FILE", help="mTLS: the cluster CA certificate")
    ap.add_argument("--tls-cert", metavar="FILE", help="mTLS: this daemon's certificate")
    ap.add_argument("--tls-key", metavar="FILE", help="mTLS: this daemon's private key")
    ap.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    ap.add_argument("--log-format", choices=("json", "human", "auto"))


def load(cls: type[C], opts: argparse.Namespace, extra: tuple[str, ...] = ()) -> C:
    """``cls`` from ``--config`` with the common flags (and ``extra`` ones) applied."""
    values: dict[str, Any] = configfile.load_toml(opts.config) if opts.config else {}
    cfg = configfile.build(cls, values, where=opts.config or "")
    over: dict[str, Any] = {}
    for key in ("name", "bind", "advertise", "data_dir", "metrics_addr", "log_level", "log_format",
                *extra):
        if getattr(opts, key, None) is not None:
            over[key] = getattr(opts, key)
    if opts.join is not None:
        over["join"] = opts.join
    if opts.key is not None:
        over["keys"] = opts.key
    if opts.tls_ca or opts.tls_cert or opts.tls_key:
        tls: TlsConfig = cfg.tls  # type: ignore[attr-defined]
        over["tls"] = dataclasses.replace(tls, ca_file=opts.tls_ca or tls.ca_file,
                                          cert_file=opts.tls_cert or tls.cert_file,
                                          key_file=opts.tls_key or tls.key_file)
    gossip: GossipConfig = cfg.gossip  # type: ignore[attr-defined]
    if opts.profile == "fast":
        gossip = GossipConfig.fast(label=gossip.label)
    if opts.label is not None:
        gossip = gossip.replace(label=opts.label)
    over["gossip"] = gossip
    return dataclasses.replace(cfg, **over)  # type: ignore[type-var]


def run(prog: str, main: Callable[[asyncio.Event], Awaitable[None]], *, log_level: str,
        log_format: str) -> int:
    """Run ``main(stop)`` under uvloop until SIGTERM/SIGINT sets ``stop``; map errors to exit
    codes (2: configuration, 1: cannot start)."""
    logs.setup(log_level, log_format)

    async def wrapped() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    try:
        import uvloop

        uvloop.run(wrapped())
    except ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print(f"{prog}: cannot start: {e}", file=sys.stderr)
        return 1
    return 0
