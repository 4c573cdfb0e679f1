"""The web UI's one front-end library, vendored: htmx and its server-sent events extension.

    ./run vendor                                  # fetch them again from npm and check them
    python -m controller.http.vendor --check      # the files in static/vendor are the pinned ones

Each is pinned by version and by the npm registry's own SHA-512 of its tarball (``npm
pack`` fetches it; the digest is checked before anything is unpacked), then by the SHA-256
of the one file taken from it. Their licences are kept beside them. No build step: the
browser loads the files as they are.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

VENDOR = Path(__file__).with_name("static") / "vendor"


@dataclass(frozen=True, slots=True)
class Package:
    name: str
    version: str
    integrity: str
    """``sha512-...``: the registry's digest of the tarball (``npm view NAME@V dist.integrity``)."""
    file: str
    """The file taken from the tarball (under ``package/``)."""
    target: str
    sha256: str
    """Of the file taken."""
    licence: str
    """The licence file in the tarball (kept as ``<target>.LICENSE``)."""


PACKAGES = (
    Package("htmx.org", "2.0.11",
            "sha512-Thx/WtpeOQqSrqBCw/A1cwGJGg4UrVa3+sW0GmrM3p4gJgO89ecH4qtbnyzDDWFvBTqjnIMCgELTNt636dtamA==",
            "dist/htmx.min.js", "htmx.min.js",
            "d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717", "LICENSE"),
    Package("htmx-ext-sse", "2.2.4",
            "sha512-LJmxVhykyflBWgh5PvbRidcyuqMHlgfajmmzumvKctv9puvsufeH6OaejSMZTNTnEI8O2wXXn4ZZtBdpEMqmEQ==",
            "dist/sse.min.js", "htmx-ext-sse.min.js",
            "98a46496de0c3605fbffdce9167ba427bdd9553184f83f149c261891a92c0136", "LICENSE"),
)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(p: Package, into: Path) -> tuple[bytes, bytes]:
    """The file and the licence from ``p``'s tarball, fetched by ``npm pack`` and checked."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", "--silent", f"{p.name}@{p.version}"], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL)
        (tgz,) = Path(tmp).glob("*.tgz")
        data = tgz.read_bytes()
    algo, _, want = p.integrity.partition("-")
    got = base64.b64encode(hashlib.new(algo, data).digest()).decode()
    if got != want:
        raise SystemExit(f"{p.name}@{p.version}: the tarball's {algo} is {got}, pinned {want}")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        def member(name: str) -> bytes:
            f = tar.extractfile(f"package/{name}")
            if f is None:
                raise SystemExit(f"{p.name}@{p.version} has no {name}")
            return f.read()
        return member(p.file), member(p.licence)


def check() -> list[str]:
    """What differs from the pins (empty: every vendored file is the pinned one)."""
    wrong = []
    for p in PACKAGES:
        path = VENDOR / p.target
        if not path.exists():
            wrong.append(f"{path} is missing (./run vendor)")
        elif sha256(path.read_bytes()) != p.sha256:
            wrong.append(f"{path}: sha256 {sha256(path.read_bytes())}, pinned {p.sha256}")
        if not (VENDOR / f"{p.target}.LICENSE").exists():
            wrong.append(f"{p.target}.LICENSE is missing")
    return wrong


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m controller.http.vendor")
    ap.add_argument("--check", action="store_true", help="only check the vendored files")
    opts = ap.parse_args(argv)
    if not opts.check:
        if shutil.which("npm") is None:
            print("npm is needed (apt-get install npm)", file=sys.stderr)
            return 1
        VENDOR.mkdir(parents=True, exist_ok=True)
        for p in PACKAGES:
            data, licence = fetch(p, VENDOR)
            if p.sha256 and sha256(data) != p.sha256:
                print(f"{p.name}@{p.version}: {p.file} has sha256 {sha256(data)}, pinned "
                      f"{p.sha256}", file=sys.stderr)
                return 1
            (VENDOR / p.target).write_bytes(data)
            (VENDOR / f"{p.target}.LICENSE").write_bytes(licence)
            print(f"{p.name}@{p.version}: {p.target} sha256 {sha256(data)}")
    wrong = check()
    for w in wrong:
        print(w, file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
