"""orch-agent (being built)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    raise SystemExit("orch-agent: not built yet")
