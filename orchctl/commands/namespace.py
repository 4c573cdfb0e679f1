"""orchctl namespace apply | list | rm"""

from __future__ import annotations

import argparse

from orch.v1 import controller_pb2
from orchctl.client import OK
from orchctl.commands import Ctx
from orchctl.output import ago, block, out, table, to_json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ns = sub.add_parser("namespace", help="namespaces and their quotas: apply, list, rm")
    verbs = ns.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = verbs.add_parser("apply", help="create a namespace or change it (what is not given "
                         "stays as it was)")
    p.add_argument("name")
    p.add_argument("--description", help="what the namespace is for")
    p.add_argument("--cpu", type=int, metavar="MILLICORES",
                   help="quota: CPU its live allocations may hold together (0: unlimited)")
    p.add_argument("--memory", type=int, metavar="MB", help="quota: memory (0: unlimited)")
    p.add_argument("--allocations", type=int, metavar="N",
                   help="quota: live allocations (0: unlimited)")
    p.set_defaults(fn=apply)
    p = verbs.add_parser("list", help="every namespace, with its quota and what it uses")
    p.set_defaults(fn=list_namespaces)
    p = verbs.add_parser("rm", help="remove an empty namespace (no jobs, no secrets)")
    p.add_argument("name")
    p.set_defaults(fn=remove)


def _of(used: int, limit: int, unit: str = "") -> str:
    return f"{used}{unit}/{limit}{unit}" if limit else f"{used}{unit}"


def _row(n: controller_pb2.Namespace) -> tuple[object, ...]:
    q, u = n.quota, n.used
    return (n.name, n.jobs, _of(u.allocations, q.allocations),
            _of(u.cpu_millicores, q.cpu_millicores, "m"), _of(u.memory_mb, q.memory_mb, "MB"),
            n.description)


HEAD = ("Name", "Jobs", "Allocations", "CPU", "Memory", "Description")


async def apply(ctx: Ctx, args: argparse.Namespace) -> int:
    req = controller_pb2.ApplyNamespaceRequest(name=args.name)
    if args.description is not None:
        req.description = args.description
    for field in ("cpu", "memory", "allocations"):
        value = getattr(args, field)
        if value is not None:
            setattr(req, {"cpu": "cpu_millicores", "memory": "memory_mb"}.get(field, field), value)
    n = await ctx.call(ctx.stub.ApplyNamespace(req))
    if ctx.json:
        out(to_json(n))
        return OK
    out(f"==> namespace {n.name!r} applied")
    out(block([("Description", n.description), ("Jobs", n.jobs),
               ("Allocations", _of(n.used.allocations, n.quota.allocations)),
               ("CPU", _of(n.used.cpu_millicores, n.quota.cpu_millicores, " millicores")),
               ("Memory", _of(n.used.memory_mb, n.quota.memory_mb, " MB")),
               ("Created", ago(n.create_time_ns))]))
    return OK


async def list_namespaces(ctx: Ctx, args: argparse.Namespace) -> int:
    r = await ctx.call(ctx.stub.ListNamespaces(controller_pb2.ListNamespacesRequest()))
    if ctx.json:
        out(to_json(list(r.namespaces)))
        return OK
    out(table(HEAD, [_row(n) for n in r.namespaces]))
    return OK


async def remove(ctx: Ctx, args: argparse.Namespace) -> int:
    n = await ctx.call(ctx.stub.DeleteNamespace(controller_pb2.DeleteNamespaceRequest(
        name=args.name)))
    out(to_json(n) if ctx.json else f"==> namespace {n.name!r} removed")
    return OK
