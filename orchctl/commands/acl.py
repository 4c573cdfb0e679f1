"""orchctl acl bootstrap | token create | token list | token revoke | token self"""

from __future__ import annotations

import argparse

from orch.v1 import controller_pb2
from orchctl.client import OK
from orchctl.commands import Ctx
from orchctl.output import ago, block, out, short, table, to_json

POLICY_HELP = ("management | read | node | operator | namespace:<ns|*>:<capabilities: read, "
               "submit, driver-<name>, privileged, host-network, alloc-exec> | submit | "
               "submit:ns=<namespace> | submit:prefix=<job prefix> (repeat for several)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    acl = sub.add_parser("acl", help="access tokens: bootstrap, create, list, revoke")
    verbs = acl.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = verbs.add_parser("bootstrap", help="make the first management token (once per cluster)")
    p.set_defaults(fn=bootstrap)
    token = verbs.add_parser("token", help="create, list, revoke tokens; show your own")
    tverbs = token.add_subparsers(dest="tverb", required=True, metavar="VERB")
    p = tverbs.add_parser("create", help="a new token; its secret is shown once")
    p.add_argument("--name", required=True, help="what the token is for (shown in logs)")
    p.add_argument("--policy", action="append", required=True, metavar="POLICY",
                   help=POLICY_HELP)
    p.set_defaults(fn=create)
    p = tverbs.add_parser("list", help="every token (accessors, never secrets)")
    p.set_defaults(fn=list_tokens)
    p = tverbs.add_parser("revoke", help="revoke a token at once")
    p.add_argument("accessor", help="its accessor, or a unique prefix of it")
    p.set_defaults(fn=revoke)
    p = tverbs.add_parser("self", help="the token you are using")
    p.set_defaults(fn=self_token)


def _show(t: controller_pb2.AclToken, secret: str = "") -> str:
    rows = [("Accessor", t.accessor)] + ([("Secret", secret)] if secret else []) + [
        ("Name", t.name), ("Policies", ", ".join(t.policies)),
        ("Created", ago(t.create_time_ns)), ("Revoked", t.revoked)]
    return block(rows)


async def bootstrap(ctx: Ctx, args: argparse.Namespace) -> int:
    r = await ctx.call(ctx.stub.BootstrapAcl(controller_pb2.BootstrapAclRequest()))
    if ctx.json:
        out(to_json(r))
        return OK
    out(_show(r.token, r.secret))
    out("\nKeep the secret: it is shown only now. Use it with --token or ORCH_TOKEN.")
    return OK


async def create(ctx: Ctx, args: argparse.Namespace) -> int:
    r = await ctx.call(ctx.stub.CreateToken(
        controller_pb2.CreateTokenRequest(name=args.name, policies=args.policy)))
    out(to_json(r) if ctx.json else _show(r.token, r.secret))
    return OK


async def list_tokens(ctx: Ctx, args: argparse.Namespace) -> int:
    r = await ctx.call(ctx.stub.ListTokens(controller_pb2.ListTokensRequest()))
    if ctx.json:
        out(to_json(list(r.tokens)))
        return OK
    out(table(("Accessor", "Name", "Policies", "Created", "Revoked"),
              [(short(t.accessor), t.name, ", ".join(t.policies), ago(t.create_time_ns), t.revoked)
               for t in r.tokens]))
    return OK


async def revoke(ctx: Ctx, args: argparse.Namespace) -> int:
    t = await ctx.call(ctx.stub.RevokeToken(controller_pb2.RevokeTokenRequest(
        accessor=args.accessor)))
    out(to_json(t) if ctx.json else f"revoked token {short(t.accessor)} ({t.name})")
    return OK


async def self_token(ctx: Ctx, args: argparse.Namespace) -> int:
    t = await ctx.call(ctx.stub.SelfToken(controller_pb2.SelfTokenRequest()))
    out(to_json(t) if ctx.json else _show(t))
    return OK
