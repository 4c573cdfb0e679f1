"""The load balancer benchmark's harness runs end to end with its Python stand-ins (no
HAProxy, wrk or nginx needed, nothing installed) and reports what scripts read. No timings
are asserted."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from bench import lb as bench
from tests.components import require


@pytest.mark.timeout(120, method="thread")
def test_orch_alone_with_python_backend_and_client(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--quick", "--json", "--no-install", "--only", "direct,orch", "--backend", "python",
            "--client", "python", "--duration", "0.5", "--connections", "4",
            "--modes", "keepalive,close"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    for key in ("rps_ratio_vs_haproxy", "p99_ratio_vs_haproxy", "rps_ratio_vs_direct", "fd_leak"):
        assert key in result
    assert result["rps_ratio_vs_haproxy"] is None  # not measured
    assert result["fd_leak"] == 0
    assert result["orch_close_fd_leak"] == 0
    for mode in ("keepalive", "close"):
        cell = result["results"][mode]["orch"]
        assert cell["rps"] > 0
        assert cell["errors"] == 0
    assert result["rps_ratio_vs_direct"] > 0
    assert any(line.startswith("orch ") for line in out)


@pytest.mark.timeout(180, method="thread")
def test_the_kernel_target_runs_in_a_namespace_of_its_own(capfd: pytest.CaptureFixture[str]) -> None:
    from tests.integration.netns_util import why_not
    require("network namespaces with nftables", not why_not(), why_not() or "")
    argv = ["--quick", "--json", "--no-install", "--only", "direct,kernel", "--backend",
            "python", "--client", "python", "--duration", "0.5", "--connections", "4",
            "--modes", "keepalive,close"]
    assert bench.main(argv) == 0
    out = capfd.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    for key in ("kernel_rps_ratio_vs_direct_keepalive", "kernel_rps_ratio_vs_haproxy_close",
                "kernel_p99_ratio_vs_haproxy", "kernel_update_ms_p99", "fd_leak"):
        assert key in result
    assert result["kernel_update_endpoints"] == 1000
    assert result["kernel_update_ms_p99"] > 0
    assert result["kernel_fd_leak"] == 0
    assert result["kernel_flows"] > 0  # the kernel's own counter saw the client's flows
    for mode in ("keepalive", "close"):
        assert result["results"][mode]["kernel"]["errors"] == 0
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                             check=False).stdout
    assert f"{bench.NETNS_PREFIX}-{os.getpid()}" not in listing  # removed
