"""orch-agent: the per-node daemon (gossip, the task runtime, the controller stream).

    orch-agent --name a1 --bind 127.0.0.2:7946 --join 127.0.0.1:7946 --data-dir /tmp/a1
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from agent.config import AgentConfig
from agent.server import Agent
from orch import daemon
from orch.errors import ConfigError
from orch.net import AGENT_RPC_PORT


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="orch-agent", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    daemon.common_flags(ap)
    ap.add_argument("--rpc-addr", metavar="ADDR:PORT",
                    help=f"this agent's gRPC address (logs, status) (default 0.0.0.0:{AGENT_RPC_PORT})")
    ap.add_argument("--rpc-advertise", metavar="ADDR:PORT", help="gRPC address given to others")
    ap.add_argument("--driver", choices=("docker", "process"), action="append", default=None,
                    help="task driver to offer (repeatable; default: docker and process)")
    ap.add_argument("--lb-bind", metavar="ADDR",
                    help="address the routing mesh's published ports listen on (default 0.0.0.0)")
    ap.add_argument("--task-user", metavar="USER",
                    help="user process tasks run as when their job names none (default: "
                         "orch-task when it exists, else nobody)")
    ap.add_argument("--allow-root-tasks", action="store_const", const=True, default=None,
                    help="let process tasks run as root when their job asks")
    ap.add_argument("--datacenter")
    ap.add_argument("--node-class")
    ap.add_argument("--tag", action="append", default=None, metavar="KEY=VALUE",
                    help="gossip node-state tag (repeatable)")
    ap.add_argument("--meta", action="append", default=None, metavar="KEY=VALUE",
                    help="node label for constraints, ${meta.KEY} (repeatable)")
    return ap.parse_args(argv)


def _pairs(items: list[str], where: str) -> dict[str, str]:
    out = {}
    for t in items:
        k, sep, v = t.partition("=")
        if not sep or not k:
            raise ConfigError(f"expected KEY=VALUE, got {t!r}", where=where)
        out[k] = v
    return out


def load_config(opts: argparse.Namespace) -> AgentConfig:
    cfg = daemon.load(AgentConfig, opts, extra=("rpc_addr", "rpc_advertise", "lb_bind", "datacenter",
                                                "node_class", "task_user", "allow_root_tasks"))
    over: dict[str, Any] = {}
    if opts.driver is not None:
        over["drivers"] = opts.driver
    if opts.tag is not None:
        over["tags"] = {**cfg.tags, **_pairs(opts.tag, "--tag")}
    if opts.meta is not None:
        over["meta"] = {**cfg.meta, **_pairs(opts.meta, "--meta")}
    return dataclasses.replace(cfg, **over)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    try:
        cfg = load_config(opts)
    except ConfigError as e:
        print(f"orch-agent: {e}", file=sys.stderr)
        return 2
    return daemon.run("orch-agent", lambda: Agent(cfg), reload=lambda: load_config(opts),
                      log_level=cfg.log_level, log_format=cfg.log_format)


if __name__ == "__main__":
    raise SystemExit(main())
