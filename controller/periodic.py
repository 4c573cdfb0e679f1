"""The leader's periodic launcher: one child job per cron slot of every periodic job.

It runs while this controller leads (``Controller.lead`` starts it, ``step_down`` stops
it) and wakes at the next slot of any periodic job, or when a commit may change what is
due (a periodic job registered or stopped, a child finishing). At each wake, for every
periodic job that is not stopped, the due slot is the latest one in (last slot recorded,
now] (``orch.jobspec.periodic.due_slot``); the child ``<parent>/periodic-<slot>`` and the
new record ``periodic/<namespace>/<job> = slot`` are committed together, so after a
failover the next leader sees both or neither: a slot launched is never launched again,
and a slot missed while there was no leader is launched once, late (of several missed,
the latest only, as Nomad does). With ``prohibit_overlap`` a slot is skipped (recorded,
with a PeriodicSkipped event) while an earlier child is unfinished. The same pass purges
each parent's finished children past ``children.KEEP_DEAD_CHILDREN``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from controller import children
from controller.cluster import Cluster
from controller.evaluator import Evaluator
from controller.planner import event
from controller.state import TERMINAL, job_key
from controller.store.base import Changes, JobKey
from orch.errors import ConflictError, NotFoundError, RequestError
from orch.jobspec.periodic import Schedule, due_slot, periodic_child
from orch.v1 import job_pb2

log = logging.getLogger("controller")
NS = 1_000_000_000
IDLE_WAKE = 60.0
"""Seconds the launcher sleeps at most (it also wakes on commits that matter): a clock
that jumped is noticed within this."""


class Launcher:
    def __init__(self, cluster: Cluster, evaluator: Evaluator,
                 clock: Callable[[], float] = time.time) -> None:
        self.cluster = cluster
        self.state = cluster.state
        self.evaluator = evaluator
        self.clock = clock
        self._wake = asyncio.Event()
        self._schedules: dict[tuple[JobKey, int], Schedule] = {}
        self.launches = 0
        self.skips = 0
        cluster.listeners.append(self._on_commit)

    # --- reading -------------------------------------------------------------------------------

    def schedule(self, parent: job_pb2.Job) -> Schedule:
        """The parent's compiled schedule (cached per version)."""
        k = (job_key(parent), parent.version)
        s = self._schedules.get(k)
        if s is None:
            s = self._schedules[k] = Schedule(parent.periodic.cron, parent.periodic.time_zone)
        return s

    def parents(self) -> list[job_pb2.Job]:
        """Every periodic job that is not stopped (their latest versions)."""
        return [v[-1] for v in self.state.jobs.values()
                if v and v[-1].HasField("periodic") and not v[-1].stop]

    def next_launch(self, parent: job_pb2.Job, now: float | None = None) -> int | None:
        """When ``parent`` launches next (None: it does not, or is not periodic)."""
        if not parent.HasField("periodic"):
            return None
        return children.next_launch(self.state, parent, self.schedule(parent),
                                    self.clock() if now is None else now)

    # --- the loop ------------------------------------------------------------------------------

    def _on_commit(self, changes: Changes) -> None:
        if any(j.HasField("periodic") or j.parent for j in changes.put_jobs) or any(
                a.client_status in TERMINAL and "/" in a.job for a in changes.put_allocs):
            self._wake.set()

    async def run(self) -> None:
        """Launch what is due, then sleep until the next slot (or a commit that matters)."""
        while True:
            self._wake.clear()
            now = self.clock()
            try:
                await self.tick(now)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in one pass must not stop launching for good
                log.exception("periodic launch pass failed; retrying in 1 s")
                await asyncio.sleep(1.0)
                continue
            # the next slots after the time the pass looked at, not after the clock now: a
            # pass that began just before a slot and ended just after it must not skip it
            slots = [s for p in self.parents() if (s := self.next_launch(p, now)) is not None]
            later = self.clock()
            timeout = min([IDLE_WAKE, *(s - later for s in slots)])
            with contextlib.suppress(TimeoutError):  # not wait_for: see Evaluator.run
                async with asyncio.timeout(max(0.01, timeout)):
                    await self._wake.wait()

    async def tick(self, now: float) -> None:
        """Launch (or skip) every due slot and collect finished children, one commit each."""
        live = {(job_key(p), p.version) for p in self.parents()}
        self._schedules = {k: v for k, v in self._schedules.items() if k in live}
        for parent in self.parents():
            await self._launch_due(job_key(parent), now)
        parents = [v[-1] for v in self.state.jobs.values() if v and children.is_parent(v[-1])]
        for parent in parents:
            async with self.cluster.lock:
                changes = children.collect(self.state, job_key(parent))
                if changes:
                    await self.cluster.commit(changes)

    async def _launch_due(self, key: JobKey, now: float) -> None:
        async with self.cluster.lock:
            parent = self.state.job(key)  # read again under the lock: it may have changed
            if parent is None or parent.stop or not parent.HasField("periodic"):
                return
            slot = due_slot(self.schedule(parent), children.last_slot(self.state, parent), now)
            if slot is None:
                return
            mark = {children.launch_key(key): str(slot)}
            now_ns = int(now * NS)
            active = [c.name for c in children.children_of(self.state, key)
                      if not children.finished(self.state, c)]
            why = ""
            if parent.periodic.prohibit_overlap and active:
                why = f"{active[-1]} still runs (prohibit_overlap)"
            elif len(active) >= children.MAX_ACTIVE_CHILDREN:
                why = f"{len(active)} children are unfinished, the most a job may have"
            name = periodic_child(key[1], slot)
            if not why and self.state.job((key[0], name)) is not None:
                why = f"{name} exists already"  # launched by hand (force) in the same second
            if why:
                self.skips += 1
                await self.cluster.commit(Changes(meta=mark, events=[event(
                    "job", "PeriodicSkipped", key[1], f"job {key[1]}: slot "
                    f"{_when(slot)} skipped: {why}", now_ns)]))
                return
            child = children.make_child(parent, name, now_ns)
            await self.cluster.commit(Changes(put_jobs=[child], meta=mark, events=[event(
                "job", "PeriodicLaunched", name, f"job {key[1]}: slot {_when(slot)} launched as "
                f"{name}", now_ns, job=children.shown(child))]))
            self.launches += 1
        log.info("periodic launch", extra={"job": key[1], "child": name, "slot": slot,
                                           "late": round(now - slot, 3)})
        self.evaluator.enqueue(job_key(child), "periodic-launch")

    async def force(self, key: JobKey) -> job_pb2.Job:
        """A child of the periodic job ``key`` now, out of schedule (the schedule is not
        moved); RequestError when ``key`` is not periodic or is stopped."""
        now = self.clock()
        async with self.cluster.lock:
            parent = self.state.job(key)
            if parent is None:
                raise NotFoundError(f"job {key[1]!r} not found in namespace {key[0]!r}")
            if not parent.HasField("periodic"):
                raise RequestError(f"job {key[1]!r} is not periodic: only a job with a periodic "
                                   "block can be forced")
            if parent.stop:
                raise RequestError(f"job {key[1]!r} is stopped; run it again before forcing it")
            active = [c for c in children.children_of(self.state, key)
                      if not children.finished(self.state, c)]
            if len(active) >= children.MAX_ACTIVE_CHILDREN:
                raise RequestError(f"job {key[1]!r} has {len(active)} unfinished children, the "
                                   f"most it may have ({children.MAX_ACTIVE_CHILDREN})")
            name = periodic_child(key[1], int(now))
            if self.state.job((key[0], name)) is not None:
                raise ConflictError(f"job {name!r} was launched this second already; try again")
            now_ns = int(now * NS)
            child = children.make_child(parent, name, now_ns)
            await self.cluster.commit(Changes(put_jobs=[child], events=[event(
                "job", "PeriodicForced", name, f"job {key[1]}: launched by hand as {name}",
                now_ns, job=children.shown(child))]))
            self.launches += 1
        return child


def _when(slot: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(slot))
