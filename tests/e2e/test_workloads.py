"""A two-tier application on the Compose harness, deployed with one job file per tier
(deploy/compose/jobs/kv.yaml and app.yaml), driven by orchctl from the host with the
operator's credentials, as a person would:

- the key-value tier keeps its data on a Docker named volume: a new container of the
  allocation, on its node, finds what the old one stored;
- the web tier answers through the routing mesh, on any agent, with the stored data;
- ``orchctl volume list`` shows the volume and who mounts it;
- ``orchctl alloc exec`` runs a command in each tier and exits with its exit code;
- ``orchctl job logs -f`` shows each tier's lines as they come, prefixed with their
  allocation and task;
- the key-value tier takes only requests with its password, a secret it reads as a file;
  the web tier finds the key-value tier and its password through templates (the service
  catalog, change_mode noop; the secret, change_mode restart): a new password restarts
  both tiers, the web tier with its template rendered again, and the old password is
  refused from then on.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from orch.jobspec import load_job_file
from orch.v1 import controller_pb2, job_pb2, node_pb2
from tests.docker_engine import docker
from tests.e2e.harness import ROOT, Harness, wait

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.timeout(600)]
JOBS = ROOT / "deploy" / "compose" / "jobs"


def orchctl(h: Harness, *args: str, stdin: bytes | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """orchctl on the host, with the operator's credentials, against the controller."""
    return subprocess.run(
        [sys.executable, "-m", "orchctl.main", "--address", f"{h.ip('controller')}:4647", *args],
        input=stdin.decode() if stdin is not None else None, capture_output=True, text=True,
        timeout=timeout, check=False, cwd=ROOT,
        env={**os.environ, "ORCH_CONFIG": str(h.operator_dir / "orchctl.toml")})


@contextlib.contextmanager
def following(h: Harness, *args: str) -> Iterator[list[str]]:
    """``orchctl ARGS`` running (``job logs -f``): the lines it prints so far, stdout and
    stderr alike, as they come."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchctl.main", "--address", f"{h.ip('controller')}:4647", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        env={**os.environ, "ORCH_CONFIG": str(h.operator_dir / "orchctl.toml")})
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield lines
        assert proc.poll() is None, f"orchctl {' '.join(args)} ended: {lines}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        reader.join(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()


def request(url: str, body: bytes | None = None, timeout: float = 3) -> str:
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return str(r.read().decode())
    except urllib.error.HTTPError as e:
        e.close()  # it holds the connection
        raise


def tier(name: str, volume: str = "") -> job_pb2.Job:
    job = load_job_file(JOBS / f"{name}.yaml")
    if volume:  # a volume of this run's own (harnesses of other runs share the engine)
        job.groups[0].volumes["data"].source = volume
    return job


def kv_container(h: Harness, alloc_id: str) -> str:
    found = h.job_containers("kv").get(alloc_id, [])
    return found[0] if len(found) == 1 else ""


PASSWORD, NEW_PASSWORD = "s3cret-1", "s3cret-2"


def test_a_two_tier_application(cluster: Harness) -> None:
    h = cluster
    volume = f"kv-data-{h.project}"
    put = orchctl(h, "secret", "put", "kv-password", "-", stdin=PASSWORD.encode())
    assert put.returncode == 0, put.stderr
    try:
        # one job file per tier, the data tier first
        for name, job in (("kv", tier("kv", volume)), ("app", tier("app"))):
            version = h.run(job).version
            wait(f"{name} deployed", functools.partial(h.deployed, name, version,
                                                       job.groups[0].count), 120)
        (kv,) = h.running("kv")
        kv_node = h.ip(h.node_of(kv))
        kv_url = f"http://{kv_node}:{kv.ports['http']}/cgi-bin/kv"
        pw = f"&pw={PASSWORD}"

        with following(h, "job", "logs", "kv", "-f", "--all") as kv_lines, \
                following(h, "job", "logs", "app", "-f", "--all") as app_lines:
            # the data tier stores; the web tier answers with it through the mesh, anywhere
            assert request(f"{kv_url}?greeting{pw}", b"hello from the volume") == "stored\n"
            for agent in ("agent-1", "agent-5"):
                url = f"http://{h.ip(agent)}:8088/cgi-bin/app"
                body = wait(f"the app through the mesh on {agent}",
                            functools.partial(request, url), 30)
                assert body == "greeting: hello from the volume\n"
            # job logs -f shows both tiers, each line under its allocation and task
            wait("the kv tier's lines", lambda: any(
                line.startswith(f"kv.store[0] {kv.id[:8]} kv") and "kv: stored greeting" in line
                for line in kv_lines), 30)
            wait("the app tier's lines", lambda: any(
                line.startswith("app.web[") and " web " in line and "app: served the greeting"
                in line for line in app_lines), 30)
            assert any("kv: serving /data on port" in line for line in kv_lines)

        # a new container on the same node (the old one removed) finds the stored data
        old = kv_container(h, kv.id)
        docker("rm", "-f", old)
        new = wait("a new kv container", lambda: (c := kv_container(h, kv.id)) != old and c, 60)
        assert new != old
        # running again as its agent reports it (a restart's pending report is held up to a
        # second for the running one that follows it)
        again = wait("kv running again", lambda: h.running("kv"), 30)
        assert again[0].node_id == kv.node_id
        assert wait("the data, from the new container", lambda: request(
            f"{kv_url}?greeting{pw}"), 60) == "hello from the volume"

        # the volume, and who mounts it
        listed = json.loads(orchctl(h, "-o", "json", "volume", "list", "--job", "kv").stdout)
        assert [(v["name"], v["type"], v["allocations"]) for v in listed] == [
            (volume, "docker", [kv.id])]

        # a command in each tier; its exit code is orchctl's
        done = orchctl(h, "alloc", "exec", kv.id[:8], "--", "sh", "-c",
                       'cat "$ORCH_VOLUME_data/greeting"; exit 3')
        assert (done.returncode, done.stdout) == (3, "hello from the volume"), done.stderr
        app = h.running("app")[0]
        done = orchctl(h, "alloc", "exec", "-i", app.id, "--task", "web", "--", "sh", "-c",
                       '. /local/kv.env; . /secrets/kv-password.env; wget -qO- '
                       '"http://$KV_ADDR/cgi-bin/kv?greeting&pw=$KV_PASSWORD"; tr a-z A-Z',
                       stdin=b"and input\n")
        assert (done.returncode, done.stdout) == (0, "hello from the volumeAND INPUT\n"), \
            done.stderr

        # the secret changes: the key-value tier restarts with it, the web tier's password
        # template is rendered again and the web tier restarted, as its change_mode asks
        put = orchctl(h, "secret", "put", "kv-password", "-", stdin=NEW_PASSWORD.encode())
        assert put.returncode == 0, put.stderr

        def restarts(alloc_id: str, task: str) -> int:
            st = h.api.GetAllocation(controller_pb2.GetAllocationRequest(id=alloc_id), timeout=5)
            return st.tasks[task].restarts
        wait("the kv tier restarted", lambda: restarts(kv.id, "kv") >= 1, 60)
        wait("the web tier restarted", lambda: restarts(app.id, "web") >= 1, 60)
        assert wait("the greeting, with the new password", functools.partial(
            request, f"http://{h.ip('agent-3')}:8088/cgi-bin/app"), 60) == \
            "greeting: hello from the volume\n"
        with pytest.raises(urllib.error.HTTPError) as refused:
            request(f"{kv_url}?greeting{pw}")
        assert refused.value.code == 403
        shown = orchctl(h, "-o", "json", "job", "status", "app").stdout + \
            orchctl(h, "-o", "json", "alloc", "status", app.id).stdout + \
            orchctl(h, "events", "--since", "1").stdout
        assert NEW_PASSWORD not in shown
        assert PASSWORD not in shown

        # into an allocation that no longer runs: refused, saying why
        assert orchctl(h, "job", "stop", "app").returncode == 0
        wait("the app stopped", lambda: h.api.GetAllocation(controller_pb2.GetAllocationRequest(
            id=app.id), timeout=5).client_status == node_pb2.CLIENT_STATUS_COMPLETE, 60)
        done = orchctl(h, "alloc", "exec", app.id, "--", "true")
        assert done.returncode == 1
        assert "a command runs only in a running allocation" in done.stderr
        events = orchctl(h, "events", "--type", "AllocationExec").stdout
        assert "runs sh -c 'cat \"$ORCH_VOLUME_data/greeting\"; exit 3' in task kv" in events
        assert "and input" not in events  # who ran what; never the stream
    finally:
        h.stop("app")
        h.stop("kv")
        wait("the tiers' containers to go", lambda: not h.job_containers("kv")
             and not h.job_containers("app"), 60)
        deadline = time.monotonic() + 30
        while docker("volume", "rm", volume, check=False) == "" and time.monotonic() < deadline \
                and volume in docker("volume", "ls", "-q"):
            time.sleep(1)
        assert volume not in docker("volume", "ls", "-q").split()
        orchctl(h, "secret", "rm", "kv-password")


def test_a_job_that_mounts_a_host_volume_no_node_has_is_not_placed(cluster: Harness) -> None:
    job = tier("kv")
    job.name = "nowhere"
    job.groups[0].volumes["data"].type = "host"
    job.groups[0].services[0].published_port = 0
    job.groups[0].tasks[0].ClearField("secrets")
    reply = cluster.run(job)  # registered (as Nomad does), placed once a node has the volume
    (failure,) = reply.plan.failures
    assert failure.explanation.endswith("5 nodes filtered by missing host volume kv-data")
    assert not cluster.running("nowhere")
