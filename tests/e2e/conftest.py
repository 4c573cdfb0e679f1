"""The harness for the tests marked ``e2e``: built and started once per session, checked
healthy before each test, and every job a test ran removed after it.

Needs a Docker engine and docker-compose (``./run test`` installs both); without them the
tests skip, except under CI=true, where they fail. The images are built locally
(deploy/images/build.sh): ``orch/busybox:test`` and ``orch/base:bookworm`` are kept on
purpose (cached, as elsewhere in the tests); the orch image is removed at the end when
this session built it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

from agent.runtime.docker import parse_time_ns
from orch.v1 import controller_pb2
from tests.docker_engine import docker
from tests.e2e.harness import ROOT, SERVICES, Harness, started, wait

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
    if shutil.which("docker-compose") is None:
        message = "docker-compose is missing: apt-get install docker-compose (./run test does)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and the e2e tests cannot run: {message}")
        pytest.skip(message)
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


@pytest.fixture
def cluster(harness: Harness) -> Iterator[Harness]:
    """The harness, healthy: whatever a test broke is repaired before and after it, and the
    jobs it ran are stopped and their containers gone afterwards."""
    for service in SERVICES:
        harness.restore(service)
    harness.wait_healthy(within=90)
    before = job_names(harness)
    try:
        yield harness
    finally:
        for service in SERVICES:
            harness.restore(service)
        harness.wait_healthy(within=90)
        for job in job_names(harness) - before:
            harness.stop(job)
        try:
            wait("the tests' task containers to stop",
                 lambda: not harness.task_containers(all_states=False), 30)
        finally:
            harness.remove_tasks()
