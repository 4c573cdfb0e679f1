"""deploy/: the systemd units pass ``systemd-analyze verify`` as installed, the install script
is idempotent and never overwrites configuration, uninstalling keeps the data unless purged,
and the installed daemons start from the configuration it wrote.

Everything is installed into a temporary root (``install.sh --root``), offline, from the
wheels deploy/images/build.sh makes (fetched once, then cached).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.components import require
from tests.integration.test_daemons import free_port

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "deploy" / "install.sh"
UNITS = ("orch-controller.service", "orch-agent.service")

pytestmark = pytest.mark.timeout(300)


def need(tool: str) -> None:
    require(tool, shutil.which(tool) is not None, "apt-get install systemd")


@pytest.fixture(scope="module")
def wheels() -> Path:
    done = subprocess.run([str(ROOT / "deploy" / "images" / "build.sh"), "wheels"],
                          capture_output=True, text=True, check=False, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"build.sh wheels failed: {done.stderr.strip()[-2000:]}")
    return Path(done.stdout.split()[-1])


def install(root: Path, *args: str) -> str:
    done = subprocess.run([str(INSTALL), "--root", str(root), *args], capture_output=True,
                          text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, wheels: Path) -> Path:
    need("systemctl")
    root = tmp_path_factory.mktemp("root")
    out = install(root, "--wheels", str(wheels), "--advertise", "127.0.0.41")
    assert "created user orch" in out
    return root


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path under ``root``: type, mode, owner, size, modification time, content hash."""
    out: dict[str, tuple[object, ...]] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and \
            not p.is_symlink() else os.readlink(p) if p.is_symlink() else ""
        out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, st.st_size,
                                         st.st_mtime_ns, digest)
    return out


def test_the_units_pass_systemd_analyze_verify_as_installed(installed: Path,
                                                            tmp_path: Path) -> None:
    need("systemd-analyze")
    for unit in UNITS:
        text = (installed / "etc/systemd/system" / unit).read_text()
        assert text == (ROOT / "deploy/systemd" / unit).read_text()  # default prefix
        assert (installed / "etc/systemd/system/multi-user.target.wants" / unit).is_symlink()
        # verify checks that ExecStart= exists: point it at the venv in the temporary root
        copy = tmp_path / unit
        copy.write_text(text.replace("/opt/orch/", f"{installed}/opt/orch/"))
        done = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                              text=True, check=False, timeout=60)
        # it warns (unknown keys, bad values) without failing: no output at all is the bar
        assert (done.returncode, done.stdout + done.stderr) == (0, ""), unit
        security = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(copy)],
                                  capture_output=True, text=True, check=False, timeout=60)
        m = re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout)
        assert m, security.stdout + security.stderr
        # systemd's scale: 0 (sandboxed) to 10 (exposed); the agent runs tasks, so it keeps more
        assert float(m.group(1)) <= (2.0 if "controller" in unit else 3.5), security.stdout


def test_installing_again_changes_nothing_and_keeps_the_configuration(
        installed: Path, wheels: Path) -> None:
    config = installed / "etc/orch/agent.toml"
    config.write_text(config.read_text() + '\n# an operator was here\n')
    before = snapshot(installed)
    out = install(installed, "--wheels", str(wheels), "--advertise", "127.0.0.41")
    assert "nothing changed" in out
    assert "kept /etc/orch/agent.toml" in out
    assert snapshot(installed) == before
    assert config.read_text().endswith("# an operator was here\n")


def test_the_written_configuration_is_private_and_bootstraps_a_secure_cluster(
        installed: Path) -> None:
    etc = installed / "etc/orch"
    orch_gid = next(int(line.split(":")[2]) for line in
                    (installed / "etc/group").read_text().splitlines() if line.startswith("orch:"))
    assert (etc.stat().st_mode & 0o777, etc.stat().st_gid) == (0o750, orch_gid)
    for f in ("agent.toml", "controller.toml"):
        st = (etc / f).stat()
        assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o640, 0, orch_gid)
        assert not re.search(r"^keys =", (etc / f).read_text(), re.M)  # the bootstrap makes it
    assert re.search(r"^bootstrap = true$", (etc / "controller.toml").read_text(), re.M)
    agent = (etc / "agent.toml").read_text()
    assert 'controllers = ["127.0.0.41:4647"]' in agent
    assert ('join_token_file = "/var/lib/orch/controller/pki/operator/join-agent.token"'
            in agent)
    assert 'drivers = ["docker"]' in agent  # the process driver stays off unless asked for
    assert "orch-task:" in (installed / "etc/passwd").read_text()  # process tasks' user


def test_the_installed_daemons_start_from_the_written_configuration(installed: Path,
                                                                    tmp_path: Path) -> None:
    """The installed controller and agent (the venv, the generated files) form a cluster;
    the service manager's socket sees READY and STOPPING; SIGTERM stops both cleanly."""
    host = "127.0.0.41"
    venv, etc = installed / "opt/orch/bin", installed / "etc/orch"
    cg, cr, ag = free_port(host), free_port(host), free_port(host)
    notify = tmp_path / "notify"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify))
    listener.settimeout(30)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify)}
    procs = []
    try:
        with (tmp_path / "controller.log").open("wb") as log:
            procs.append(subprocess.Popen([
                str(venv / "orch-controller"), "--config", str(etc / "controller.toml"),
                "--bind", f"{host}:{cg}", "--advertise", f"{host}:{cg}",
                "--rpc-addr", f"{host}:{cr}", "--rpc-advertise", f"{host}:{cr}",
                "--data-dir", str(tmp_path / "controller"), "--metrics-addr", "", "--http-addr", "",
                "--profile", "fast", "--node-grace", "1"], stdout=log, stderr=log, env=env))
        operator = tmp_path / "controller/pki/operator"
        assert b"READY=1" in listener.recv(4096)
        with (tmp_path / "agent.log").open("wb") as log:
            procs.append(subprocess.Popen([
                str(venv / "orch-agent"), "--config", str(etc / "agent.toml"),
                "--bind", f"{host}:{ag}", "--advertise", f"{host}:{ag}",
                "--join", f"{host}:{cg}", "--rpc-addr", f"{host}:0", "--rpc-advertise", "",
                "--data-dir", str(tmp_path / "agent"), "--metrics-addr", "", "--driver", "process",
                "--profile", "fast", "--name", "installed-agent", "--controller", f"{host}:{cr}",
                "--join-token-file", str(operator / "join-agent.token")],
                stdout=log, stderr=log, env=env))
        assert b"READY=1" in listener.recv(4096)
        deadline = time.monotonic() + 30
        while True:
            out = subprocess.run([str(venv / "orchctl"), "-a", f"{host}:{cr}", "-o", "json",
                                  "node", "list"], capture_output=True, text=True, check=False,
                                 env={**os.environ, "ORCH_CONFIG": str(operator / "orchctl.toml")})
            if out.returncode == 0 and [n["status"] for n in json.loads(out.stdout)] == [
                    "NODE_STATUS_READY"]:
                break
            assert time.monotonic() < deadline, out.stdout + out.stderr + \
                (tmp_path / "agent.log").read_text()[-2000:]
            time.sleep(0.3)
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            assert b"STOPPING=1" in listener.recv(4096)
            assert p.wait(30) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        listener.close()


def test_uninstalling_keeps_the_configuration_and_state_unless_purged(
        tmp_path: Path, wheels: Path) -> None:
    need("systemctl")
    root = tmp_path / "root"
    install(root, "--wheels", str(wheels), "--advertise", "127.0.0.42")
    (root / "var/lib/orch/controller").mkdir(parents=True)
    (root / "var/lib/orch/controller/controller.db").write_text("state")

    out = install(root, "--uninstall")
    for gone in ("opt/orch", "usr/local/bin/orchctl", "usr/lib/sysusers.d/orch.conf",
                 *(f"etc/systemd/system/{u}" for u in UNITS),
                 *(f"etc/systemd/system/multi-user.target.wants/{u}" for u in UNITS)):
        assert not os.path.lexists(root / gone), gone
    assert (root / "var/lib/orch/controller/controller.db").read_text() == "state"
    assert (root / "etc/orch/controller.toml").exists()
    assert "orch:" in (root / "etc/passwd").read_text()
    assert "kept /var/lib/orch" in out
    assert "nothing to remove" in install(root, "--uninstall")

    install(root, "--uninstall", "--purge")
    assert not (root / "var/lib/orch").exists()
    assert not (root / "etc/orch").exists()
    assert "orch:" not in (root / "etc/passwd").read_text()


def test_the_script_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    for args, message in ((["--role", "web"], "--role must be"), (["--purge"], "goes with"),
                          (["--wheels", str(tmp_path)], "no orch wheel")):
        done = subprocess.run([str(INSTALL), "--root", str(tmp_path / "r"), *args],
                              capture_output=True, text=True, check=False, timeout=30)
        assert done.returncode != 0
        assert message in done.stderr
    assert not (tmp_path / "r").exists()
