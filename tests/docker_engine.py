"""Docker engines for the tests marked ``docker`` (a pytest plugin, see tests/conftest.py).

A test marked ``docker`` needs an engine answering at DOCKER_HOST (default the
socket /var/run/docker.sock). When none answers it is skipped, saying how to
get one, except under CI=true, where it fails: CI must run it. ``./run test``
installs docker.io and starts dockerd when none answers.

The test image (``orch/busybox:test``) is built once per machine by
deploy/images/build.sh and kept. Every test gets its own node id, and the
containers labelled with it are removed after the test, whatever happened.
``private_engine`` starts a dockerd of the test's own, in its own network
namespace, that the test may stop and start (the engine-dies-mid-run test);
it never touches the shared engine.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.components import require

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_HOST = "unix:///var/run/docker.sock"
HOW = ("run ./run test (it installs docker.io and starts dockerd when no engine answers), "
       "or start one yourself: apt-get install docker.io && (dockerd >/tmp/dockerd.log 2>&1 &)")


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def ping(url: str, timeout: float = 2.0) -> bool:
    """Whether a Docker engine answers ``/_ping`` at ``url`` (unix:// or tcp://)."""
    if url.startswith("unix://"):
        conn: http.client.HTTPConnection = _UnixHTTPConnection(url[len("unix://"):], timeout)
    elif url.startswith(("tcp://", "http://")):
        conn = http.client.HTTPConnection(url.split("://", 1)[1], timeout=timeout)
    else:
        return False
    try:
        conn.request("GET", "/_ping")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def docker(*args: str, url: str | None = None, check: bool = True,
           stdin: bytes | None = None) -> str:
    """Run the docker CLI (against ``url``, default DOCKER_HOST); its stdout."""
    env = dict(os.environ)
    if url is not None:
        env["DOCKER_HOST"] = url
    done = subprocess.run(["docker", *args], input=stdin, capture_output=True, env=env,
                          timeout=120, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {done.stderr.decode().strip()}")
    return done.stdout.decode()


def remove_node_containers(node: str, url: str | None = None) -> None:
    ids = docker("ps", "-aq", "--filter", f"label=orch.node={node}", url=url).split()
    if ids:
        docker("rm", "-f", *ids, url=url, check=False)


@pytest.fixture(scope="session")
def docker_url() -> str:
    url = os.environ.get("DOCKER_HOST", DEFAULT_HOST)
    require(f"a Docker engine at {url}", ping(url), HOW)
    return url


@pytest.fixture(autouse=True)
def _docker_marker(request: pytest.FixtureRequest) -> None:
    """Tests marked ``docker`` get an engine, or are skipped (fail under CI=true)."""
    if request.node.get_closest_marker("docker") is not None:
        request.getfixturevalue("docker_url")


@pytest.fixture(scope="session")
def test_image(docker_url: str) -> str:
    """``orch/busybox:test``, built from Debian's busybox-static once and kept."""
    done = subprocess.run([str(ROOT / "deploy" / "images" / "build.sh"), "test"],
                          capture_output=True, check=False, timeout=300)
    if done.returncode != 0:
        pytest.fail(f"building the test image failed: {done.stderr.decode().strip()}")
    return done.stdout.decode().split()[-1]


@pytest.fixture
def node_id(docker_url: str) -> Iterator[str]:
    """A node id of the test's own; its containers are removed afterwards."""
    node = f"test-{uuid.uuid4().hex[:10]}"
    yield node
    remove_node_containers(node)


class PrivateEngine:
    """A dockerd of the test's own, in its own network namespace, to stop and start at will."""

    def __init__(self, image: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="orch-dockerd-", dir="/tmp"))
        self.url = f"unix://{self.dir}/docker.sock"
        self.image = image
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        d = self.dir
        script = (f"ip link set lo up 2>/dev/null; exec dockerd --data-root {d}/data "
                  f"--exec-root {d}/exec --pidfile {d}/dockerd.pid -H {self.url} "
                  "--log-level warn")
        with (d / "dockerd.log").open("ab") as log:
            self.proc = subprocess.Popen(["unshare", "--net", "--fork", "sh", "-c", script],
                                         stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 30
        while not ping(self.url, timeout=1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the private dockerd did not start: see {d}/dockerd.log")
            time.sleep(0.1)

    def load_image(self) -> None:
        saved = subprocess.run(["docker", "save", self.image], capture_output=True, check=True,
                               timeout=120).stdout
        docker("load", url=self.url, stdin=saved)

    def stop(self) -> None:
        """Stop the engine as systemd would (SIGTERM to dockerd alone): its containers die."""
        if self.proc is None:
            return
        try:
            os.kill(int((self.dir / "dockerd.pid").read_text()), signal.SIGTERM)
            self.proc.wait(timeout=60)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
        with contextlib.suppress(ProcessLookupError):  # whatever is left of its group
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_engine(test_image: str) -> Iterator[PrivateEngine]:
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to run a private dockerd")
    engine = PrivateEngine(test_image)
    try:
        engine.start()
        engine.load_image()
        yield engine
    finally:
        engine.remove()
