"""orchctl: drive an orch cluster through its controller.

    orchctl job run web.yaml            orchctl alloc logs 3f2a -f
    orchctl job status web              orchctl node drain agent-2 --deadline 300
    orchctl members                     orchctl events -f

The controller's address comes from --address or ORCH_ADDR, else from orchctl.toml
(ORCH_CONFIG, default ~/.config/orch/orchctl.toml: address, tls_ca, tls_cert, tls_key,
token_file, namespace; a cluster's bootstrap writes one for its operator), else
127.0.0.1:4647. Commands act in the namespace --namespace or ORCH_NAMESPACE names (else
"default"); listings take -A for every namespace. -o json prints what the API returned,
for scripts.

Exit codes: 0 ok, 1 failed, 2 usage, 3 a job could not be fully placed,
4 `job plan` would make changes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from orch.errors import ConfigError
from orch.vocab import DEFAULT_NAMESPACE
from orchctl import client
from orchctl.commands import (
    Ctx,
    acl,
    alloc,
    cluster,
    event,
    job,
    keyring,
    namespace,
    node,
    operator,
    secret,
    tls,
    volume,
)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="orchctl", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--address", "-a", help="controller address host:port (env ORCH_ADDR)")
    ap.add_argument("-o", "--output", choices=("table", "json"), default="table")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    ap.add_argument("--tls-ca", metavar="FILE", help="mTLS: the cluster CA (env ORCH_TLS_CA)")
    ap.add_argument("--tls-cert", metavar="FILE",
                    help="mTLS: a certificate with role cli (env ORCH_TLS_CERT)")
    ap.add_argument("--tls-key", metavar="FILE", help="mTLS: its key (env ORCH_TLS_KEY)")
    ap.add_argument("--token-file", metavar="FILE", help="the access token, from a file")
    ap.add_argument("--token", metavar="SECRET",
                    help="access token (visible in ps: prefer ORCH_TOKEN or --token-file)")
    ap.add_argument("-n", "--namespace", metavar="NS",
                    help="the namespace to act in (env ORCH_NAMESPACE; default: default)")
    sub = ap.add_subparsers(dest="noun", required=True, metavar="COMMAND")
    for module in (job, alloc, node, namespace, secret, volume, cluster, acl, keyring, event,
                   tls, operator):
        module.register(sub)
    return ap


async def _run(args: argparse.Namespace) -> int:
    if getattr(args, "local", False):  # a command that needs no controller
        code: int = await args.fn(None, args)
        return code
    file = client.settings()
    session = client.Session(client.address(args.address, file), args.timeout,
                             client.tls_from(args.tls_ca, args.tls_cert, args.tls_key, file),
                             client.token(args.token, args.token_file, file))
    try:
        ns = client.namespace(args.namespace, file)
        ctx = Ctx(session=session, json=args.output == "json", timeout=args.timeout,
                  namespace=ns or DEFAULT_NAMESPACE, namespace_given=bool(ns))
        result: int = await args.fn(ctx, args)
        return result
    finally:
        await session.close()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except client.CliError as e:
        print(f"orchctl: {e}", file=sys.stderr)
        return e.code
    except ConfigError as e:
        print(f"orchctl: {e}", file=sys.stderr)
        return client.USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
