"""orchctl node list | status | drain | eligibility | rm | purge"""

from __future__ import annotations

import argparse

from orch.gossip.crypto import new_key as new_gossip_key
from orch.v1 import controller_pb2, node_pb2
from orch.vocab import CLIENT_STATUS, DESIRED_STATUS, NODE_STATUS
from orchctl.client import FAILED, OK
from orchctl.commands import Ctx
from orchctl.output import ago, block, out, short, table, to_json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    node = sub.add_parser("node", help="list nodes, drain them, set their eligibility")
    verbs = node.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = verbs.add_parser("list", help="every node")
    p.set_defaults(fn=list_nodes)
    p = verbs.add_parser("status", help="one node with its allocations")
    p.add_argument("id", help="id, unique id prefix or name")
    p.set_defaults(fn=status)
    p = verbs.add_parser("drain", help="move allocations off a node")
    p.add_argument("id")
    p.add_argument("--disable", action="store_true", help="cancel a drain")
    p.add_argument("--deadline", type=float, default=0.0, metavar="SECONDS",
                   help="stop what is left after this long (0: no deadline)")
    p.add_argument("--ignore-system", action="store_true", help="leave system jobs running")
    p.set_defaults(fn=drain)
    p = verbs.add_parser("rm", help="remove a node for good: its certificate is refused from "
                                    "now on, what ran there moves, the gossip key is rotated")
    p.add_argument("id")
    p.add_argument("--keep-gossip-key", action="store_true",
                   help="do not rotate the gossip key (the removed node keeps hearing gossip)")
    p.set_defaults(fn=remove)
    p = verbs.add_parser("purge", help="forget a down node now (as garbage collection does "
                                       "after node_gc_threshold); unlike rm, its agent may "
                                       "register again")
    p.add_argument("id")
    p.set_defaults(fn=purge)
    p = verbs.add_parser("eligibility", help="whether new allocations may land on a node")
    p.add_argument("id")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--enable", action="store_true")
    g.add_argument("--disable", action="store_true")
    p.set_defaults(fn=eligibility)


def _status(n: node_pb2.Node) -> str:
    return NODE_STATUS.word(n.status)


async def list_nodes(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = await ctx.call(ctx.stub.ListNodes(controller_pb2.ListNodesRequest()))
    if ctx.json:
        out(to_json(list(resp.nodes)))
        return OK
    out(table(("ID", "Name", "Address", "DC", "Class", "Drivers", "Eligible", "Drain", "Status"),
              [(short(n.id), n.name, n.address, n.datacenter, n.node_class, ",".join(n.drivers),
                n.eligible, n.HasField("drain"), _status(n)) for n in resp.nodes]))
    return OK


def _mesh(n: node_pb2.Node) -> str:
    """The node's routing-mesh data plane, and why not the kernel's when it cannot run it."""
    mode = n.attributes.get("lb.mode", "-")
    why = n.attributes.get("lb.kernel_unavailable", "")
    return f"{mode} ({why})" if why and mode != "kernel" else mode


async def status(ctx: Ctx, args: argparse.Namespace) -> int:
    r = await ctx.call(ctx.stub.GetNode(controller_pb2.GetNodeRequest(id=args.id)))
    if ctx.json:
        out(to_json(r))
        return OK
    n = r.node
    out(block([("ID", n.id), ("Name", n.name), ("Address", n.address), ("Status", _status(n)),
               ("Member", r.member_status), ("Eligible", n.eligible), ("Draining", n.HasField("drain")),
               ("Datacenter", n.datacenter), ("Class", n.node_class), ("Drivers", ",".join(n.drivers)),
               ("Routing mesh", _mesh(n)),
               ("CPU", f"{r.allocated.cpu_millicores}/{n.capacity.cpu_millicores} millicores"),
               ("Memory", f"{r.allocated.memory_mb}/{n.capacity.memory_mb} MB"),
               ("Since", ago(n.status_time_ns))]))
    if n.host_volumes:
        out("\nHost volumes")
        out(table(("Name", "Path", "Access"),
                  [(v.name, v.path, "read-only" if v.read_only else "read-write")
                   for v in n.host_volumes]))
    out("\nAllocations")
    out(table(("ID", "Job", "Group", "Version", "Desired", "Status", "Created"),
              [(short(a.id), a.job, a.group, a.job_version,
                DESIRED_STATUS.word(a.desired_status),
                CLIENT_STATUS.word(a.client_status), ago(a.create_time_ns))
               for a in r.allocations]))
    return OK


async def drain(ctx: Ctx, args: argparse.Namespace) -> int:
    n = await ctx.call(ctx.stub.DrainNode(controller_pb2.DrainNodeRequest(
        id=args.id, enable=not args.disable, deadline_seconds=int(args.deadline),
        ignore_system_jobs=args.ignore_system)))
    out(to_json(n) if ctx.json else f"==> node {n.name} " + (
        "drain cancelled" if args.disable else "draining"))
    return OK


async def eligibility(ctx: Ctx, args: argparse.Namespace) -> int:
    n = await ctx.call(ctx.stub.SetNodeEligibility(controller_pb2.SetNodeEligibilityRequest(
        id=args.id, eligible=args.enable)))
    out(to_json(n) if ctx.json else f"==> node {n.name} is "
        f"{'eligible' if n.eligible else 'ineligible'}")
    return OK


async def purge(ctx: Ctx, args: argparse.Namespace) -> int:
    n = await ctx.call(ctx.stub.PurgeNode(controller_pb2.PurgeNodeRequest(id=args.id)))
    out(to_json(n) if ctx.json else f"==> node {n.name} ({short(n.id)}) purged")
    return OK


async def remove(ctx: Ctx, args: argparse.Namespace) -> int:
    """Revoke the node, then rotate the gossip key on every other member (install a new one,
    use it, remove the old): the removed node, down, is not among them, so it is shut out
    of gossip too."""
    n = await ctx.call(ctx.stub.RemoveNode(controller_pb2.RemoveNodeRequest(id=args.id)))
    out(f"==> node {n.name} ({short(n.id)}) removed: its certificate is refused from now on")
    if args.keep_gossip_key:
        return OK
    listed = await ctx.call(ctx.stub.Keyring(controller_pb2.KeyringRequest(
        op=controller_pb2.KEYRING_OP_LIST), timeout=max(ctx.timeout, 30)))
    old = next((m.keys[0] for m in listed.members if m.keys and not m.error), "")
    if not old:
        out("==> gossip runs without encryption: nothing to rotate")
        return OK
    new = new_gossip_key()
    failed: set[str] = set()
    for op, key in ((controller_pb2.KEYRING_OP_INSTALL, new), (controller_pb2.KEYRING_OP_USE, new),
                    (controller_pb2.KEYRING_OP_REMOVE, old)):
        r = await ctx.call(ctx.stub.Keyring(controller_pb2.KeyringRequest(op=op, key=key),
                                            timeout=max(ctx.timeout, 30)))
        failed |= {f"{m.member}: {m.error}" for m in r.members if m.error and m.member != n.name}
    if failed:
        out("==> the gossip key was rotated, except on:\n  " + "\n  ".join(sorted(failed)))
        return FAILED
    out("==> rotated the gossip key on every other member")
    return OK
