"""orchctl keyring list | install KEY | use KEY | remove KEY | generate

Rotating the gossip key without downtime, as with Serf:

    orchctl keyring install NEW     every member opens packets sealed with NEW
    orchctl keyring use NEW         every member seals with NEW
    orchctl keyring remove OLD      no member accepts OLD any more
"""

from __future__ import annotations

import argparse
import hashlib
from collections import Counter

from orch.gossip.crypto import new_key
from orch.v1 import controller_pb2
from orchctl.client import FAILED, OK
from orchctl.commands import Ctx
from orchctl.output import out, table, to_json

OPS = {"list": controller_pb2.KEYRING_OP_LIST, "install": controller_pb2.KEYRING_OP_INSTALL,
       "use": controller_pb2.KEYRING_OP_USE, "remove": controller_pb2.KEYRING_OP_REMOVE}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    kr = sub.add_parser("keyring", help="gossip encryption keys on every member: list, install, "
                                        "use, remove; generate one",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = kr.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = verbs.add_parser("list", help="the keys each member holds, and how many hold each")
    p.set_defaults(fn=keyring)
    for verb, what in (("install", "add a key on every member (it opens packets, seals none)"),
                       ("use", "make an installed key the one every member seals with"),
                       ("remove", "drop a key that is not in use from every member")):
        p = verbs.add_parser(verb, help=what)
        p.add_argument("key", help="base64 (16, 24 or 32 bytes)")
        p.set_defaults(fn=keyring)
    p = verbs.add_parser("generate", help="print a fresh AES-256 key (no controller needed)")
    p.set_defaults(fn=generate, local=True)


def fingerprint(key: str) -> str:
    """A short name for a key that does not reveal it."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


async def generate(ctx: Ctx | None, args: argparse.Namespace) -> int:
    out(new_key())
    return OK


async def keyring(ctx: Ctx, args: argparse.Namespace) -> int:
    req = controller_pb2.KeyringRequest(op=OPS[args.verb], key=getattr(args, "key", ""))
    r = await ctx.call(ctx.stub.Keyring(req, timeout=max(ctx.timeout, 30)))
    failed = [m for m in r.members if m.error]
    if ctx.json:
        out(to_json(r))
        return FAILED if failed else OK
    ok = [m for m in r.members if not m.error]
    held: Counter[str] = Counter(k for m in ok for k in m.keys)
    primary: Counter[str] = Counter(m.keys[0] for m in ok if m.keys)
    if args.verb == "list":
        out(table(("Key", "Fingerprint", "Members", "Primary on"),
                  [(k, fingerprint(k), f"{n}/{len(ok)}", primary[k]) for k, n in held.most_common()]))
    else:
        out(f"{args.verb}: done on {len(ok)} of {len(r.members)} members")
    if failed:
        out(table(("Member", "Error"), [(m.member, m.error) for m in failed]))
    return FAILED if failed else OK
