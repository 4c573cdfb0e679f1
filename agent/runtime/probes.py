"""Health-check probes (tcp, http, exec) and the loop that runs one check.

tcp and http connect to the task's host port at the agent's check address
(the address the load balancer routes to); exec runs the command inside the
task through its driver. Every probe is bounded by the check's timeout. The
verdict (pending, passing, failing) is ``health.CheckTracker``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from orch.jobspec.model import Check

from .driver import TaskDriver, TaskHandle
from .health import CheckResult, CheckTracker
from .restart import human_duration

MAX_OUTPUT = 200
"""Characters of probe output kept with the check's status."""


async def probe_tcp(host: str, port: int) -> CheckResult:
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError as e:
        return CheckResult(False, f"TCP connect {host}:{port}: {e.strerror or e}")
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return CheckResult(True, f"TCP connect {host}:{port}: success")


async def probe_http(host: str, port: int, check: Check) -> CheckResult:
    url = f"http://{host}:{port}{check.path}"
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as e:
        return CheckResult(False, f"{check.method} {url}: {e.strerror or e}")
    try:
        writer.write(f"{check.method} {check.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                     "User-Agent: orch-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
                     .encode())
        await writer.drain()
        line = await reader.readline()
    except OSError as e:
        return CheckResult(False, f"{check.method} {url}: {e.strerror or e}")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    parts = line.decode("latin-1").split()
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return CheckResult(False, f"{check.method} {url}: not an HTTP response: {line[:60]!r}")
    status = int(parts[1])
    ok = check.status_min <= status <= check.status_max
    return CheckResult(ok, f"{check.method} {url}: HTTP {status}", warning=status == 429)


async def probe_exec(driver: TaskDriver, handle: TaskHandle, check: Check) -> CheckResult:
    result = await driver.exec(handle, [check.command, *check.args])
    out = result.output.decode(errors="replace").strip()[:MAX_OUTPUT]
    return CheckResult(result.exit_code == 0, f"exit code {result.exit_code}: {out}".rstrip(": "),
                       warning=result.exit_code == 1)


def make_probe(check: Check, *, host: str, ports: dict[str, int], driver: TaskDriver,
               handle: TaskHandle) -> Callable[[], Awaitable[CheckResult]]:
    """The probe of ``check`` for one run of a task."""
    if check.type == "exec":
        return lambda: probe_exec(driver, handle, check)
    port = ports.get(check.port)
    if port is None:
        known = ", ".join(sorted(ports)) or "none"
        message = f"check port {check.port!r} is not a port label of the group (known: {known})"

        async def unknown() -> CheckResult:
            return CheckResult(False, message)
        return unknown
    if check.type == "http":
        return lambda: probe_http(host, port, check)
    if check.type == "tcp":
        return lambda: probe_tcp(host, port)

    async def unsupported() -> CheckResult:
        return CheckResult(False, f"unknown check type {check.type!r}: use tcp, http or exec")
    return unsupported


async def run_check(tracker: CheckTracker, probe: Callable[[], Awaitable[CheckResult]],
                    on_change: Callable[[CheckTracker], None],
                    on_result: Callable[[CheckTracker, CheckResult], None] | None = None) -> None:
    """Probe every ``interval`` seconds for ever (until cancelled), the first time at once;
    ``on_change`` when the verdict changes, ``on_result`` after every result."""
    check = tracker.check
    while True:
        try:
            async with asyncio.timeout(check.timeout):
                result = await probe()
        except TimeoutError:
            result = CheckResult(False, f"timed out after {human_duration(check.timeout)}")
        except Exception as e:  # a probe must never take its task down
            result = CheckResult(False, f"probe error: {e}")
        if tracker.record(result):
            on_change(tracker)
        if on_result is not None:
            on_result(tracker, result)
        await asyncio.sleep(check.interval)
