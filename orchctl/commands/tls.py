"""orchctl tls ca create | tls cert create (no controller needed)"""

from __future__ import annotations

import argparse
from pathlib import Path

from orch import pki
from orch.errors import ConfigError
from orchctl.client import OK, CliError
from orchctl.output import out


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("tls", help="make the cluster's CA and certificates (mTLS)")
    what = p.add_subparsers(dest="what", required=True, metavar="ca|cert")
    ca = what.add_parser("ca", help="the cluster CA").add_subparsers(dest="verb", required=True)
    c = ca.add_parser("create", help="a new CA: ca.pem and ca-key.pem")
    c.add_argument("--dir", default=".", help="where to write them (default: here)")
    c.add_argument("--days", type=int, default=3650)
    c.set_defaults(fn=create_ca, local=True)
    cert = what.add_parser("cert", help="certificates").add_subparsers(dest="verb", required=True)
    c = cert.add_parser("create", help="a certificate with a role, signed by the CA")
    c.add_argument("--role", required=True, choices=pki.ROLES)
    c.add_argument("--name", help="its common name and file name (default: the role)")
    c.add_argument("--ip", action="append", default=[], help="an address it serves on")
    c.add_argument("--dns", action="append", default=[], help="a name it serves on")
    c.add_argument("--node-id", default="",
                   help="role agent: the node it binds (the agent's data_dir/node-id); without "
                        "one, the certificate binds the agent's name (its --name)")
    c.add_argument("--ca-dir", default=".", help="where the CA is (default: here)")
    c.add_argument("--dir", default=".", help="where to write it (default: here)")
    c.add_argument("--days", type=int, default=825)
    c.set_defaults(fn=create_cert, local=True)


async def create_ca(ctx: object, args: argparse.Namespace) -> int:
    try:
        cert, key = pki.create_ca(Path(args.dir), days=args.days)
    except ConfigError as e:
        raise CliError(str(e)) from None
    out(f"==> CA created: {cert} (certificate), {key} (private key: keep it safe)")
    return OK


async def create_cert(ctx: object, args: argparse.Namespace) -> int:
    try:
        cert, key = pki.create_cert(Path(args.ca_dir), Path(args.dir), role=args.role,
                                    name=args.name or args.role, ips=args.ip, dns=args.dns,
                                    node_id=args.node_id, days=args.days)
    except ConfigError as e:
        raise CliError(str(e)) from None
    out(f"==> {args.role} certificate created: {cert}, {key}")
    return OK
