"""The harness for the tests marked ``e2e``: built and started once per session (the HA
profile once per module that uses it), checked healthy before each test, and every job a
test ran removed after it.

Needs a Docker engine and docker-compose (``./run test`` installs both); without them the
tests skip, except under CI=true, where they fail. The images are built locally
(deploy/images/build.sh): ``orch/busybox:test`` and ``orch/base:bookworm-r2`` are kept on
purpose (cached, as elsewhere in the tests); the orch image is removed at the end when
this session built it.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

from agent.runtime.docker import parse_time_ns
from orch.v1 import controller_pb2
from tests.components import require
from tests.docker_engine import docker
from tests.e2e.ha import HaHarness
from tests.e2e.harness import ROOT, H, Harness, running, started, wait

BUILD = ROOT / "deploy" / "images" / "build.sh"


def build(target: str) -> str:
    """An image from deploy/images/build.sh (its name)."""
    done = subprocess.run([str(BUILD), target], capture_output=True, text=True, check=False,
                          timeout=600)
    if done.returncode != 0:
        pytest.fail(f"deploy/images/build.sh {target} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout.split()[-1]


def image_id(ref: str) -> str | None:
    return docker("image", "inspect", "-f", "{{.Id}}", ref, check=False).strip() or None


@pytest.fixture(scope="session")
def orch_image(docker_url: str, test_image: str) -> Iterator[str]:
    """orch/orch:<source hash>; removed at the end if this session built it, and
    orch/orch:latest put back where it pointed before."""
    require("docker-compose", shutil.which("docker-compose") is not None,
            "apt-get install docker-compose (./run test does)")
    build("base")  # kept, like the test image: a cache that takes a minute to fill
    latest_before = image_id("orch/orch:latest")
    began_ns = time.time_ns() - 2_000_000_000
    image = build("orch")
    built_now = parse_time_ns(docker("image", "inspect", "-f", "{{.Created}}", image).strip()) \
        >= began_ns
    try:
        yield image
    finally:
        # the latest tag first: an image that keeps a tag is only untagged by rmi
        if latest_before is None:
            docker("rmi", "orch/orch:latest", check=False)
        elif image_id("orch/orch:latest") != latest_before:
            docker("tag", latest_before, "orch/orch:latest", check=False)
        if built_now:
            docker("rmi", image, check=False)


@pytest.fixture(scope="session")
def harness(orch_image: str) -> Iterator[Harness]:
    with started(orch_image) as h:
        yield h


def job_names(h: Harness) -> set[str]:
    return {j.name for j in h.api.ListJobs(controller_pb2.ListJobsRequest(), timeout=10).jobs}


@contextlib.contextmanager
def repaired(h: H) -> Iterator[H]:
    """``h`` healthy: whatever a test broke is repaired before and after it, and the jobs
    it ran are stopped and their containers gone afterwards."""
    for service in h.services:
        h.restore(service)
    h.wait_healthy(within=90)
    before = job_names(h)
    try:
        yield h
    finally:
        for service in h.services:
            h.restore(service)
        h.wait_healthy(within=90)
        for job in job_names(h) - before:
            h.stop(job)
        try:
            wait("the tests' task containers to stop",
                 lambda: not h.task_containers(all_states=False), 30)
        finally:
            h.remove_tasks()


@pytest.fixture
def cluster(harness: Harness) -> Iterator[Harness]:
    """The harness, healthy, and left as it was found (``repaired``)."""
    with repaired(harness) as h:
        yield h


@pytest.fixture(scope="session")
def etcd_image(docker_url: str) -> str:
    """orch/etcd:<version>-<sha>: the host's etcd on the base image, kept (a cache, like the
    base image it is built on: a second or two to make again)."""
    require("the etcd binary", shutil.which("etcd") is not None,
            "apt-get install etcd-server (./run test does)")
    return build("etcd")


@pytest.fixture(scope="module")
def ha_harness(orch_image: str, etcd_image: str) -> Iterator[HaHarness]:
    """The Compose profile ``ha`` (three etcd members, three controllers, three agents) of a
    project and subnet of its own, up for one module and removed after it."""
    with running(HaHarness(orch_image, etcd_image)) as h:
        yield h


@pytest.fixture
def ha_cluster(ha_harness: HaHarness) -> Iterator[HaHarness]:
    """The HA harness, healthy (one leader, every member back), left as it was found."""
    with repaired(ha_harness) as h:
        yield h
