"""Load balancer benchmark: orch's L4 proxy beside HAProxy and the backend itself.

    python -m bench.lb                 # the full run: 3 rounds × 2 modes × 3 targets × 10 s
    python -m bench.lb --quick         # one round of 2 s each
    python -m bench.lb --json          # the last line of stdout is one JSON object
    ./run bench lb                     # the same, from the repository

Targets, side by side in one run, interleaved so that a busy moment of the machine
hits each of them alike:
  direct   wrk straight to one backend endpoint (the physical limit here)
  haproxy  Debian's HAProxy 2.6, TCP mode, ``nbthread 1``, round robin over the endpoints
  orch     orch's LoadBalancer in one process under uvloop, round robin, default LbConfig
  kernel   orch's kernel data plane: nftables DNAT (round robin) programmed by
           ``KernelBalancer`` in one process; the bytes never reach user space

With ``kernel`` among the targets the whole run (backends, proxies, client) happens in a
network namespace of its own (``orch-bench-lb-<pid>``, removed at the end), so that the
table the kernel target writes never meets the host's ruleset; the other targets run there
alike, so the comparison stays fair. Before serving, the kernel worker measures updates:
a service of 1,000 endpoints, one endpoint removed or added 200 times, each the time from
``update`` to the committed transaction (from then on new flows use it):
``kernel_update_ms_p99``.

Modes: ``keepalive`` (50 connections, each sending request after request), ``close``
(``Connection: close``: a new TCP connection per request, through the proxy a new
endpoint connection too) and ``bulk`` (one connection downloading a 64 MiB response again
and again: bytes per second and the proxy's CPU seconds per GiB, where copies and
zero-copy paths would show). Each cell is the median of the rounds.

Backend: Debian's nginx-light, one worker, on loopback addresses of each target's own
(three per proxy, ``ENDPOINTS``), answering ``GET /`` with a 3-byte body from memory,
keep-alive on, no access log: the fastest honest backend here (HAProxy itself as a
backend was slower at serving HTTP).
Missing Debian packages (haproxy, wrk, nginx-light) are installed with apt-get, saying
so, unless ``--no-install``; without them only what can run is measured, with Python's
stand-ins (``--backend python``, ``--client python``) for the backend and the load.

Beside requests per second and latency it reports each proxy's CPU time per request
(user + system, from /proc): on a shared 2-core machine the throughput depends on what
else runs, the CPU cost much less. orch's open file descriptors and resident memory are
read before the load and after it (connections closed): ``fd_leak`` is the difference.
Benchmarks print figures; nothing here passes or fails on timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ENDPOINTS = {
    "direct": ("127.0.65.1",),
    "haproxy": ("127.0.66.1", "127.0.66.2", "127.0.66.3"),
    "orch": ("127.0.67.1", "127.0.67.2", "127.0.67.3"),
    "kernel": ("127.0.68.1", "127.0.68.2", "127.0.68.3"),
}
"""The backend's addresses each target reaches it at (one nginx worker listening on all):
a target's connections in TIME_WAIT never meet another target's new ones on the same
4-tuple, as clients on other hosts would not. Sharing them cost the target that ran after
another up to half of its close-mode rate (SYNs dropped by the backend's TIME_WAIT)."""
BACKEND_HOSTS = tuple(h for hosts in ENDPOINTS.values() for h in hosts)
PROXY_HOST = "127.0.0.1"
RESPONSE_BODY = b"ok\n"
PACKAGES = {"haproxy": "haproxy", "wrk": "wrk", "nginx": "nginx-light"}
MODES = ("keepalive", "close", "bulk")
BIG = 64 * 1024 * 1024
"""Bytes of the bulk mode's response (``GET /big``)."""
TARGETS = ("direct", "haproxy", "orch", "kernel")
NETNS_PREFIX = "orch-bench-lb"
UPDATE_ENDPOINTS = 1000
UPDATE_ROUNDS = 200


def log(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


# --- tools --------------------------------------------------------------------------------
def ensure_tools(install: bool) -> dict[str, bool]:
    """Which of haproxy, wrk and nginx are here; installs the missing ones when asked."""
    missing = [PACKAGES[t] for t in PACKAGES if shutil.which(t) is None
               and not (t == "nginx" and Path("/usr/sbin/nginx").exists())]
    if missing and install:
        if os.geteuid() != 0:
            log(f"missing Debian packages {' '.join(missing)}: not root, not installing")
        else:
            print(f"installing Debian packages with apt-get: {' '.join(missing)}", flush=True)
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
            if subprocess.run(cmd, env=env, capture_output=True, check=False).returncode != 0:
                subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
                subprocess.run(cmd, env=env, capture_output=True, check=False)
    return {t: shutil.which(t) is not None or (t == "nginx" and Path("/usr/sbin/nginx").exists())
            for t in PACKAGES}


def tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=10)
    except OSError:
        return "missing"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing answers on {host}:{port}") from None
            time.sleep(0.05)


# --- processes ----------------------------------------------------------------------------
@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self) -> None:
        """SIGTERM to the process group it leads (nginx's workers too), then SIGKILL."""
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)


def spawn(name: str, cmd: list[str], workdir: Path, **kw: Any) -> Proc:
    with (workdir / f"{name}.log").open("wb") as out:  # the child keeps its own copy
        p = subprocess.Popen(cmd, stdout=out, stderr=out, start_new_session=True,
                             cwd=kw.pop("cwd", None), env=kw.pop("env", None))
    return Proc(name, p)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/nginx.err warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {dir}/cb; proxy_temp_path {dir}/px; fastcgi_temp_path {dir}/fc;
  uwsgi_temp_path {dir}/uw; scgi_temp_path {dir}/sc;
  keepalive_requests 10000000;
  keepalive_timeout 60s;
  sendfile on;
  server {{
    {listen}
    location / {{ return 200 "ok\\n"; }}
    location = /big {{ alias {dir}/big.bin; default_type application/octet-stream; }}
  }}
}}
"""

HAPROXY_CONF = """\
global
  nbthread 1
  maxconn 8192
defaults
  mode tcp
  timeout connect 2s
  timeout client 600s
  timeout server 600s
frontend fe
  bind {host}:{port}
  default_backend be
backend be
  balance roundrobin
{servers}
"""


def start_nginx(workdir: Path, port: int) -> Proc:
    listen = " ".join(f"listen {h}:{port};" for h in BACKEND_HOSTS)
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=workdir, listen=listen))
    big = workdir / "big.bin"
    big.write_bytes(bytes(range(256)) * (BIG // 256))
    big.chmod(0o644)
    workdir.chmod(0o711)  # nginx's workers run as another user
    p = spawn("nginx", [shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(conf)], workdir)
    wait_port(BACKEND_HOSTS[0], port)
    return p


def start_python_backend(workdir: Path, port: int) -> Proc:
    cmd = [sys.executable, "-m", "bench.lb", "--serve-backend", str(port)]
    p = spawn("pybackend", cmd, workdir, cwd=ROOT)
    wait_port(BACKEND_HOSTS[0], port)
    return p


def start_haproxy(workdir: Path, port: int, backend_port: int) -> Proc:
    servers = "\n".join(f"  server s{i} {h}:{backend_port}"
                         for i, h in enumerate(ENDPOINTS["haproxy"]))
    conf = workdir / "haproxy.cfg"
    conf.write_text(HAPROXY_CONF.format(host=PROXY_HOST, port=port, servers=servers))
    p = spawn("haproxy", ["haproxy", "-f", str(conf), "-db"], workdir)
    wait_port(PROXY_HOST, port)
    return p


def start_orch(workdir: Path, port: int, backend_port: int) -> Proc:
    eps = ",".join(f"{h}:{backend_port}" for h in ENDPOINTS["orch"])
    cmd = [sys.executable, "-m", "bench.lb", "--serve-orch", str(port), eps]
    p = spawn("orch", cmd, workdir, cwd=ROOT)
    wait_port(PROXY_HOST, port)
    return p


def start_kernel(workdir: Path, port: int, backend_port: int) -> Proc:
    eps = ",".join(f"{h}:{backend_port}" for h in ENDPOINTS["kernel"])
    cmd = [sys.executable, "-m", "bench.lb", "--serve-kernel", str(port), eps]
    p = spawn("kernel", cmd, workdir, cwd=ROOT)
    wait_port(PROXY_HOST, port, timeout=60)
    return p


# --- the orch worker and the Python stand-ins (run as subprocesses) --------------------------
async def _serve_orch(port: int, endpoints: str) -> None:
    from agent.lb.balancer import LoadBalancer
    from agent.lb.config import LbConfig
    from agent.lb.model import Endpoint, ServiceSpec

    eps = []
    for i, hp in enumerate(endpoints.split(",")):
        host, _, p = hp.rpartition(":")
        eps.append(Endpoint(alloc_id=f"bench-{i}", node="bench", host=host, port=int(p)))
    lb = LoadBalancer(LbConfig(), bind_host=PROXY_HOST)
    await lb.update({"bench": ServiceSpec(name="bench", published_port=port, endpoints=tuple(eps))})
    listening = fd_count(os.getpid())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    began = time.perf_counter()
    await lb.close()
    took = time.perf_counter() - began
    # After close() only the listening socket may be gone: anything else is a leak.
    print(json.dumps({"close_ms": round(took * 1e3, 2),
                      "close_fd_leak": fd_count(os.getpid()) - (listening - 1)}), flush=True)


async def _serve_kernel(port: int, endpoints: str) -> None:
    from agent.lb.config import LbConfig
    from agent.lb.kernel import KernelBalancer
    from agent.lb.model import Endpoint, ServiceSpec

    kb = KernelBalancer(LbConfig())
    loop = asyncio.get_running_loop()
    # Updates with 1,000 endpoints in the table (127.3.x.y: nothing answers there; only the
    # table is measured), then the benchmark's service alone.
    many = [Endpoint(alloc_id=f"u{i}", node="bench", host=f"127.3.{i // 250}.{i % 250 + 1}",
                     port=9000, local=True) for i in range(UPDATE_ENDPOINTS + 1)]
    times = []
    for i in range(UPDATE_ROUNDS + 1):
        eps_now = many[:UPDATE_ENDPOINTS] if i % 2 == 0 else many
        began = time.perf_counter()
        await kb.update({"updates": ServiceSpec(name="updates", published_port=port + 1,
                                                endpoints=tuple(eps_now))})
        if i:  # the first one builds the table
            times.append(time.perf_counter() - began)
    times.sort()
    eps = []
    for i, hp in enumerate(endpoints.split(",")):
        host, _, p = hp.rpartition(":")
        eps.append(Endpoint(alloc_id=f"bench-{i}", node="bench", host=host, port=int(p),
                            local=True))
    await kb.update({"bench": ServiceSpec(name="bench", published_port=port,
                                          endpoints=tuple(eps))})
    print(json.dumps({"update_ms_p50": round(times[len(times) // 2] * 1e3, 2),
                      "update_ms_p99": round(times[int(len(times) * 0.99)] * 1e3, 2),
                      "update_ms_max": round(times[-1] * 1e3, 2),
                      "update_endpoints": UPDATE_ENDPOINTS, "updates": len(times)}), flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    kb._stats_cache = (-1.0, {})
    st = kb.stats().get("bench")
    await kb.close()
    print(json.dumps({"kernel_flows": st.total if st else None,
                      "kernel_bytes_out": st.bytes_out if st else None}), flush=True)


class _HttpBackend(asyncio.Protocol):
    """Answers every request (a blank line ends it) with the fixed response; keep-alive."""

    RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\n"
                + RESPONSE_BODY)
    BIG_RESPONSE = b""
    """Set when the stand-in starts (not at import: the orch worker imports this module)."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        n = self.buf.count(b"\r\n\r\n")
        if n:
            close = b"connection: close" in self.buf.lower()
            big = self.buf.startswith(b"GET /big ")
            self.buf = self.buf[self.buf.rfind(b"\r\n\r\n") + 4:]
            self.transport.write(self.BIG_RESPONSE if big else self.RESPONSE * n)
            if close:
                self.transport.close()


async def _serve_backend(port: int) -> None:
    _HttpBackend.BIG_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG) + bytes(BIG)
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(_HttpBackend, h, port, backlog=1024) for h in BACKEND_HOSTS]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for s in servers:
        s.close()


# --- load ---------------------------------------------------------------------------------
@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us_per_req: float | None = None
    mib_s: float = 0.0
    """Response bytes per second, in MiB."""
    cpu_s_per_gib: float | None = None
    stack: dict[str, int] = field(default_factory=dict)
    """What the network stack counted during the cell (``stack_counters``)."""


STACK_COUNTERS = ("TCPSynRetrans", "TCPTimeWaitOverflow", "PAWSActive", "PAWSEstab",
                  "TW", "ListenOverflows", "ListenDrops", "TCPReqQFullDrop")
"""TCP counters of /proc/net/netstat and /proc/net/snmp that tell why connections stall."""
CONNTRACK_COUNTERS = {"clashres": 1, "insert_failed": 10, "drop": 11, "early_drop": 12}
"""Columns of /proc/net/stat/nf_conntrack (summed over CPUs) that tell a full or clashing
connection-tracking table."""


def stack_counters() -> dict[str, int]:
    """This network namespace's counters of ``STACK_COUNTERS`` and ``CONNTRACK_COUNTERS``."""
    out: dict[str, int] = {}
    for path in ("/proc/net/netstat", "/proc/net/snmp"):
        with contextlib.suppress(OSError):
            lines = Path(path).read_text().splitlines()
            for head, vals in zip(lines[::2], lines[1::2], strict=False):
                for k, v in zip(head.split()[1:], vals.split()[1:], strict=False):
                    if k in STACK_COUNTERS:
                        out[k] = int(v)
    with contextlib.suppress(OSError, ValueError):
        rows = Path("/proc/net/stat/nf_conntrack").read_text().splitlines()[1:]
        for name, col in CONNTRACK_COUNTERS.items():
            out[f"ct_{name}"] = sum(int(r.split()[col], 16) for r in rows)
    return out


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}
_SIZE = {"B": 1 / 2**20, "KB": 1 / 1024, "MB": 1.0, "GB": 1024.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not m:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(m.group(1)) * _UNIT[m.group(2)]


def parse_wrk(out: str) -> Sample:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB)", out)
    mib_s = float(m.group(1)) * _SIZE[m.group(2)] if m else 0.0
    return Sample(rps, p50, p99, errors, mib_s=mib_s)


def run_wrk(host: str, port: int, mode: str, connections: int, duration: float) -> Sample:
    if mode == "bulk":
        connections = 1
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency"]
    if mode == "close":
        cmd += ["-H", "Connection: close"]
    cmd.append(f"http://{host}:{port}/{'big' if mode == 'bulk' else ''}")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + 60)
    return parse_wrk(out.stdout)


async def _py_client(host: str, port: int, mode: str, connections: int, duration: float) -> Sample:
    """A small load generator (when wrk is missing): ``connections`` loops of GET /."""
    close = mode == "close"
    if mode == "bulk":
        connections = 1
    req = (b"GET /" + (b"big" if mode == "bulk" else b"") + b" HTTP/1.1\r\nHost: bench\r\n"
           + (b"Connection: close\r\n" if close else b"") + b"\r\n")
    latencies: list[float] = []
    received = 0
    errors = 0
    loop = asyncio.get_running_loop()
    end = loop.time() + duration

    async def one_conn() -> None:
        nonlocal errors, received
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while loop.time() < end:
            began = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                assert reader is not None
                writer.write(req)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"Content-Length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
                while length:
                    chunk = await reader.read(min(length, 1 << 20))
                    if not chunk:
                        raise asyncio.IncompleteReadError(b"", length)
                    length -= len(chunk)
                    received += len(chunk)
                latencies.append(time.perf_counter() - began)
            except (OSError, asyncio.IncompleteReadError, AttributeError, ValueError):
                errors += 1
                close_now = True
            else:
                close_now = close
            if close_now and writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                writer = reader = None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    began = loop.time()
    await asyncio.gather(*(one_conn() for _ in range(connections)))
    took = loop.time() - began
    latencies.sort()

    def q(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1e3 if latencies else 0.0

    return Sample(len(latencies) / took, q(0.5), q(0.99), errors, mib_s=received / took / 2**20)


def run_py_client(host: str, port: int, mode: str, connections: int, duration: float) -> Sample:
    import uvloop
    return uvloop.run(_py_client(host, port, mode, connections, duration))


# --- the run ------------------------------------------------------------------------------
@dataclass
class Cell:
    samples: list[Sample] = field(default_factory=list)

    def median(self, attr: str) -> float | None:
        vals: list[float] = [getattr(s, attr) for s in self.samples if getattr(s, attr) is not None]
        return float(statistics.median(vals)) if vals else None


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.lb", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one round of 2 s per cell")
    ap.add_argument("--json", action="store_true", help="end with one line of JSON")
    ap.add_argument("--runs", type=int, default=0, help="rounds (default 3; quick 1)")
    ap.add_argument("--duration", type=float, default=0, help="seconds per cell (default 10; quick 2)")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--only", default=",".join(TARGETS), help="targets, comma-separated")
    ap.add_argument("--modes", default=",".join(MODES), help="keepalive,close,bulk")
    ap.add_argument("--backend", choices=("nginx", "python"), default="nginx")
    ap.add_argument("--client", choices=("wrk", "python"), default="wrk")
    ap.add_argument("--no-install", action="store_true", help="never call apt-get")
    ap.add_argument("--serve-orch", nargs=2, metavar=("PORT", "ENDPOINTS"), help=argparse.SUPPRESS)
    ap.add_argument("--serve-kernel", nargs=2, metavar=("PORT", "ENDPOINTS"), help=argparse.SUPPRESS)
    ap.add_argument("--in-netns", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--serve-backend", type=int, metavar="PORT", help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)

    if opts.serve_orch or opts.serve_backend or opts.serve_kernel:
        import uvloop
        if opts.serve_orch:
            uvloop.run(_serve_orch(int(opts.serve_orch[0]), opts.serve_orch[1]))
        elif opts.serve_kernel:
            uvloop.run(_serve_kernel(int(opts.serve_kernel[0]), opts.serve_kernel[1]))
        else:
            uvloop.run(_serve_backend(opts.serve_backend))
        return 0

    runs = opts.runs or (1 if opts.quick else 3)
    duration = opts.duration or (2.0 if opts.quick else 10.0)
    targets = [t for t in opts.only.split(",") if t]
    modes = [m for m in opts.modes.split(",") if m]
    have = ensure_tools(install=not opts.no_install)
    backend, client = opts.backend, opts.client
    if backend == "nginx" and not have["nginx"]:
        log("nginx is missing: the backend is the Python stand-in")
        backend = "python"
    if client == "wrk" and not have["wrk"]:
        log("wrk is missing: the load comes from the Python stand-in")
        client = "python"
    if "haproxy" in targets and not have["haproxy"]:
        log("haproxy is missing: not measured")
        targets.remove("haproxy")
    if "kernel" in targets and not opts.in_netns:
        why = _kernel_unavailable()
        if why:
            log(f"the kernel target cannot run here ({why}): not measured")
            targets.remove("kernel")
        else:
            return _rerun_in_netns(argv if argv is not None else sys.argv[1:])

    with tempfile.TemporaryDirectory(prefix="bench-lb-") as tmp:
        result = _measure(Path(tmp), targets, modes, runs, duration, opts.connections, backend, client)
    result["quick"] = opts.quick
    _print(result)
    if opts.json:
        print(json.dumps(result, separators=(",", ":")))
    return 0


def _kernel_unavailable() -> str:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return "needs root and iproute2 for a network namespace"
    from agent.lb.libnft import unavailable
    return unavailable()


def _rerun_in_netns(argv: list[str]) -> int:
    """Run this benchmark again inside a network namespace of its own, then remove it."""
    for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                               check=False).stdout.splitlines():
        m = re.match(rf"({NETNS_PREFIX}-(\d+))", line)
        if m and not Path(f"/proc/{m.group(2)}").exists():  # left by a killed run
            subprocess.run(["ip", "netns", "del", m.group(1)], check=False)
    name = f"{NETNS_PREFIX}-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        log(f"running in network namespace {name}")
        cmd = ["ip", "netns", "exec", name, sys.executable, "-m", "bench.lb", *argv,
               "--in-netns", "--no-install"]
        return subprocess.run(cmd, cwd=ROOT, check=False).returncode
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _measure(workdir: Path, targets: list[str], modes: list[str], runs: int, duration: float,
             connections: int, backend: str, client: str) -> dict[str, Any]:
    procs: list[Proc] = []
    load = run_wrk if client == "wrk" else run_py_client
    before_load = loadavg()
    try:
        backend_port = free_port(BACKEND_HOSTS[0])
        procs.append(start_nginx(workdir, backend_port) if backend == "nginx"
                     else start_python_backend(workdir, backend_port))
        where: dict[str, tuple[str, int, Proc | None]] = {
            "direct": (ENDPOINTS["direct"][0], backend_port, None)}
        if "haproxy" in targets:
            port = free_port(PROXY_HOST)
            procs.append(start_haproxy(workdir, port, backend_port))
            where["haproxy"] = (PROXY_HOST, port, procs[-1])
        orch: Proc | None = None
        if "orch" in targets:
            port = free_port(PROXY_HOST)
            orch = start_orch(workdir, port, backend_port)
            procs.append(orch)
            where["orch"] = (PROXY_HOST, port, orch)
        kern: Proc | None = None
        if "kernel" in targets:
            port = free_port(PROXY_HOST)
            kern = start_kernel(workdir, port, backend_port)
            procs.append(kern)
            where["kernel"] = (PROXY_HOST, port, kern)
        time.sleep(0.3)
        orch_before = (fd_count(orch.pid), rss_mb(orch.pid)) if orch else None
        kern_before = fd_count(kern.pid) if kern else None
        cells = {m: {t: Cell() for t in targets} for m in modes}
        for r in range(runs):
            for mode in modes:
                order = targets[r % len(targets):] + targets[:r % len(targets)]
                for t in order:
                    host, port, proc = where[t]
                    log(f"round {r + 1}/{runs} {mode:9} {t:8} {duration:g}s")
                    cpu0 = cpu_seconds(proc.pid) if proc else 0.0
                    before = stack_counters()
                    s = load(host, port, mode, connections, duration)
                    after = stack_counters()
                    s.stack = {k: after[k] - before.get(k, 0) for k in after
                               if after[k] != before.get(k, 0)}
                    cpu = cpu_seconds(proc.pid) - cpu0 if proc else 0.0
                    if proc is not None and s.rps > 0:
                        s.cpu_us_per_req = cpu / (s.rps * duration) * 1e6
                    if proc is not None and s.mib_s > 0:
                        s.cpu_s_per_gib = cpu / (s.mib_s * duration / 1024)
                    cells[mode][t].samples.append(s)
                    time.sleep(0.5)  # closing connections settle
        orch_after = None
        if orch is not None:
            time.sleep(1.0)
            orch_after = (fd_count(orch.pid), rss_mb(orch.pid))
        kern_after = fd_count(kern.pid) if kern else None
    finally:
        for p in reversed(procs):
            p.stop()
    closing = _last_json(workdir / "orch.log") if orch is not None else {}
    out = _summary(cells, targets, modes, runs, duration, connections, backend, client,
                   orch_before, orch_after, before_load)
    out["orch_close_ms"] = closing.get("close_ms")
    out["orch_close_fd_leak"] = closing.get("close_fd_leak")
    if kern is not None:
        lines = _json_lines(workdir / "kernel.log")
        updates = lines[0] if lines else {}
        out["kernel_update_ms_p50"] = updates.get("update_ms_p50")
        out["kernel_update_ms_p99"] = updates.get("update_ms_p99")
        out["kernel_update_ms_max"] = updates.get("update_ms_max")
        out["kernel_update_endpoints"] = updates.get("update_endpoints")
        out["kernel_flows"] = lines[-1].get("kernel_flows") if len(lines) > 1 else None
        if kern_before is not None and kern_after is not None:
            out["kernel_fd_leak"] = kern_after - kern_before
            out["fd_leak"] = (out["fd_leak"] or 0) + out["kernel_fd_leak"]
    return out


def _json_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def _last_json(path: Path) -> dict[str, Any]:
    for line in reversed(path.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                data: dict[str, Any] = json.loads(line)
                return data
    return {}


def _summary(cells: dict[str, dict[str, Cell]], targets: list[str], modes: list[str], runs: int,
             duration: float, connections: int, backend: str, client: str,
             orch_before: tuple[int, float] | None, orch_after: tuple[int, float] | None,
             before_load: list[float]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for mode in modes:
        results[mode] = {t: {"rps": c.median("rps"), "p50_ms": c.median("p50_ms"),
                             "p99_ms": c.median("p99_ms"), "errors": sum(s.errors for s in c.samples),
                             "cpu_us_per_req": c.median("cpu_us_per_req"),
                             "rps_runs": [round(s.rps) for s in c.samples],
                             "stack_runs": [s.stack for s in c.samples]}
                         for t, c in cells[mode].items()}
        if mode == "bulk":
            for t, c in cells[mode].items():
                mib = c.median("mib_s")
                results[mode][t].update(gib_s=round(mib / 1024, 3) if mib else None,
                                        cpu_s_per_gib=c.median("cpu_s_per_gib"))
    out: dict[str, Any] = {
        "backend": ("nginx-light, 1 worker, 3 addresses per proxy" if backend == "nginx"
                    else "Python stand-in (uvloop)"),
        "client": (f"wrk -t1 -c{connections}" if client == "wrk"
                   else f"Python stand-in, {connections} connections"),
        "haproxy": tool_version(["haproxy", "-v"]) if "haproxy" in targets else None,
        "runs": runs, "duration_s": duration, "cpus": os.cpu_count(),
        "loadavg_before": before_load, "loadavg_after": loadavg(), "results": results,
    }

    def ratio(mode: str, a: str, b: str, key: str) -> float | None:
        r = results.get(mode, {})
        if a not in r or b not in r or not r[a][key] or not r[b][key]:
            return None
        return round(float(r[a][key]) / float(r[b][key]), 3)

    for mode in modes:
        suffix = "" if mode == "keepalive" else f"_{mode}"
        if mode == "bulk":
            out["bulk_ratio_vs_haproxy"] = ratio(mode, "orch", "haproxy", "gib_s")
            out["bulk_cpu_ratio_vs_haproxy"] = ratio(mode, "orch", "haproxy", "cpu_s_per_gib")
            out["bulk_ratio_vs_direct"] = ratio(mode, "orch", "direct", "gib_s")
            continue
        out[f"rps_ratio_vs_haproxy{suffix}"] = ratio(mode, "orch", "haproxy", "rps")
        out[f"p99_ratio_vs_haproxy{suffix}"] = ratio(mode, "orch", "haproxy", "p99_ms")
        out[f"rps_ratio_vs_direct{suffix}"] = ratio(mode, "orch", "direct", "rps")
        out[f"cpu_ratio_vs_haproxy{suffix}"] = ratio(mode, "orch", "haproxy", "cpu_us_per_req")
        if "kernel" in targets:
            ksuffix = "_keepalive" if mode == "keepalive" else f"_{mode}"
            out[f"kernel_rps_ratio_vs_haproxy{ksuffix}"] = ratio(mode, "kernel", "haproxy", "rps")
            out[f"kernel_rps_ratio_vs_direct{ksuffix}"] = ratio(mode, "kernel", "direct", "rps")
            out[f"kernel_p99_ratio_vs_haproxy{ksuffix}"] = ratio(mode, "kernel", "haproxy",
                                                                  "p99_ms")
            out[f"kernel_rps_ratio_vs_orch{ksuffix}"] = ratio(mode, "kernel", "orch", "rps")
    if "kernel" in targets:  # the issue's key: p99 with keep-alive connections
        out["kernel_p99_ratio_vs_haproxy"] = out.get("kernel_p99_ratio_vs_haproxy_keepalive")
    if orch_before and orch_after:
        out["orch_fds_before"], out["orch_rss_mb_before"] = orch_before[0], round(orch_before[1], 1)
        out["orch_fds_after"], out["orch_rss_mb_after"] = orch_after[0], round(orch_after[1], 1)
        out["fd_leak"] = orch_after[0] - orch_before[0]
    else:
        out["fd_leak"] = None
    return out


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _print(r: dict[str, Any]) -> None:
    print(f"load balancer benchmark: backend {r['backend']}; load {r['client']}; "
          f"{r['runs']} round(s) of {r['duration_s']:g} s; {r['cpus']} CPUs; "
          f"load average {r['loadavg_before'][0]:.2f} before, {r['loadavg_after'][0]:.2f} after")
    if r["haproxy"]:
        print(f"haproxy: {r['haproxy']}")
    for mode, rows in r["results"].items():
        if mode == "bulk":
            print(f"\nbulk: one connection, GET of {BIG >> 20} MiB after GET")
            print(f"{'target':8} {'GiB/s':>7} {'CPU s/GiB':>10} {'errors':>6}")
            for t, c in rows.items():
                print(f"{t:8} {_fmt(c['gib_s'], '7.2f')} {_fmt(c['cpu_s_per_gib'], '10.3f')} "
                      f"{c['errors']:6d}")
            print(f"orch/haproxy: GiB/s {_fmt(r.get('bulk_ratio_vs_haproxy'), '.2f')}, CPU per GiB "
                  f"{_fmt(r.get('bulk_cpu_ratio_vs_haproxy'), '.2f')};  orch/direct: GiB/s "
                  f"{_fmt(r.get('bulk_ratio_vs_direct'), '.2f')}")
            continue
        what = "keep-alive connections" if mode == "keepalive" else "a new connection per request"
        print(f"\n{mode}: {what}")
        print(f"{'target':8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU µs/req':>10} {'errors':>6}"
              "  rounds")
        for t, c in rows.items():
            print(f"{t:8} {_fmt(c['rps'], '9.0f')} {_fmt(c['p50_ms'], '8.3f')} {_fmt(c['p99_ms'], '8.3f')} "
                  f"{_fmt(c['cpu_us_per_req'], '10.1f')} {c['errors']:6d}  {c['rps_runs']}")
        suffix = "" if mode == "keepalive" else f"_{mode}"
        print(f"orch/haproxy: req/s {_fmt(r.get('rps_ratio_vs_haproxy' + suffix), '.2f')}, "
              f"p99 {_fmt(r.get('p99_ratio_vs_haproxy' + suffix), '.2f')}, "
              f"CPU per request {_fmt(r.get('cpu_ratio_vs_haproxy' + suffix), '.2f')};  "
              f"orch/direct: req/s {_fmt(r.get('rps_ratio_vs_direct' + suffix), '.2f')}")
    if r.get("kernel_update_ms_p99") is not None:
        print(f"\nkernel: an endpoint added or removed with {r['kernel_update_endpoints']} in the "
              f"table: {r['kernel_update_ms_p50']} ms median, {r['kernel_update_ms_p99']} ms p99, "
              f"{r['kernel_update_ms_max']} ms max; kernel/haproxy req/s (new connection per "
              f"request) {_fmt(r.get('kernel_rps_ratio_vs_haproxy_close'), '.2f')}, "
              f"kernel/direct req/s (keep-alive) "
              f"{_fmt(r.get('kernel_rps_ratio_vs_direct_keepalive'), '.2f')}, kernel/haproxy p99 "
              f"(keep-alive) {_fmt(r.get('kernel_p99_ratio_vs_haproxy'), '.2f')}")
    if r.get("orch_fds_before") is not None:
        print(f"\norch process: {r['orch_fds_before']} fds and {r['orch_rss_mb_before']} MB RSS before "
              f"the load, {r['orch_fds_after']} fds and {r['orch_rss_mb_after']} MB after "
              f"(fd leak {r['fd_leak']}); close() took {r.get('orch_close_ms')} ms and left "
              f"{r.get('orch_close_fd_leak')} fds behind")


if __name__ == "__main__":
    sys.exit(main())
