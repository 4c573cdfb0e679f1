"""deploy/install.sh and the units under a real systemd, in a container that boots it: both
daemons start as Type=notify services inside their sandboxes, reload, keep their tasks
across an agent restart, are restarted by the watchdog when they hang, stop cleanly, and
uninstall stops what the agent ran.

The container gets CAP_SYS_ADMIN and CAP_SYS_PTRACE (systemd mounts the sandboxes and maps
the controller's user namespace) and no network at all.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from agent.runtime.docker import parse_time_ns
from tests.docker_engine import docker
from tests.e2e.conftest import build
from tests.e2e.harness import ROOT, wait

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.timeout(300)]


class Host:
    """A container running systemd; ``sh`` runs a command in it (its stdout)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def sh(self, script: str, check: bool = True, timeout: float = 120) -> str:
        done = subprocess.run(["docker", "exec", self.name, "sh", "-c", script],
                              capture_output=True, text=True, check=False, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"{script!r} failed ({done.returncode}): "
                                 f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
        return done.stdout

    def show(self, unit: str, prop: str) -> str:
        return self.sh(f"systemctl show -p {prop} --value {unit}").strip()

    def tasks(self) -> list[str]:
        """PIDs of the sample job's web servers (process driver)."""
        return self.sh("pgrep -f '^python3 -m http.server' || true").split()


@pytest.fixture(scope="module")
def host(docker_url: str) -> Iterator[Host]:
    began = time.time_ns() - 2_000_000_000
    image = build("systemd")
    built_now = parse_time_ns(docker("image", "inspect", "-f", "{{.Created}}", image).strip()) \
        >= began
    wheels = build("wheels")
    name = f"orch-systemd-{os.getpid()}"
    try:
        docker("run", "-d", "--name", name, "--network", "none", "--cap-add", "SYS_ADMIN",
               "--cap-add", "SYS_PTRACE", "--security-opt", "seccomp=unconfined", "--cgroupns", "private",
               "--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp", image)
        h = Host(name)
        wait("systemd up", lambda: h.sh("systemctl is-system-running", check=False).strip()
             in ("running", "degraded"), 60)
        h.sh("mkdir -p /src /wheels")
        tar = subprocess.run(["tar", "-c", "-C", str(ROOT), "deploy/install.sh", "deploy/systemd",
                              "deploy/examples/hello.yaml"], capture_output=True, check=True)
        subprocess.run(["docker", "exec", "-i", name, "tar", "-x", "-C", "/src"],
                       input=tar.stdout, check=True, timeout=60)
        docker("cp", f"{wheels}/.", f"{name}:/wheels")
        yield h
    finally:
        docker("rm", "-f", name, check=False)
        if built_now:
            docker("rmi", image, check=False)


def test_installed_units_run_reload_survive_a_hang_and_uninstall(host: Host) -> None:
    out = host.sh("/src/deploy/install.sh --wheels /wheels --drivers docker,process")
    assert "started orch-controller.service" in out
    assert "started orch-agent.service" in out
    for unit, role in (("orch-controller", "controller"), ("orch-agent", "agent")):
        # Type=notify: active only once the daemon said READY=1, with its STATUS= line
        assert host.show(unit, "ActiveState") == "active", host.sh(f"journalctl -u {unit}")
        assert host.show(unit, "StatusText").startswith(role)
        assert host.show(unit, "NRestarts") == "0"
    orchctl = "orchctl -a 127.0.0.1:4647"
    wait("the agent registered", lambda: "ready" in host.sh(f"{orchctl} node list"), 30)
    assert "nothing changed" in host.sh(
        "/src/deploy/install.sh --wheels /wheels --drivers docker,process")

    # a job of the process driver runs inside the agent's sandbox
    host.sh(f"{orchctl} job run /src/deploy/examples/hello.yaml")
    wait("three web servers", lambda: len(host.tasks()) == 3, 60)
    tasks = set(host.tasks())

    # reload: a new tag reaches gossip without a restart
    host.sh("printf 'rack = \"r7\"\\n' >> /etc/orch/agent.toml && systemctl reload orch-agent")
    wait("the tag in gossip", lambda: "rack=r7" in host.sh(f"{orchctl} members"), 30)
    assert host.show("orch-agent", "NRestarts") == "0"

    # a restarted agent adopts its tasks: nothing is stopped, nothing started twice
    host.sh("systemctl restart orch-agent")
    assert host.show("orch-agent", "ActiveState") == "active"
    wait("the agent back", lambda: "ready" in host.sh(f"{orchctl} node list"), 30)
    time.sleep(2.0)
    assert set(host.tasks()) == tasks

    # a hung controller (its loop stopped) is killed by the watchdog and started again
    host.sh("mkdir -p /etc/systemd/system/orch-controller.service.d && printf "
            "'[Service]\\nWatchdogSec=2\\n' >/etc/systemd/system/orch-controller.service.d/t.conf"
            " && systemctl daemon-reload && systemctl restart orch-controller")
    host.sh("kill -STOP $(systemctl show -p MainPID --value orch-controller)")
    wait("the watchdog's restart", lambda: host.show("orch-controller", "NRestarts") == "1"
         and host.show("orch-controller", "ActiveState") == "active", 30)
    assert "Watchdog timeout" in host.sh("journalctl -u orch-controller --no-pager")

    # SIGTERM: a clean stop, status 0
    host.sh("systemctl stop orch-controller")
    assert host.show("orch-controller", "Result") == "success"
    assert host.show("orch-controller", "ExecMainStatus") == "0"

    # uninstalled: units gone, the agent's tasks stopped, configuration and state kept
    host.sh("rm -rf /etc/systemd/system/orch-controller.service.d")
    host.sh("/src/deploy/install.sh --uninstall")
    wait("the tasks stopped", lambda: not host.tasks(), 30)
    assert host.sh("ls /etc/systemd/system/ | grep -c orch || true").strip() == "0"
    assert host.sh("ls /etc/orch /var/lib/orch").split() == [
        "/etc/orch:", "agent.toml", "controller.toml", "/var/lib/orch:", "agent", "controller"]
