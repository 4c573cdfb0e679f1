"""orch-agent: the per-node daemon. Today it runs gossip membership; the runtime, the
load balancer and the controller stream plug in here as they are built.

    orch-agent --name agent-1 --bind 127.0.0.2:7946 --join 127.0.0.3:7946
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
from typing import Any

from agent.config import AgentConfig, parse_addr
from agent.gossip.config import GossipConfig
from agent.gossip.crypto import Keyring
from agent.gossip.transport import GossipNode
from orch import config as configfile
from orch import logs
from orch.errors import ConfigError

log = logging.getLogger("agent")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="orch-agent", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", metavar="FILE", help="TOML configuration file (flags override it)")
    ap.add_argument("--name", help="member name (default: host name)")
    ap.add_argument("--bind", metavar="ADDR:PORT", help="gossip address (default 0.0.0.0:7946)")
    ap.add_argument("--advertise", metavar="ADDR:PORT", help="address announced to others")
    ap.add_argument("--join", metavar="ADDR:PORT", action="append", default=None,
                    help="seed member (repeatable)")
    ap.add_argument("--key", action="append", default=None,
                    help="gossip key, base64 (repeatable; the first is primary)")
    ap.add_argument("--tag", action="append", default=None, metavar="KEY=VALUE",
                    help="node-state tag (repeatable)")
    ap.add_argument("--label", help="cluster label (packets with another label are dropped)")
    ap.add_argument("--profile", choices=("lan", "fast"),
                    help="gossip timings: lan (memberlist's defaults) or fast (tests)")
    ap.add_argument("--data-dir", help="state directory (default /var/lib/orch)")
    ap.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    ap.add_argument("--log-format", choices=("json", "human", "auto"))
    return ap.parse_args(argv)


def load_config(opts: argparse.Namespace) -> AgentConfig:
    values: dict[str, Any] = configfile.load_toml(opts.config) if opts.config else {}
    cfg = configfile.build(AgentConfig, values, where=opts.config or "")
    over: dict[str, Any] = {}
    for key in ("name", "bind", "advertise", "data_dir", "log_level", "log_format"):
        if getattr(opts, key) is not None:
            over[key] = getattr(opts, key)
    if opts.join is not None:
        over["join"] = opts.join
    if opts.key is not None:
        over["keys"] = opts.key
    if opts.tag is not None:
        tags = dict(cfg.tags)
        for t in opts.tag:
            k, sep, v = t.partition("=")
            if not sep or not k:
                raise ConfigError(f"expected KEY=VALUE, got {t!r}", where="--tag")
            tags[k] = v
        over["tags"] = tags
    gossip = cfg.gossip
    if opts.profile == "fast":
        gossip = GossipConfig.fast(label=gossip.label)
    if opts.label is not None:
        gossip = gossip.replace(label=opts.label)
    over["gossip"] = gossip
    return dataclasses.replace(cfg, **over)


async def run(cfg: AgentConfig) -> None:
    bind = parse_addr(cfg.bind, where="bind")
    advertise = parse_addr(cfg.advertise, where="advertise") if cfg.advertise else None
    keyring = Keyring(list(cfg.keys)) if cfg.keys else None
    node = GossipNode(cfg.gossip, name=cfg.name, bind=bind, advertise=advertise,
                      keyring=keyring, state={"role": "agent", **cfg.tags})
    await node.start()
    if cfg.join:
        node.join([parse_addr(s, where="join") for s in cfg.join])

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("agent running", extra={"node": cfg.name})
    await stop.wait()
    log.info("shutting down: leaving the cluster", extra={"node": cfg.name})
    await node.leave()


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    try:
        cfg = load_config(opts)
        logs.setup(cfg.log_level, cfg.log_format)
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency
            asyncio.run(run(cfg))
        else:
            uvloop.run(run(cfg))
    except ConfigError as e:
        print(f"orch-agent: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"orch-agent: cannot start: {e}", file=sys.stderr)
        return 1
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
