"""Regenerate ``orch/v1`` from ``protos/orch/v1/*.proto`` (the one command: ``./run proto``).

``--check`` regenerates into a temporary folder and fails when the committed
code differs, so CI notices a stale ``orch/v1``.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
PACKAGE = Path("orch") / "v1"


def generate(out: Path) -> list[Path]:
    """Run protoc on every proto file; return the files it wrote under ``out``."""
    from grpc_tools import protoc  # a development dependency only

    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / PACKAGE).glob("*.proto"))
    if not sources:
        raise SystemExit(f"no .proto files under {PROTOS / PACKAGE}")
    include = Path(protoc.__file__).parent / "_proto"
    (out / PACKAGE).mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    init = out / PACKAGE / "__init__.py"
    init.write_text('"""Generated from protos/orch/v1 by `./run proto`: do not edit."""\n')
    return sorted(p for p in (out / PACKAGE).iterdir() if p.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="fail if orch/v1 is stale")
    opts = ap.parse_args(argv)
    if not opts.check:
        for old in (ROOT / PACKAGE).glob("*_pb2*.py*"):
            old.unlink()
        written = generate(ROOT)
        print(f"wrote {len(written)} files under {PACKAGE}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        names = {p.name for p in fresh}
        committed = {p.name for p in (ROOT / PACKAGE).iterdir() if p.is_file()}
        stale = sorted(names ^ committed)
        stale += [n for n in sorted(names & committed)
                  if not filecmp.cmp(Path(tmp) / PACKAGE / n, ROOT / PACKAGE / n, shallow=False)]
    if stale:
        print(f"orch/v1 is stale ({', '.join(stale)}): run ./run proto", file=sys.stderr)
        return 1
    print("orch/v1 is up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
