"""Members of one implementation in worker processes, and every member's view of the others.

A worker is one process (orch or kinship: ``bench/peers/member.py``; memberlist: the Go
program ``bench/memberlist/main.go``) that runs the members it is told to start and
reports their membership events as JSON lines, stamped with the wall clock. ``Cluster``
reads them on one thread per worker and keeps, for every member, what it believes of every
other (alive, suspect, dead, left), so that a scenario can wait for "every member knows"
and read, from the event log, when each of them knew.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]
PRESENT = ("alive", "suspect")
"""View states in which a member still counts another as one of the cluster."""
STATE_OF = {"join": "alive", "alive": "alive", "update": "alive", "suspect": "suspect",
            "dead": "dead", "left": "left"}


class Aborted(Exception):
    """The run was interrupted (Ctrl-C, SIGTERM, or another implementation's thread failed)."""


class OverBound(Exception):
    """The scenario under way reached its time bound (``Cluster.deadline``)."""


STOP = threading.Event()
"""Set to make every scenario stop at its next wait."""


@dataclass(slots=True)
class Event:
    t: float
    node: str
    kind: str
    peer: str


class Worker:
    """One process of members; its stdout is read on a thread of its own."""

    def __init__(self, argv: list[str], *, log: IO[bytes], out: queue.Queue[tuple[Worker, dict[str, Any]]],
                 alone: bool = False, env: dict[str, str] | None = None,
                 group: int | None = None) -> None:
        self.alone = alone
        self.stopped = False  # SIGSTOP'd
        # The worker makes itself die with the benchmark (PR_SET_PDEATHSIG, in its own code:
        # bench/peers/member.py, bench/memberlist/main.go). The kernel sends that signal when
        # the *thread* that started it ends: workers are started, and stopped, by the thread
        # that runs their implementation's scenarios, which outlives them.
        self.popen = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=ROOT, env=env,
            start_new_session=True,  # Ctrl-C reaches the benchmark only; it stops the workers
            group=group)  # the partition's side (iptables owner match), as root only
        self._out = out
        self._wlock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"worker-{self.pid}")
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            self._out.put((self, ev))
        self._out.put((self, {"ev": "eof"}))

    def send(self, cmd: dict[str, Any]) -> None:
        if self.popen.poll() is not None or self.popen.stdin is None:
            return
        with self._wlock, contextlib.suppress(OSError):
            self.popen.stdin.write((json.dumps(cmd) + "\n").encode())
            self.popen.stdin.flush()

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)
        if sig == signal.SIGSTOP:
            self.stopped = True
        elif sig == signal.SIGCONT:
            self.stopped = False

    def close(self, grace: float = 3.0) -> None:
        """Ask it to exit; SIGKILL when it has not within ``grace`` seconds."""
        if self.popen.poll() is None:
            if self.stopped:
                self.signal(signal.SIGCONT)
            self.send({"cmd": "exit"})
            with contextlib.suppress(OSError):
                if self.popen.stdin is not None:
                    self.popen.stdin.close()
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(timeout=10)
        with contextlib.suppress(OSError):
            if self.popen.stdin is not None:
                self.popen.stdin.close()
        self._reader.join(timeout=5)
        if not self._reader.is_alive() and self.popen.stdout is not None:
            self.popen.stdout.close()

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process and its threads (0 once it is gone)."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(slots=True)
class Member:
    name: str
    addr: str
    worker: Worker
    started: float = 0.0
    live: bool = True
    """True from start until the harness kills it or it leaves."""


@dataclass
class Cluster:
    """The members of one implementation, their workers, and each member's view."""

    impl: str
    argv: list[str]
    port: int
    logdir: Path
    prefix: list[str] = field(default_factory=list)
    """Put before ``argv`` (``ip netns exec NAME``)."""
    env: dict[str, str] | None = None
    orch_config: dict[str, Any] = field(default_factory=dict)
    progress: Callable[[str], None] = print

    def __post_init__(self) -> None:
        self.q: queue.Queue[tuple[Worker, dict[str, Any]]] = queue.Queue()
        self.workers: list[Worker] = []
        self.members: dict[str, Member] = {}
        self.views: dict[str, dict[str, str]] = {}
        self.log: list[Event] = []
        self.acks: dict[tuple[str, str], float] = {}  # (ev, node) -> time: started, stopped
        self.errors: list[str] = []
        self.stats: dict[str, dict[str, Any]] = {}
        self.left: set[str] = set()
        self._logs: list[IO[bytes]] = []
        self.deadline = math.inf
        """``time.monotonic()`` past which ``wait`` raises ``OverBound`` (the scenario's bound)."""

    # --- processes --------------------------------------------------------------------------

    def worker(self, alone: bool = False, group: int | None = None) -> Worker:
        """A new worker process; ``group``: its group id (one per side of a partition)."""
        log = (self.logdir / f"{self.impl}-{len(self.workers):03d}.log").open("ab")
        self._logs.append(log)
        w = Worker([*self.prefix, *self.argv], log=log, out=self.q, alone=alone, env=self.env,
                   group=group)
        self.workers.append(w)
        return w

    def close(self) -> None:
        for w in self.workers:
            if w.stopped:
                w.signal(signal.SIGCONT)
        for w in self.workers:
            with contextlib.suppress(Exception):
                w.close()
        for f in self._logs:
            f.close()
        self.workers.clear()

    # --- members ------------------------------------------------------------------------------

    def start(self, name: str, addr: str, worker: Worker, seeds: Iterable[str] = ()) -> Member:
        m = self.members[name] = Member(name, addr, worker)
        self.views[name] = {}
        cmd: dict[str, Any] = {"cmd": "start", "name": name, "addr": addr, "port": self.port,
                               "seeds": [f"{self.members[s].addr}:{self.port}" for s in seeds]}
        if self.orch_config and self.impl == "orch":
            cmd["config"] = self.orch_config
        worker.send(cmd)
        return m

    def wait_started(self, names: Iterable[str], timeout: float) -> None:
        names = list(names)
        if not self.wait(lambda: all(("started", n) in self.acks for n in names), timeout):
            missing = [n for n in names if ("started", n) not in self.acks]
            raise RuntimeError(f"{self.impl}: {len(missing)} members did not start "
                               f"({', '.join(missing[:5])}): {'; '.join(self.errors[-3:])}")
        for n in names:
            self.members[n].started = self.acks[("started", n)]

    def kill(self, name: str) -> float:
        """SIGKILL the process of a member that runs alone; returns when (wall clock)."""
        m = self.members[name]
        assert m.worker.alone, "only a member alone in its process can be killed"
        m.live = False
        t = time.time()
        m.worker.signal(signal.SIGKILL)
        return t

    def leave(self, name: str, timeout: float = 2.0) -> None:
        m = self.members[name]
        m.live = False
        self.left.add(name)
        m.worker.send({"cmd": "leave", "name": name, "timeout": timeout})

    def live(self) -> list[str]:
        return [n for n, m in self.members.items() if m.live]

    def random_live(self, rng: random.Random, exclude: Iterable[str] = ()) -> str:
        ex = set(exclude)
        return rng.choice([n for n in self.live() if n not in ex])

    # --- events ---------------------------------------------------------------------------------

    def pump(self, timeout: float = 0.0) -> None:
        """Apply what the workers reported, waiting up to ``timeout`` for the first of it."""
        try:
            item = self.q.get(timeout=timeout) if timeout > 0 else self.q.get_nowait()
        except queue.Empty:
            return
        while True:
            self._apply(*item)
            try:
                item = self.q.get_nowait()
            except queue.Empty:
                return

    def _apply(self, w: Worker, ev: dict[str, Any]) -> None:
        kind = ev.get("ev")
        if kind == "member":
            node, peer = ev["node"], ev["peer"]
            state = STATE_OF.get(ev["kind"])
            if state is None or node == peer:
                return
            if state == "dead" and peer in self.left:
                state = "left"  # memberlist's events do not tell a leave from a death
            self.views.setdefault(node, {})[peer] = state
            self.log.append(Event(ev["t"], node, ev["kind"], peer))
        elif kind == "view":  # kinship lost events: its member list instead
            view = self.views.setdefault(ev["node"], {})
            alive = set(ev["alive"])
            for p in list(view):
                if p not in alive and view[p] in PRESENT:
                    view[p] = "dead"
            for p in alive:
                if view.get(p) not in PRESENT:
                    view[p] = "alive"
        elif kind in ("started", "stopped"):
            self.acks[(kind, ev["node"])] = ev["t"]
        elif kind == "stats":
            self.acks[("stats", ev["node"])] = ev["t"]
            self.stats[ev["node"]] = ev
        elif kind == "error":
            self.errors.append(f"{ev.get('node')}: {ev.get('error')}")
            self.progress(f"{self.impl} worker {w.pid}: {ev.get('node')}: {ev.get('error')}")

    def wait(self, pred: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
        """Pump events until ``pred()`` holds (True) or ``timeout`` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        while True:
            if STOP.is_set():
                raise Aborted
            if time.monotonic() > self.deadline:
                raise OverBound
            self.pump(0.0)
            if pred():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.pump(min(step, left))

    def idle(self, seconds: float) -> None:
        """Keep reading events for ``seconds``."""
        self.wait(lambda: False, seconds)

    # --- views -----------------------------------------------------------------------------------

    def knows_all(self, observer: str, live: list[str] | None = None) -> bool:
        view = self.views.get(observer, {})
        return all(view.get(p) in PRESENT for p in (live or self.live()) if p != observer)

    def converged(self) -> bool:
        """Every live member counts every other live member in."""
        live = self.live()
        return all(self.knows_all(o, live) for o in live)

    def not_converged(self) -> tuple[int, int]:
        """(observers missing someone, missing pairs), for progress lines."""
        live = self.live()
        obs = pairs = 0
        for o in live:
            view = self.views.get(o, {})
            miss = sum(1 for p in live if p != o and view.get(p) not in PRESENT)
            obs += miss > 0
            pairs += miss
        return obs, pairs

    def all_see_gone(self, peer: str) -> bool:
        return all(self.views.get(o, {}).get(peer) in ("dead", "left") for o in self.live())

    def first_event(self, since: float, kinds: tuple[str, ...], peer: str) -> dict[str, float]:
        """For each observer, when it first reported ``peer`` with one of ``kinds``."""
        out: dict[str, float] = {}
        for e in self.log:
            if e.t >= since and e.peer == peer and e.kind in kinds and e.node not in out:
                out[e.node] = e.t
        return out

    def first_seen_by(self, since: float, kinds: tuple[str, ...], node: str) -> dict[str, float]:
        """For each peer, when ``node`` first reported it with one of ``kinds``."""
        out: dict[str, float] = {}
        for e in self.log:
            if e.t >= since and e.node == node and e.kind in kinds and e.peer not in out:
                out[e.peer] = e.t
        return out

    def cpu_seconds(self) -> float:
        return sum(w.cpu_seconds() for w in self.workers if w.popen.poll() is None)

    def request_stats(self, timeout: float = 5.0) -> dict[str, dict[str, Any]]:
        self.stats.clear()
        t0 = time.time()
        for w in {m.worker for m in self.members.values() if m.live}:
            w.send({"cmd": "stats"})
        live = self.live()
        self.wait(lambda: all(self.acks.get(("stats", n), 0) >= t0 for n in live), timeout)
        return dict(self.stats)

    def trim_log(self, before: float) -> None:
        """Forget events older than ``before`` (long runs)."""
        self.log = [e for e in self.log if e.t >= before]
