"""The autoscaler on real processes: CPU load scales a group out, quiet scales it back in."""

from __future__ import annotations

from pathlib import Path

from orch.jobspec import parse_job
from tests.integration.live import live_cluster
from tests.integration.synthetic import wait_until

BURNER = """
name: burner
update: {min_healthy_time: 0s}
groups:
  - name: work
    count: 1
    scaling: {enabled: true, metric: cpu, target: 50, min: 1, max: 2, cooldown: 1s}
    tasks:
      - name: burn
        driver: process
        command: python3
        # a full core (400 % of what it asks) for 6 s, then nothing
        args: ["-c", "import time\\nt = time.time() + 6\\nwhile time.time() < t: pass\\ntime.sleep(600)"]
        resources: {cpu_millicores: 250, memory_mb: 32}
"""


async def test_cpu_load_scales_out_and_quiet_scales_back_in(tmp_path: Path) -> None:
    async with live_cluster(tmp_path, agents=1, usage_interval=1.0, autoscale_interval=1.0,
                            autoscale_stabilization=3.0) as (ctl, _):
        key = ("default", "burner")
        await ctl.jobs.register(parse_job(BURNER, "burner.yaml"))

        def count() -> int:
            job = ctl.cluster.state.job(key)
            return job.groups[0].count if job is not None else -1

        await wait_until(lambda: count() == 2, within=30)  # out, and no further than max
        assert "cpu" in ctl.autoscaler.verdict(key, "work")
        await wait_until(lambda: count() == 1, within=60)  # back in once it is quiet
        history = ctl.jobs.history(key)
        counts = [v.job.groups[0].count for v in reversed(history.versions)]
        assert counts == [1, 2, 1]
        assert any(e.type == "JobScaled" and "autoscaler" in e.message
                   for e in ctl.cluster.events.recent)
