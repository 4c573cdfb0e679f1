"""orchctl members | rtt | service list | leader | events | cluster join-token"""

from __future__ import annotations

import argparse
import json
import time

import grpc

from orch.gossip.coordinate import Coordinate, estimate_rtt
from orch.v1 import controller_pb2
from orchctl.client import OK, CliError, fail
from orchctl.commands import Ctx
from orchctl.output import ago, block, out, table, to_json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("members", help="the gossip members as the controller sees them")
    p.add_argument("--rtt", action="store_true",
                   help="add each member's estimated round-trip time to the controller")
    p.set_defaults(fn=members)
    p = sub.add_parser("rtt", help="estimated round-trip time between two members "
                       "(network coordinates; nothing is measured now)")
    p.add_argument("a")
    p.add_argument("b")
    p.set_defaults(fn=rtt)
    svc = sub.add_parser("service", help="the service catalog: services, endpoints, health")
    verbs = svc.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = verbs.add_parser("list", help="every service of the namespace with its endpoints")
    p.add_argument("name", nargs="?", default="")
    p.add_argument("-A", "--all-namespaces", action="store_true",
                   help="the services of every namespace")
    p.add_argument("-w", "--watch", action="store_true",
                   help="print the list again whenever it changes (a blocking query)")
    p.set_defaults(fn=services)
    p = verbs.add_parser("show", help="one service's endpoints, their health and DNS names")
    p.add_argument("name")
    p.set_defaults(fn=service_show)
    p = sub.add_parser("leader", help="which controller leads")
    p.set_defaults(fn=leader)
    cl = sub.add_parser("cluster", help="the cluster's join tokens")
    cverbs = cl.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = cverbs.add_parser("join-token", help="print the token a new agent or controller joins "
                                             "with (management token needed)")
    p.add_argument("role", choices=("agent", "controller"))
    p.add_argument("--rotate", action="store_true",
                   help="make a new one: the old one stops working at once")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the token")
    p.set_defaults(fn=join_token)
    p = sub.add_parser("events", help="job, allocation, node and deployment events")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    p.add_argument("--since", type=int, default=0, metavar="INDEX",
                   help="replay events after this index (default: the last 50)")
    p.add_argument("--topic", action="append", default=[],
                   choices=("job", "allocation", "node", "deployment", "user", "secret"))
    p.add_argument("--job", default="")
    p.add_argument("--node", default="", help="a node's name or id prefix")
    p.add_argument("--type", action="append", default=[], metavar="TYPE",
                   help="event type, e.g. AllocationFailed, NodeDown (repeatable)")
    p.set_defaults(fn=events)


async def members(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = await ctx.call(ctx.stub.ListMembers(controller_pb2.ListMembersRequest()))
    if ctx.json:
        out(to_json(list(resp.members)))
        return OK
    if args.rtt:
        me = next((m for m in resp.members if m.tags.get("role") == "controller"
                   and m.HasField("coordinate")), None)
        rows = []
        for m in resp.members:
            est = _estimate(me.coordinate, m.coordinate) if me and m.HasField("coordinate") \
                else None
            rows.append((m.name, m.address, m.status,
                         f"{est * 1000:.3f} ms" if est is not None else "-",
                         f"{m.coordinate.error:.2f}" if m.HasField("coordinate") else "-"))
        out(table(("Name", "Address", "Status", "RTT to controller", "Coordinate error"), rows))
    else:
        out(table(("Name", "Address", "Status", "Incarnation", "Role", "Tags"),
                  [(m.name, m.address, m.status, m.incarnation, m.tags.get("role", ""),
                    ",".join(f"{k}={v}" for k, v in sorted(m.tags.items()) if k != "role"))
                   for m in resp.members]))
    if resp.refused:  # who is shut out, and why: a wrong key is the usual reason
        out("\n" + table(("Refused", "Address", "Why", "Packets", "Last"),
                         [(r.name or "(unknown)", r.address,
                           "wrong gossip key?" if r.reason == "decrypt" else r.reason,
                           r.packets, ago(r.last_time_ns)) for r in resp.refused]))
    return OK


def _estimate(a: controller_pb2.Coordinate, b: controller_pb2.Coordinate) -> float:
    return estimate_rtt(Coordinate(tuple(a.vec), a.error, a.height, a.adjustment),
                        Coordinate(tuple(b.vec), b.error, b.height, b.adjustment))


async def rtt(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = await ctx.call(ctx.stub.ListMembers(controller_pb2.ListMembersRequest()))
    found = {m.name: m for m in resp.members}
    for name in (args.a, args.b):
        if name not in found:
            raise CliError(f"no member {name!r}")
        if not found[name].HasField("coordinate"):
            raise CliError(f"no coordinate for {name!r} yet (the controller has not probed it)")
    est = _estimate(found[args.a].coordinate, found[args.b].coordinate)
    if ctx.json:
        out(json.dumps({"a": args.a, "b": args.b, "rtt_seconds": est}))
    else:
        out(f"Estimated {args.a} <-> {args.b} rtt: {est * 1000:.3f} ms (using network coordinates)")
    return OK


WATCH_WAIT = 60.0
"""Seconds one blocking query of ``service list --watch`` waits before asking again."""


async def services(ctx: Ctx, args: argparse.Namespace) -> int:
    namespace = "" if args.all_namespaces else ctx.namespace
    resp = await ctx.call(ctx.stub.ListServices(controller_pb2.ListServicesRequest(
        name=args.name, namespace=namespace)))
    _print_services(ctx, resp, every=args.all_namespaces, watch=args.watch)
    seen = resp.index
    while args.watch:  # each answer comes when the list changed, or after WATCH_WAIT
        resp = await ctx.call(ctx.stub.WatchServices(controller_pb2.WatchServicesRequest(
            name=args.name, namespace=namespace, index=seen, wait_seconds=WATCH_WAIT)))
        if resp.index != seen:
            seen = resp.index
            _print_services(ctx, resp, every=args.all_namespaces, watch=True)
    return OK


def _print_services(ctx: Ctx, resp: controller_pb2.ListServicesResponse, *, every: bool,
                    watch: bool) -> None:
    if ctx.json:  # a watch prints one object a line: {"services": [...], "index": N}
        out(to_json(resp) if watch else to_json(list(resp.services)))
        return
    rows = []
    for s in resp.services:
        healthy = sum(e.healthy for e in s.endpoints)
        rows.append(((s.namespace,) if every else ()) + (
            s.name, s.job, s.group, s.published_port or "-", s.protocol, s.lb_mode or "-",
            f"{healthy}/{len(s.endpoints)}",
            " ".join(e.address for e in s.endpoints if e.healthy)))
    head = (("Namespace",) if every else ()) + (
        "Service", "Job", "Group", "Port", "Protocol", "Mode", "Healthy", "Endpoints")
    out(table(head, rows) + (f"\n(index {resp.index})" if watch else ""))


async def service_show(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = await ctx.call(ctx.stub.ListServices(controller_pb2.ListServicesRequest(
        name=args.name, namespace=ctx.namespace)))
    if not resp.services:
        raise CliError(f"no service {args.name!r} runs in namespace {ctx.namespace!r} "
                       "(orchctl service list -A lists every namespace's)")
    if ctx.json:
        out(to_json(list(resp.services)))
        return OK
    for s in resp.services:
        out(block([("Service", s.name), ("Namespace", s.namespace), ("Job", f"{s.job}/{s.group}"),
                   ("Published port", s.published_port or "-"), ("Protocol", s.protocol),
                   ("Routing mesh", s.lb_mode or "-"),
                   ("DNS", f"{s.name}.service.{s.namespace}.orch (A, SRV)" + (
                       f", {s.name}.mesh.{s.namespace}.orch (the mesh port)"
                       if s.published_port else ""))]))
        out(table(("Allocation", "Node", "Address", "Healthy", "Connections", "Per second"),
                  [(e.alloc_id[:8], e.node, e.address, e.healthy, e.active_connections,
                    f"{e.connections_per_second:.1f}") for e in s.endpoints]))
    return OK


async def leader(ctx: Ctx, args: argparse.Namespace) -> int:
    r = await ctx.call(ctx.stub.GetLeader(controller_pb2.GetLeaderRequest()))
    if ctx.json:
        out(to_json(r))
        return OK
    out(block([("Leader", r.leader), ("Address", r.address)]))
    out(table(("Controller", "Address", "Leader", "Status"),
              [(c.name, c.address, c.leader, c.status) for c in r.controllers]))
    return OK


async def join_token(ctx: Ctx, args: argparse.Namespace) -> int:
    r = await ctx.call(ctx.stub.GetJoinToken(controller_pb2.JoinTokenRequest(
        role=args.role, rotate=args.rotate)))
    if ctx.json:
        out(to_json(r))
    elif args.quiet:
        out(r.token)
    else:
        what = "A new" if args.rotate else "The"
        flag = "orch-agent" if args.role == "agent" else "orch-controller"
        out(f"{what} {args.role} join token (keep it secret: it admits a new {args.role}):\n\n"
            f"    {r.token}\n\nOn the new host, with the token in ORCH_JOIN_TOKEN:\n\n"
            f"    {flag} --controller {ctx.address} ...")
    return OK


async def events(ctx: Ctx, args: argparse.Namespace) -> int:
    req = controller_pb2.WatchRequest(topics=args.topic, job=args.job, since_index=args.since,
                                      follow=args.follow, tail=50, node=args.node,
                                      types=args.type)
    call = ctx.stub.Watch(req)
    try:
        async for ev in call:
            if ctx.json:
                out(json.dumps(json.loads(to_json(ev))))
            else:
                when = time.strftime("%H:%M:%S", time.localtime(ev.time_ns / 1e9))
                out(f"{ev.index:>6}  {when}  {ev.topic:<10}  {ev.type:<22}  {ev.message}")
    except grpc.aio.AioRpcError as e:
        if e.code() not in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
            fail(e, ctx.address)
    return OK
