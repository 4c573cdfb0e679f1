"""orchctl volume list"""

from __future__ import annotations

import argparse

from orch.v1 import controller_pb2
from orchctl.client import OK
from orchctl.commands import Ctx
from orchctl.output import out, short, table, to_json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    volume = sub.add_parser("volume", help="the nodes' host volumes and the Docker volumes "
                                           "allocations mount")
    verbs = volume.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = verbs.add_parser("list", help="every host volume and mounted Docker volume, by node")
    p.add_argument("--node", default="", help="one node (id, unique id prefix or name)")
    p.add_argument("--job", default="", help="only the volumes this job's allocations mount")
    p.set_defaults(fn=list_volumes)


async def list_volumes(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = await ctx.call(ctx.stub.ListVolumes(controller_pb2.ListVolumesRequest(
        node=args.node, job=args.job, namespace=ctx.namespace if ctx.namespace_given else "")))
    if ctx.json:
        out(to_json(list(resp.volumes)))
        return OK
    out(table(("Node", "Name", "Type", "Path", "Access", "Allocations"),
              [(v.node or short(v.node_id), v.name, v.type, v.path,
                ("read-only" if v.read_only else "read-write") if v.type == "host" else "",
                ",".join(short(a) for a in v.allocations)) for v in resp.volumes]))
    return OK
