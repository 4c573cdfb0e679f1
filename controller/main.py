"""orch-controller: not built yet (see the controller issue); says so and exits 1."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print(
        "orch-controller: the controller service (gRPC API, store, reconciler) is not built yet;\n"
        "today orch provides gossip membership (orch-agent) and the demo (./run demo).",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
