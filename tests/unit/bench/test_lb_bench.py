"""The load balancer benchmark's parsing of what it measures with (pure; the harness's end-to-end
run is in tests/integration/test_lb_bench.py)."""

from __future__ import annotations

from bench import lb as bench


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
