"""Parameterized and periodic jobs through orchctl (a real subprocess) against a controller
and a real agent in this process (process driver): a dispatched child runs as the task's
user with its meta in ORCH_META_<KEY> and its payload in local/payload (0400, the task
user's); children are listed under their parent; bad input (a cron expression or time zone
that does not parse, a dispatch missing required meta or with meta the job does not take, a
payload too large, a dispatch of a job that is not parameterized) says what is wrong and
changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from orch.v1 import node_pb2
from orchctl.client import FAILED
from tests.integration.live import Cli, live_cluster
from tests.integration.synthetic import wait_until

pytestmark = [pytest.mark.timeout(120)]

NET = "127.0.93"
"""This module's loopback block."""

CONVERT = """
name: convert
type: batch
parameterized:
  meta_required: [input]
  meta_optional: [mode]
  payload: required
groups:
  - name: run
    restart: {attempts: 0}
    tasks:
      - name: convert
        driver: process
        user: nobody
        command: /bin/sh
        args: ["-c", "echo input=$ORCH_META_INPUT mode=$ORCH_META_MODE; cat payload; echo;
                      stat -c 'owner=%U mode=%a' payload; id -un"]
"""

REPORT = """
name: report
type: batch
periodic:
  cron: "{cron}"
  time_zone: {zone}
groups:
  - name: run
    tasks:
      - name: report
        driver: process
        command: /bin/true
"""


async def test_a_dispatched_job_runs_with_its_meta_and_payload(tmp_path: Path) -> None:
    async with live_cluster(tmp_path, agents=1, net=NET) as (ctl, _):
        cli = Cli(ctl.rpc_address, tmp_path)
        (tmp_path / "convert.yaml").write_text(CONVERT)
        out = await cli("job", "run", str(tmp_path / "convert.yaml"))
        assert "runs when dispatched" in out
        assert not ctl.cluster.state.allocs  # a parent is never placed
        (tmp_path / "payload.txt").write_text("rows,of,data")
        out = await cli("job", "dispatch", "convert", "--meta", "input=a.csv",
                        str(tmp_path / "payload.txt"))
        assert "dispatched as 'convert/dispatch-" in out
        child = out.split("'")[3]
        key = ("default", child)

        def done() -> node_pb2.Allocation | None:
            allocs = ctl.cluster.state.allocs_of_job(key)
            return allocs[0] if allocs and allocs[0].client_status == \
                node_pb2.CLIENT_STATUS_COMPLETE else None
        await wait_until(lambda: done() is not None, within=30)
        alloc = done()
        assert alloc is not None
        assert alloc.job_meta["input"] == "a.csv"
        logs = await cli("alloc", "logs", alloc.id)
        assert "input=a.csv mode=" in logs
        assert "rows,of,data" in logs
        assert "owner=nobody mode=400" in logs
        assert logs.strip().endswith("nobody")

        status = await cli("job", "status", "convert")
        assert child in status
        assert "Children" in status
        listing = await cli("job", "status")
        assert "batch/parameterized" in listing
        got = await cli.json("job", "status", "convert")
        assert [c["name"] for c in got["children"]] == [child]
        assert got["children"][0]["status"] == "JOB_STATUS_DEAD"

        # the payload from stdin, and the optional meta
        proc_out = await cli("job", "dispatch", "convert", "--meta", "input=b", "--meta",
                             "mode=fast", str(tmp_path / "payload.txt"))
        assert "dispatched as" in proc_out


async def test_bad_input_says_what_is_wrong_and_changes_nothing(tmp_path: Path) -> None:
    async with live_cluster(tmp_path, agents=1, net=NET) as (ctl, _):
        cli = Cli(ctl.rpc_address, tmp_path)
        (tmp_path / "convert.yaml").write_text(CONVERT)
        (tmp_path / "web.yaml").write_text(cli_job())
        await cli("job", "run", str(tmp_path / "convert.yaml"))
        await cli("job", "run", "--detach", str(tmp_path / "web.yaml"))
        (tmp_path / "p").write_text("x")
        (tmp_path / "big").write_bytes(b"x" * (16 * 1024 + 1))
        state = ctl.cluster.state

        def jobs() -> dict[tuple[str, str], list[bytes]]:  # (the batch job's allocation moves)
            return {k: [v.SerializeToString() for v in vs] for k, vs in state.jobs.items()}
        before, meta = jobs(), dict(state.meta)

        (tmp_path / "bad-cron.yaml").write_text(REPORT.format(cron="61 * * * *", zone="UTC"))
        out = await cli("job", "run", str(tmp_path / "bad-cron.yaml"), code=FAILED)
        assert "periodic.cron: '61 * * * *' is not a cron expression" in out
        (tmp_path / "bad-zone.yaml").write_text(REPORT.format(cron="@daily", zone="Mars/Base"))
        out = await cli("job", "run", str(tmp_path / "bad-zone.yaml"), code=FAILED)
        assert "periodic.time_zone: unknown time zone 'Mars/Base'" in out

        out = await cli("job", "dispatch", "convert", str(tmp_path / "p"), code=FAILED)
        assert "missing required meta 'input'" in out
        out = await cli("job", "dispatch", "convert", "--meta", "input=a", "--meta", "colour=red",
                        str(tmp_path / "p"), code=FAILED)
        assert "'colour' is neither required nor optional" in out
        out = await cli("job", "dispatch", "convert", "--meta", "input=a", code=FAILED)
        assert "requires a payload" in out
        out = await cli("job", "dispatch", "convert", "--meta", "input=a", str(tmp_path / "big"),
                        code=FAILED)
        assert "larger than 16 KiB" in out
        out = await cli("job", "dispatch", "web", code=FAILED)
        assert "is not parameterized" in out
        out = await cli("job", "periodic", "force", "convert", code=FAILED)
        assert "is not periodic" in out
        out = await cli("job", "dispatch", "nope", code=FAILED)
        assert "not found" in out
        assert jobs() == before
        assert state.meta == meta


async def test_a_periodic_job_launches_children_and_force_launches_one_now(tmp_path: Path) -> None:
    async with live_cluster(tmp_path, agents=1, net=NET) as (ctl, _):
        cli = Cli(ctl.rpc_address, tmp_path)
        (tmp_path / "report.yaml").write_text(REPORT.format(cron="*/2 * * * * *", zone="UTC"))
        out = await cli("job", "run", str(tmp_path / "report.yaml"))
        assert "launches a child at each slot" in out
        listing = await cli("job", "status")
        assert "batch/periodic" in listing
        assert "in " in listing.splitlines()[1]  # the next launch
        (tmp_path / "nightly.yaml").write_text(REPORT.format(cron="@daily", zone="UTC")
                                               .replace("name: report", "name: nightly"))
        await cli("job", "run", str(tmp_path / "nightly.yaml"))
        out = await cli("job", "periodic", "force", "nightly")
        assert "launched as 'nightly/periodic-" in out
        assert [k for k in ctl.cluster.state.jobs if k[1].startswith("nightly/")]

        def kids() -> list[str]:
            return sorted(k[1] for k in ctl.cluster.state.jobs if k[1].startswith("report/"))
        await wait_until(lambda: len(kids()) >= 3, within=15)
        await wait_until(lambda: all(
            a.client_status == node_pb2.CLIENT_STATUS_COMPLETE
            for k in kids()[:2] for a in ctl.cluster.state.allocs_of_job(("default", k))), 30)
        status = await cli("job", "status", "report")
        for k in kids()[:2]:
            assert k in status
        assert "Next launch" in status
        await cli("job", "stop", "--purge", "report")
        assert kids() == []


def cli_job() -> str:
    return """
name: web
type: batch
groups:
  - name: run
    tasks: [{name: t, driver: process, command: /bin/true}]
"""
