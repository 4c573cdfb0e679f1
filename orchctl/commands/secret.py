"""orchctl secret put | get | list | rm"""

from __future__ import annotations

import argparse
import sys

from orch.v1 import controller_pb2
from orchctl.client import FAILED, OK, USAGE, CliError
from orchctl.commands import Ctx
from orchctl.output import ago, out, table, to_json

MAX_READ = 64 * 1024 + 1
"""Bytes read from a file or stdin: one more than a secret may hold, so that the controller
says the value is too large instead of orchctl holding a file of any size."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sec = sub.add_parser("secret", help="secrets of a namespace: put, get, list, rm")
    verbs = sec.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = verbs.add_parser("put", help="store a new version of a secret (from a file or stdin, "
                         "never from the command line)")
    p.add_argument("name")
    p.add_argument("source", nargs="?", default=None, metavar="-",
                   help="'-' to read the value from standard input")
    p.add_argument("-f", "--file", help="read the value from this file")
    p.add_argument("--cas", type=int, default=0, metavar="VERSION",
                   help="only if the latest version is this one (0: any)")
    p.set_defaults(fn=put)
    p = verbs.add_parser("get", help="write a secret's value to standard output")
    p.add_argument("name")
    p.add_argument("--version", type=int, default=0, help="an older version (default: the latest)")
    p.set_defaults(fn=get)
    p = verbs.add_parser("list", help="the namespace's secrets: versions, sizes, users (no values)")
    p.add_argument("prefix", nargs="?", default="")
    p.set_defaults(fn=list_secrets)
    p = verbs.add_parser("rm", help="remove a secret and every version of it")
    p.add_argument("name")
    p.set_defaults(fn=remove)


def _value(args: argparse.Namespace) -> bytes:
    if args.file and args.source:
        raise CliError("give the value either with -f FILE or as '-' (stdin), not both", USAGE)
    if args.file:
        try:
            with open(args.file, "rb") as f:
                return f.read(MAX_READ)
        except OSError as e:
            raise CliError(f"cannot read {args.file}: {e.strerror}", FAILED) from None
    if args.source == "-":
        return sys.stdin.buffer.read(MAX_READ)
    if args.source is not None:
        raise CliError("a secret's value is never taken from the command line (it would show "
                       "in ps and in your shell's history): use -f FILE or '-' for stdin", USAGE)
    raise CliError("no value: use -f FILE, or '-' to read standard input", USAGE)


async def put(ctx: Ctx, args: argparse.Namespace) -> int:
    value = _value(args)
    info = await ctx.call(ctx.stub.PutSecret(controller_pb2.PutSecretRequest(
        namespace=ctx.namespace, name=args.name, value=value, cas=args.cas)))
    if ctx.json:
        out(to_json(info))
    else:
        users = f"; read by {', '.join(info.used_by)}" if info.used_by else ""
        out(f"==> secret {info.name!r} in namespace {info.namespace!r}: version {info.version} "
            f"({len(value)} bytes){users}")
    return OK


async def get(ctx: Ctx, args: argparse.Namespace) -> int:
    v = await ctx.call(ctx.stub.GetSecret(controller_pb2.GetSecretRequest(
        namespace=ctx.namespace, name=args.name, version=args.version)))
    if ctx.json:
        out(to_json(v))
    else:
        sys.stdout.buffer.write(v.value)
        sys.stdout.flush()
    return OK


async def list_secrets(ctx: Ctx, args: argparse.Namespace) -> int:
    r = await ctx.call(ctx.stub.ListSecrets(controller_pb2.ListSecretsRequest(
        namespace=ctx.namespace, prefix=args.prefix)))
    if ctx.json:
        out(to_json(list(r.secrets)))
        return OK
    out(table(("Name", "Version", "Size", "Versions kept", "Updated", "Used by"),
              [(s.name, s.version, s.versions[-1].size if s.versions else 0, len(s.versions),
                ago(s.versions[-1].create_time_ns if s.versions else 0),
                ", ".join(s.used_by)) for s in r.secrets]))
    return OK


async def remove(ctx: Ctx, args: argparse.Namespace) -> int:
    info = await ctx.call(ctx.stub.DeleteSecret(controller_pb2.DeleteSecretRequest(
        namespace=ctx.namespace, name=args.name)))
    out(to_json(info) if ctx.json else f"==> secret {info.name!r} removed "
        f"({len(info.versions)} versions)")
    return OK



