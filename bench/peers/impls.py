"""The three implementations: how to get each one here and how to start its worker.

orch        this tree (``python -m bench.peers.member orch``), ``GossipConfig.lan()``
memberlist  HashiCorp memberlist from Debian (``golang-github-hashicorp-memberlist-dev``),
            ``DefaultLANConfig``, built offline with Debian's ``golang-go`` in GOPATH mode
            (``GO111MODULE=off``, ``GOPATH=/usr/share/gocode``: no module download), cached
            in ``~/.cache/orch-bench`` by a hash of the program, Go and the package versions
kinship     kinship from PyPI (Rust core with Lifeguard), ``Config.lan()``, installed into
            this interpreter's environment with pip when missing

Each comes back with a reason instead of a command when it cannot run; the benchmark then
prints "n/a" and the reason in its column.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GO_SOURCE = ROOT / "bench" / "memberlist" / "main.go"
GOPATH = Path("/usr/share/gocode")
MEMBERLIST_SRC = GOPATH / "src" / "github.com" / "hashicorp" / "memberlist"
DEBIAN_PACKAGES = ("golang-go", "golang-github-hashicorp-memberlist-dev")
KINSHIP_REQUIREMENT = "kinship>=0.4,<0.5"
NAMES = ("orch", "memberlist", "kinship")
PORTS = {"orch": 7946, "memberlist": 7947, "kinship": 7948}
"""Every implementation on the same addresses, each on its own port, so that all three can
run at once and iptables rules (loss, partitions, byte counts) can tell them apart."""


@dataclass(slots=True)
class Impl:
    name: str
    argv: list[str] | None
    version: str
    reason: str = ""
    """Why it cannot run here ('' when it can)."""

    @property
    def ok(self) -> bool:
        return self.argv is not None


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "orch-bench"


def _say(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


def _out(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600, **kw)  # type: ignore[call-overload, no-any-return]


def orch() -> Impl:
    return Impl("orch", [sys.executable, "-m", "bench.peers.member", "orch"],
                "orch (this tree), GossipConfig.lan()")


def _deb_version(pkg: str) -> str:
    if shutil.which("dpkg-query") is None:
        return ""
    p = _out(["dpkg-query", "-W", "-f=${Status} ${Version}", pkg])
    return p.stdout.split()[-1] if p.returncode == 0 and "installed" in p.stdout else ""


def apt_install(packages: list[str]) -> str:
    """Install Debian packages (root only); '' or why not."""
    if os.geteuid() != 0:
        return "not root"
    _say(f"installing Debian packages with apt-get: {' '.join(packages)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    if _out(cmd, env=env).returncode == 0:
        return ""
    _out(["apt-get", "update", "-q"], env=env)
    p = _out(cmd, env=env)
    return "" if p.returncode == 0 else (p.stderr.strip().splitlines() or ["apt-get failed"])[-1]


def memberlist(install: bool) -> Impl:
    missing = [p for p in DEBIAN_PACKAGES if not _deb_version(p)]
    if missing and install:
        why = apt_install(missing)
        if why:
            return Impl("memberlist", None, "", f"apt-get install {' '.join(missing)}: {why}")
        missing = [p for p in DEBIAN_PACKAGES if not _deb_version(p)]
    go = shutil.which("go") or ("/usr/lib/go/bin/go" if Path("/usr/lib/go/bin/go").exists() else None)
    if missing or go is None or not MEMBERLIST_SRC.is_dir():
        return Impl("memberlist", None, "",
                    f"Debian packages {' '.join(missing or DEBIAN_PACKAGES)} are not installed"
                    + ("" if install else " (--no-install)"))
    go_version = _out([go, "version"]).stdout.strip()
    ml_version = _deb_version("golang-github-hashicorp-memberlist-dev")
    key = hashlib.sha256(GO_SOURCE.read_bytes() + go_version.encode() + ml_version.encode())
    binary = cache_dir() / f"memberlist-bench-{key.hexdigest()[:16]}"
    version = f"memberlist {ml_version} (Debian), {go_version.removeprefix('go version ')}"
    if not binary.exists():
        binary.parent.mkdir(parents=True, exist_ok=True)
        _say(f"building {GO_SOURCE.relative_to(ROOT)} against Debian's memberlist {ml_version} "
             "(offline, GOPATH mode)")
        env = dict(os.environ, GO111MODULE="off", GOPATH=str(GOPATH), GOFLAGS="", GOPROXY="off",
                   GOTOOLCHAIN="local", CGO_ENABLED="0", GOCACHE=str(cache_dir() / "go-build"))
        tmp = binary.with_suffix(".tmp")
        p = _out([go, "build", "-o", str(tmp), str(GO_SOURCE)], env=env, cwd=str(ROOT))
        if p.returncode != 0:
            return Impl("memberlist", None, version, "go build failed: "
                        + " | ".join(p.stderr.strip().splitlines()[-3:]))
        tmp.rename(binary)
    return Impl("memberlist", [str(binary)], version)


def kinship(install: bool) -> Impl:
    probe = [sys.executable, "-c", "import kinship; print(kinship.__version__)"]
    p = _out(probe)
    if p.returncode != 0 and install:
        _say(f"installing {KINSHIP_REQUIREMENT} from PyPI with pip")
        pip = _out([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    KINSHIP_REQUIREMENT])
        if pip.returncode != 0:
            lines = [x for x in pip.stderr.strip().splitlines() if "WARNING" not in x]
            return Impl("kinship", None, "", "pip install failed: " + (lines or ["?"])[-1])
        p = _out(probe)
    if p.returncode != 0:
        err = (p.stderr.strip().splitlines() or ["?"])[-1]
        return Impl("kinship", None, "", f"cannot import kinship ({err})"
                    + ("" if install else "; --no-install"))
    return Impl("kinship", [sys.executable, "-m", "bench.peers.member", "kinship"],
                f"kinship {p.stdout.strip()} (PyPI), Config.lan(), no encryption")


def prepare(names: list[str], install: bool) -> dict[str, Impl]:
    out: dict[str, Impl] = {}
    for n in names:
        if n == "orch":
            out[n] = orch()
        elif n == "memberlist":
            out[n] = memberlist(install)
        elif n == "kinship":
            out[n] = kinship(install)
        else:
            raise ValueError(f"unknown implementation {n!r} (choose from {', '.join(NAMES)})")
    return out
