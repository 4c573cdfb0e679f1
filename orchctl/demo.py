"""The main job, run by ``./run demo``: a local cluster on 127.0.0.x addresses.

Today: five agents gossip on 127.0.0.2-127.0.0.6; the demo shows the membership
table converging, kills one agent with SIGKILL and shows every other agent
detecting it, then stops the rest gracefully (they leave). Each agent is a real
``orch-agent`` process; what the demo shows is read from their JSON logs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

STATUSES = ("alive", "suspect", "dead", "left")
_EVENT_STATUS = {"member join": "alive", "member alive": "alive", "member suspect": "suspect",
                 "member dead": "dead", "member left": "left"}


@dataclass
class Agent:
    name: str
    addr: str
    proc: asyncio.subprocess.Process | None = None
    view: dict[str, str] = field(default_factory=dict)
    """member name -> status, as this agent sees it."""
    log: list[dict[str, object]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATUSES, 0)
        for status in self.view.values():
            out[status] += 1
        return out


class Demo:
    def __init__(self, n: int, port: int, profile: str) -> None:
        self.agents = [Agent(f"agent-{i + 1}", f"127.0.0.{i + 2}:{port}") for i in range(n)]
        self.profile = profile
        self.t0 = time.monotonic()
        self.changed = asyncio.Event()
        self.events: list[tuple[float, str, str, str]] = []
        """(time since start, observer, member, status) for every membership event."""
        self._readers: list[asyncio.Task[None]] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    async def start(self, agent: Agent, seed: Agent) -> None:
        cmd = [sys.executable, "-m", "agent.main", "--name", agent.name, "--bind", agent.addr,
               "--log-format", "json", "--profile", self.profile, "--tag", "demo=gossip"]
        if agent is not seed:
            cmd += ["--join", seed.addr]
        agent.proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        agent.view = {agent.name: "alive"}
        self._readers.append(asyncio.ensure_future(self._read(agent)))

    async def _read(self, agent: Agent) -> None:
        assert agent.proc is not None
        assert agent.proc.stderr is not None
        async for raw in agent.proc.stderr:
            try:
                rec = json.loads(raw)
            except ValueError:
                print(f"  [{agent.name}] {raw.decode(errors='replace').rstrip()}", file=sys.stderr)
                continue
            agent.log.append(rec)
            status = _EVENT_STATUS.get(str(rec.get("msg")))
            if status is None:
                if rec.get("level") in ("error", "critical"):
                    print(f"  [{agent.name}] {rec.get('msg')}: {rec.get('error', '')}", file=sys.stderr)
                continue
            member = str(rec.get("member"))
            agent.view[member] = status
            self.events.append((self.elapsed(), agent.name, member, status))
            self.changed.set()

    async def wait_for(self, predicate: Callable[[], bool], within: float) -> bool:
        deadline = time.monotonic() + within
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.5))
        return True

    def table(self, agents: list[Agent]) -> str:
        head = f"  {'agent':<9} {'address':<16} " + " ".join(f"{s:>7}" for s in STATUSES)
        rows = [head, "  " + "-" * (len(head) - 2)]
        for a in agents:
            c = a.counts()
            rows.append(f"  {a.name:<9} {a.addr:<16} " + " ".join(f"{c[s]:>7}" for s in STATUSES))
        return "\n".join(rows)

    async def stop_all(self) -> None:
        for a in self.agents:
            if a.proc is not None and a.proc.returncode is None:
                a.proc.send_signal(signal.SIGTERM)
        for a in self.agents:
            if a.proc is not None:
                try:
                    await asyncio.wait_for(a.proc.wait(), 10)
                except TimeoutError:
                    a.proc.kill()
                    await a.proc.wait()
        for t in self._readers:
            t.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


def say(text: str) -> None:
    print(f"\033[1m==> {text}\033[0m" if sys.stdout.isatty() else f"==> {text}", flush=True)


async def run(n: int, port: int, profile: str) -> int:
    demo = Demo(n, port, profile)
    agents = demo.agents
    seed = agents[0]
    ok = True
    try:
        say(f"starting {n} agents on {agents[0].addr.split(':')[0]}-{agents[-1].addr.split(':')[0]} "
            f"(gossip timings: {'memberlist LAN defaults' if profile == 'lan' else 'fast, for tests'})")
        await demo.start(seed, seed)
        await asyncio.sleep(0.3)
        for a in agents[1:]:
            await demo.start(a, seed)
        converged = await demo.wait_for(
            lambda: all(a.counts()["alive"] == n for a in agents), within=20)
        t_conv = demo.elapsed()
        print(demo.table(agents))
        if not converged:
            print("  the cluster did not converge within 20 s", file=sys.stderr)
            return 1
        print(f"  converged: every agent sees {n} alive members, {t_conv:.2f} s after the first start")

        victim = agents[n // 2]
        others = [a for a in agents if a is not victim]
        say(f"killing {victim.name} ({victim.addr}) with SIGKILL: no goodbye, the others must notice")
        assert victim.proc is not None
        t_kill = demo.elapsed()
        victim.proc.kill()
        mark = len(demo.events)
        detected = await demo.wait_for(
            lambda: all(a.view.get(victim.name) == "dead" for a in others), within=60)
        for t, observer, member, status in demo.events[mark:]:
            if member == victim.name and observer != victim.name:
                print(f"  +{t - t_kill:6.2f} s  {observer} marks {member} {status}")
        dead_times = [t - t_kill for t, o, m, s in demo.events[mark:] if m == victim.name and s == "dead"]
        print(demo.table(others))
        if not detected:
            print(f"  not every agent marked {victim.name} dead within 60 s", file=sys.stderr)
            ok = False
        else:
            print(f"  every other agent marked {victim.name} dead: first after {min(dead_times):.2f} s, "
                  f"last after {max(dead_times):.2f} s")

        say("stopping the other agents with SIGTERM: each leaves the cluster gracefully")
        leaver = others[0]
        assert leaver.proc is not None
        mark = len(demo.events)
        leaver.proc.send_signal(signal.SIGTERM)
        await demo.wait_for(lambda: all(a.view.get(leaver.name) == "left" for a in others[1:]), 10)
        t_leave = demo.events[mark][0] if len(demo.events) > mark else demo.elapsed()
        for t, observer, member, status in demo.events[mark:]:
            if member == leaver.name:
                print(f"  +{t - t_leave:6.2f} s  {observer} sees {member} {status}")
    finally:
        await demo.stop_all()
    say("done: every agent stopped" if ok else "failed")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--agents", type=int, default=5, help="number of agents (2..250)")
    ap.add_argument("--port", type=int, default=7946, help="gossip port on every address")
    ap.add_argument("--fast", action="store_true", help="short gossip timings (for tests)")
    opts = ap.parse_args(argv)
    if not 2 <= opts.agents <= 250:
        ap.error("--agents must be within 2..250")
    try:
        import uvloop
        return uvloop.run(run(opts.agents, opts.port, "fast" if opts.fast else "lan"))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
