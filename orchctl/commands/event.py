"""orchctl event fire NAME [PAYLOAD] [--no-coalesce]

A user event (as Serf's) reaches every agent and controller by gossip, once each, ordered
by a Lamport clock; the leader records it in the event log (``orchctl events --topic
user``). Events of one name fired in a burst are delivered as the newest one only,
unless ``--no-coalesce``. Names are 1..128 printable characters; payloads at most 512
bytes.
"""

from __future__ import annotations

import argparse

from orch.v1 import controller_pb2
from orchctl.client import OK
from orchctl.commands import Ctx
from orchctl.output import out, to_json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ev = sub.add_parser("event", help="fire a user event to every member (gossip)",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = ev.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = verbs.add_parser("fire", help="send a named event with an optional payload")
    p.add_argument("name")
    p.add_argument("payload", nargs="?", default="")
    p.add_argument("--no-coalesce", action="store_true",
                   help="deliver every event of this name, not only the newest of a burst")
    p.set_defaults(fn=fire)


async def fire(ctx: Ctx, args: argparse.Namespace) -> int:
    req = controller_pb2.FireEventRequest(name=args.name, payload=args.payload.encode(),
                                          no_coalesce=args.no_coalesce)
    r = await ctx.call(ctx.stub.FireEvent(req, timeout=ctx.timeout))
    if ctx.json:
        out(to_json(r))
    else:
        out(f"==> event {args.name!r} fired from {r.member} (ltime {r.ltime})")
    return OK
