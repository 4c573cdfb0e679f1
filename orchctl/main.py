"""orchctl: not built yet (see the controller issue); says so and exits 1."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print(
        "orchctl: the client needs the controller's gRPC API, which is not built yet;\n"
        "today: ./run demo starts a local gossip cluster.",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
