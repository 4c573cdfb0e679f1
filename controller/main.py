"""orch-controller: the controller daemon (state, scheduling, the gRPC API).

    orch-controller --name c1 --bind 127.0.0.1:7946 --rpc-addr 127.0.0.1:4647 --data-dir /tmp/c1
"""

from __future__ import annotations

import argparse
import sys

from controller.config import ControllerConfig
from controller.server import Controller
from orch import daemon, malloc
from orch.errors import ConfigError
from orch.net import CONTROLLER_HTTP_PORT, CONTROLLER_RPC_PORT

FLAGS = ("rpc_addr", "rpc_advertise", "http_addr", "http_advertise", "node_grace", "acl",
         "rate_limit", "store", "etcd_endpoints", "etcd_prefix", "leader_ttl", "bootstrap",
         "restore_snapshot")
"""Flags that set the configuration field of the same name."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="orch-controller", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    daemon.common_flags(ap)
    ap.add_argument("--rpc-addr", metavar="ADDR:PORT",
                    help=f"gRPC address for orchctl and agents (default 0.0.0.0:{CONTROLLER_RPC_PORT})")
    ap.add_argument("--rpc-advertise", metavar="ADDR:PORT", help="gRPC address given to agents")
    ap.add_argument("--http-addr", metavar="ADDR:PORT",
                    help=f"HTTP API and web UI (default 127.0.0.1:{CONTROLLER_HTTP_PORT}; "
                         "empty: not served)")
    ap.add_argument("--http-advertise", metavar="ADDR:PORT",
                    help="HTTP address other controllers redirect writes to")
    ap.add_argument("--node-grace", type=float,
                    help="seconds an agent may be gone before its node is down (default 10)")
    ap.add_argument("--store", choices=("sqlite", "etcd"),
                    help="where the state lives (default sqlite; etcd: several controllers)")
    ap.add_argument("--etcd", dest="etcd_endpoints", action="append", default=None,
                    metavar="HOST:PORT", help="an etcd member (repeatable; --store etcd)")
    ap.add_argument("--etcd-prefix", help="key prefix of this cluster in etcd (default /orch)")
    ap.add_argument("--leader-ttl", type=int,
                    help="seconds a crashed leader holds its lease (default 5)")
    ap.add_argument("--bootstrap", action="store_const", const=True, default=None,
                    help="make a new cluster's trust on the first start: a CA, certificates, "
                         "the first gossip key, join tokens, the management token")
    ap.add_argument("--acl", action="store_const", const=True, default=None,
                    help="require access tokens on the operator API (orchctl acl bootstrap)")
    ap.add_argument("--rate-limit", type=float,
                    help="operator API calls a second per client (default 200; 0: none)")
    ap.add_argument("--restore-snapshot", metavar="FILE",
                    help="restore the store from this snapshot before serving (a store that "
                         "was lost: no agent follows the empty one meanwhile)")
    return ap.parse_args(argv)


def load_config(opts: argparse.Namespace) -> ControllerConfig:
    return daemon.load(ControllerConfig, opts, extra=FLAGS)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    try:
        cfg = load_config(opts)
    except ConfigError as e:
        print(f"orch-controller: {e}", file=sys.stderr)
        return 2
    malloc.pin_mmap_threshold()  # the heap behaves in month six as in hour one
    return daemon.run("orch-controller", lambda: Controller(cfg), reload=lambda: load_config(opts),
                      log_level=cfg.log_level, log_format=cfg.log_format)


if __name__ == "__main__":
    raise SystemExit(main())
