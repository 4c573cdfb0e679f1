"""The soak benchmark's controller listens only on the benchmark's own loopback block."""

from __future__ import annotations

import tomllib
from pathlib import Path

from bench import soak


def test_every_address_of_the_controller_is_on_the_benchmarks_block() -> None:
    cfg = tomllib.loads(soak.controller_toml(Path("/nonexistent"), soak.QUICK, "sqlite", []))
    addrs = {k: v for k, v in cfg.items() if k in ("bind", "rpc_addr", "metrics_addr",
                                                   "http_addr")}
    assert set(addrs) == {"bind", "rpc_addr", "metrics_addr", "http_addr"}
    assert all(v.startswith(f"{soak.CTL_HOST}:") for v in addrs.values()), addrs
