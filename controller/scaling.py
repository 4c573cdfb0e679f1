"""The leader's autoscaling loop: every group with an enabled ``scaling`` block, every
``interval`` seconds, from what agents report (see ``usage``) to ``Jobs.scale``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from controller.autoscaler import METRICS, AutoscalerConfig, GroupScaler
from controller.jobs import Jobs
from controller.state import RUN, RUNNING, ClusterState
from controller.store.base import JobKey
from controller.usage import UsageTable

log = logging.getLogger("controller")


class Autoscaler:
    def __init__(self, state: ClusterState, jobs: Jobs, usage: UsageTable,
                 cfg: AutoscalerConfig | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.jobs = jobs
        self.usage = usage
        self.cfg = cfg or AutoscalerConfig()
        self.clock = clock
        self.scalers: dict[tuple[JobKey, str], GroupScaler] = {}

    def verdict(self, key: JobKey, group: str) -> str:
        s = self.scalers.get((key, group))
        return s.last_reason if s is not None else ""

    async def run(self) -> None:
        self.usage.watch(self.scaled_groups(), self.state.snapshot.allocs)
        while True:
            await asyncio.sleep(self.cfg.interval)
            try:
                await self.evaluate()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("autoscaling pass failed")

    def scaled_groups(self) -> set[tuple[str, str, str]]:
        """(namespace, job, group) of every group with an enabled scaling policy."""
        out: set[tuple[str, str, str]] = set()
        for key, versions in self.state.jobs.items():
            if not versions[-1].stop:
                out.update((key[0], key[1], g.name) for g in self.state.model(versions[-1]).groups
                           if g.scaling is not None and g.scaling.enabled)
        return out

    async def evaluate(self) -> None:
        now = self.clock()
        self.usage.watch(self.scaled_groups(), self.state.snapshot.allocs)
        seen: set[tuple[JobKey, str]] = set()
        for key, versions in list(self.state.jobs.items()):
            job = versions[-1]
            if job.stop:
                continue
            for group in self.state.model(job).groups:
                policy = group.scaling
                if policy is None or not policy.enabled or policy.metric not in METRICS:
                    continue
                seen.add((key, group.name))
                scaler = self.scalers.get((key, group.name))
                if scaler is None or scaler.policy != policy:
                    scaler = self.scalers[(key, group.name)] = GroupScaler(policy, self.cfg)
                allocs = [a for a in self.state.allocs_of_job(key) if a.group == group.name
                          and a.desired_status == RUN and a.client_status == RUNNING]
                value = self.usage.group_metric(policy.metric, allocs, now)
                decision = scaler.decide(group.count, value, now)
                if decision is None:
                    continue
                log.info("autoscaling", extra={"job": key[1], "group": group.name,
                                               "count": decision.count,
                                               "reason": decision.reason})
                await self.jobs.scale(key, group.name, decision.count, decision.reason)
        for k in set(self.scalers) - seen:
            del self.scalers[k]
