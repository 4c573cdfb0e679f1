"""A controller and agents as real processes: a controller killed with SIGKILL loses nothing
and starts nothing twice; an agent killed with SIGKILL has its work moved in bounded time."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchctl.demo import EXAMPLES, Demo, free_ports, running_on, wait


@pytest.fixture
def demo() -> Iterator[Demo]:
    # a folder the tasks' unprivileged user may pass through (pytest's are private)
    workdir = Path(tempfile.mkdtemp(prefix="orch-test-cluster-"))
    d = Demo(workdir, agents=2, fast=True, driver="process", ports=free_ports())
    d.start_controller()
    d.start_agent(1)
    d.start_agent(2)
    try:
        wait("the agents", lambda: d.orchctl("-o", "json", "node", "list", show=False,
                                             check=False).count("NODE_STATUS_READY") == 2, 60)
        yield d
    finally:
        d.stop_all()
        d.cleanup_tasks()
        shutil.rmtree(workdir, ignore_errors=True)


def shims(d: Demo) -> set[int]:
    """PIDs of the task supervisors the process driver started for this cluster."""
    out = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"agent.runtime.process_shim" in cmd and str(d.dir).encode() in cmd:
                out.add(int(proc.name))
    return out


def test_a_controller_killed_with_sigkill_loses_nothing_and_starts_nothing_twice(demo: Demo) -> None:
    demo.orchctl("job", "run", str(EXAMPLES / "hello.yaml"), show=False)
    before = running_on(demo.status("hello"))
    assert len(before) == 3
    tasks = shims(demo)
    assert len(tasks) == 3
    demo.kill("controller")
    demo.start_controller()
    wait("the controller and both agents", lambda: demo.orchctl(
        "-o", "json", "node", "list", show=False, check=False).count("NODE_STATUS_READY") == 2, 60)
    time.sleep(2.0)  # let a full reconcile pass run on the restarted controller
    st = demo.status("hello")
    assert running_on(st) == before
    allocs = json.loads(demo.orchctl("-o", "json", "job", "status", "hello", show=False))
    assert len(allocs["allocations"]) == 3  # nothing placed again
    assert shims(demo) == tasks  # nothing started twice


def test_a_killed_agents_work_moves_within_detection_plus_grace(demo: Demo) -> None:
    demo.orchctl("job", "run", str(EXAMPLES / "hello.yaml"), show=False)
    before = running_on(demo.status("hello"))
    nodes = {n["name"]: n["id"] for n in json.loads(
        demo.orchctl("-o", "json", "node", "list", show=False))}
    lost = {a for a, n in before.items() if n == nodes["agent-1"]}
    assert lost
    t0 = time.monotonic()
    demo.kill("agent-1")
    took = wait("the replacements", lambda: len(running_on(demo.status("hello"))) == 3
                and not set(running_on(demo.status("hello"))) & lost, 60)
    # fast timings: gossip detection about 1 s, node grace 1 s, a start well under a second;
    # the bound leaves room for a loaded 2-core machine
    assert took < 12, f"rescheduling took {took:.1f}s"
    assert time.monotonic() - t0 >= 1.0  # not before the grace period


def test_agents_come_back_to_a_gracefully_restarted_controller(demo: Demo) -> None:
    demo.orchctl("job", "run", str(EXAMPLES / "hello.yaml"), show=False)
    before = running_on(demo.status("hello"))
    p = demo.procs["controller"]
    p.terminate()  # SIGTERM: it leaves the gossip cluster on its way out
    p.wait(20)
    demo.start_controller()  # no --join: it rejoins through the agents it knew
    wait("both agents back", lambda: demo.orchctl(
        "-o", "json", "node", "list", show=False, check=False).count("NODE_STATUS_READY") == 2, 30)
    wait("the gossip cluster to heal", lambda: sum(
        m["status"] == "alive" for m in json.loads(demo.orchctl("-o", "json", "members",
                                                                show=False))) == 3, 30)
    assert running_on(demo.status("hello")) == before
