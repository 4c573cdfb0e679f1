"""The load balancer benchmark's harness runs end to end with its Python stand-ins (no
HAProxy, wrk or nginx needed, nothing installed) and reports what scripts read. No timings
are asserted."""

from __future__ import annotations

import json

import pytest

from bench import lb as bench


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


def test_wrk_output_is_parsed() -> None:
    out = """Running 2s test @ http://127.0.0.1:1/
  Latency Distribution
     50%  242.00us
     75%  400.00us
     90%    1.20ms
     99%    9.09ms
  2000 requests in 2.00s, 1.50GB read
  Socket errors: connect 0, read 3, write 1, timeout 0
Requests/sec: 128744.00
Transfer/sec:      1.50GB
"""
    s = bench.parse_wrk(out)
    assert (s.rps, s.p50_ms, s.p99_ms, s.errors) == (128744.0, 0.242, 9.09, 4)
    assert s.mib_s == 1536.0
