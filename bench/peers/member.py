"""One process of gossip members for the side-by-side benchmark: orch's or kinship's.

    python -m bench.peers.member orch|kinship

It speaks the protocol of ``bench/memberlist/main.go`` (memberlist's side): commands as
JSON lines on stdin, events as JSON lines on stdout, times on the wall clock in seconds.

    {"cmd":"start","name":"m001","addr":"127.0.90.1","port":7946,"seeds":["127.0.90.2:7946"]}
    {"cmd":"leave","name":"m001","timeout":2}     graceful leave, then stop
    {"cmd":"stop","name":"m001"}                  stop without leaving (a crash, seen from outside)
    {"cmd":"stats"}                               what each member says it sent
    {"cmd":"exit"}

    {"ev":"started","node":"m001","t":...}
    {"ev":"member","node":"m001","kind":"join|alive|suspect|dead|left|update","peer":"m002","t":...}

orch members may carry ``"config": {...}``: GossipConfig fields over ``GossipConfig.lan()``.
kinship members run ``kinship.Config.lan()`` without encryption (as orch and memberlist do
here), with its protocol thread in this process. The process exits when stdin closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from typing import Any

Cmd = dict[str, Any]

_out = sys.stdout


def emit(ev: dict[str, Any]) -> None:
    ev["t"] = time.time()
    _out.write(json.dumps(ev, separators=(",", ":")) + "\n")
    _out.flush()


class OrchMembers:
    """orch's GossipNode, one per member, all on this process's event loop."""

    def __init__(self) -> None:
        from orch.gossip.transport import GossipNode

        self.nodes: dict[str, GossipNode] = {}

    async def start(self, c: Cmd) -> None:
        from orch.gossip.config import GossipConfig
        from orch.gossip.core import MemberEvent
        from orch.gossip.transport import GossipNode

        name = c["name"]
        cfg = GossipConfig.lan(**c.get("config", {}))
        node = GossipNode(cfg, name=name, bind=(c["addr"], int(c["port"])))

        def on_event(e: MemberEvent, name: str = name) -> None:
            if e.name != name:
                emit({"ev": "member", "node": name, "kind": e.kind.value, "peer": e.name})

        node.on_event(on_event)
        await node.start()
        self.nodes[name] = node
        emit({"ev": "started", "node": name})
        seeds = [_addr(s) for s in c.get("seeds", [])]
        if seeds:
            node.join(seeds)

    async def stop(self, name: str, leave: bool, leave_timeout: float) -> None:
        node = self.nodes.pop(name, None)
        if node is None:
            return
        if leave:
            await node.leave()
        else:
            await node.stop()
        emit({"ev": "stopped", "node": name})

    def stats(self) -> None:
        for name, node in self.nodes.items():
            w = node.wire
            emit({"ev": "stats", "node": name, "bytes_sent": w.bytes_sent,
                  "packets_sent": w.packets_sent, "streams_sent": w.streams_sent})

    async def close(self) -> None:
        for name in list(self.nodes):
            await self.stop(name, False, 0.0)


class KinshipMembers:
    """kinship's asyncio Cluster, one per member; its protocol runs on kinship's thread."""

    def __init__(self) -> None:
        import kinship

        kinship.log_to_python()
        logging.getLogger("kinship").setLevel(logging.ERROR)
        self.clusters: dict[str, kinship.Cluster] = {}
        self.readers: dict[str, asyncio.Task[None]] = {}

    async def start(self, c: Cmd) -> None:
        import kinship

        name = c["name"]
        cfg = kinship.Config.lan(name=name, bind=f"{c['addr']}:{int(c['port'])}",
                                 insecure_plaintext=True, cluster="bench")
        cluster = await kinship.Cluster(cfg).start()
        self.clusters[name] = cluster
        # subscribe before joining: a subscription sees only what happens after it
        self.readers[name] = asyncio.create_task(self._read(name, cluster.events()))
        emit({"ev": "started", "node": name})
        seeds = list(c.get("seeds", []))
        if seeds:
            asyncio.create_task(self._join(name, cluster, seeds))  # noqa: RUF006 (ends by itself)

    async def _join(self, name: str, cluster: Any, seeds: list[str]) -> None:
        import kinship

        try:
            n = await cluster.join(seeds)
            emit({"ev": "joined", "node": name, "contacted": n})
        except (kinship.KinshipError, OSError) as e:
            emit({"ev": "joined", "node": name, "contacted": 0, "error": str(e)})

    async def _read(self, name: str, events: Any) -> None:
        import kinship

        kinds: dict[type[Any], str] = {
            kinship.MemberJoined: "join", kinship.MemberSuspect: "suspect",
            kinship.MemberRecovered: "alive", kinship.MemberDead: "dead",
            kinship.MemberLeft: "left", kinship.MemberUpdated: "update"}
        with contextlib.suppress(kinship.KinshipClosed):
            async for e in events:
                kind = kinds.get(type(e))
                if kind is not None:
                    emit({"ev": "member", "node": name, "kind": kind, "peer": e.member.name})
                elif isinstance(e, kinship.EventsLost):
                    cluster = self.clusters.get(name)
                    members = [] if cluster is None else cluster.members()
                    emit({"ev": "view", "node": name, "lost": e.count,
                          "alive": [m.name for m in members if m.name != name]})

    async def stop(self, name: str, leave: bool, leave_timeout: float) -> None:
        cluster = self.clusters.pop(name, None)
        if cluster is None:
            return
        if leave:
            await cluster.leave(leave_timeout)
        await cluster.close()
        task = self.readers.pop(name, None)
        if task is not None:
            task.cancel()
        emit({"ev": "stopped", "node": name})

    def stats(self) -> None:
        for name, cluster in self.clusters.items():
            s = cluster.stats()
            emit({"ev": "stats", "node": name, "suspicions": s.suspicions,
                  "refutations": s.refutations, "push_pulls": s.push_pulls})

    async def close(self) -> None:
        for name in list(self.clusters):
            await self.stop(name, False, 0.0)


def _addr(s: str) -> tuple[str, int]:
    host, port = s.rsplit(":", 1)
    return host, int(port)


async def serve(impl: str) -> None:
    members: OrchMembers | KinshipMembers = OrchMembers() if impl == "orch" else KinshipMembers()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    emit({"ev": "ready", "impl": impl, "pid": os.getpid()})
    tasks: set[asyncio.Task[None]] = set()
    try:
        while line := await reader.readline():
            try:
                c = json.loads(line)
            except ValueError:
                emit({"ev": "error", "error": f"bad command: {line[:80]!r}"})
                continue
            try:
                if c["cmd"] == "start":
                    await members.start(c)
                elif c["cmd"] in ("leave", "stop"):
                    t = asyncio.create_task(members.stop(
                        c["name"], c["cmd"] == "leave", float(c.get("timeout", 2.0))))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                elif c["cmd"] == "stats":
                    members.stats()
                elif c["cmd"] == "exit":
                    break
            except Exception as e:  # report, keep serving the other members
                emit({"ev": "error", "node": c.get("name"), "error": f"{type(e).__name__}: {e}"})
    finally:
        await members.close()
        emit({"ev": "exit"})


def die_with_parent() -> None:
    """SIGKILL this process when the benchmark dies, even while it is stopped (SIGSTOP)."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent was already gone
            os._exit(1)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("orch", "kinship"):
        print("usage: python -m bench.peers.member orch|kinship", file=sys.stderr)
        return 2
    die_with_parent()
    from orch import logs

    logs.setup("error", "human")
    if args[0] == "orch":
        import uvloop

        uvloop.run(serve("orch"))
    else:
        asyncio.run(serve("kinship"))  # kinship's handle wakes asyncio from its own thread
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
