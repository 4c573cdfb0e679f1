"""The routing mesh in kernel mode across nodes: a controller and two agents as real
processes (the secure way: bootstrap, join token, mTLS), each in a network namespace of its
own on a bridge made by the test (10.99.0.0/24, inside namespaces only), and a client in a
fourth. Bounded in time; everything is removed at the end.

What it shows: each agent forwards the published port in the kernel (node attribute
``lb.mode = kernel``, ``orchctl service list`` says so); an endpoint on the same node sees the
client's own address, one on another node is reached through SNAT to the agent's address;
an endpoint that fails its check leaves new flows within about its interval; a clean stop
removes the table.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchctl.demo import Demo, running_on
from tests.components import require
from tests.integration.mesh_util import BACKEND
from tests.integration.netns_util import why_not

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240, method="thread")]

NET = "10.99.0"
NODES = {"controller": 1, "agent-1": 2, "agent-2": 3, "client": 9}
PORT = 18500

JOB = """
name: kmesh
update: {{max_parallel: 1, min_healthy_time: 0s, healthy_deadline: 30s}}
groups:
  - name: web
    count: 2
    network:
      ports: [{{label: http}}]
    services:
      - name: echo
        port: http
        published_port: {port}
        check: {{type: http, port: http, path: /healthz, interval: 500ms, timeout: 500ms,
                 unhealthy_threshold: 1}}
    tasks:
      - name: server
        driver: process
        command: python3
        args: ["{script}"]
        env: {{SICK_DIR: "{sick}"}}
        kill_timeout: 2s
        resources: {{cpu_millicores: 100, memory_mb: 64}}
"""


def sh(*args: str) -> str:
    return subprocess.run(list(args), check=True, capture_output=True, text=True,
                          timeout=30).stdout


@contextlib.contextmanager
def bridge() -> Iterator[dict[str, str]]:
    """Namespaces for every node and the client, on one bridge (in a namespace of its own)."""
    tag = f"ok{os.getpid() % 100000}"
    hub = f"orch-kernel-{os.getpid()}-hub"
    names = {n: f"orch-kernel-{os.getpid()}-{n}" for n in NODES}
    made = []
    try:
        sh("ip", "netns", "add", hub)
        made.append(hub)
        sh("ip", "-n", hub, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", hub, "link", "set", "br0", "up")
        for i, (node, ns) in enumerate(names.items()):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "link", "add", f"{tag}{i}", "netns", hub, "type", "veth", "peer", "name",
               "eth0", "netns", ns)
            sh("ip", "-n", hub, "link", "set", f"{tag}{i}", "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{NET}.{NODES[node]}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        yield names
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


class NsDemo(Demo):
    """orch's demo cluster with each process in its node's namespace."""

    def __init__(self, workdir: Path, names: dict[str, str]) -> None:
        super().__init__(workdir, agents=2, fast=True, driver="process", net=NET)
        self.names = names

    def _spawn(self, name: str, argv: list[str]) -> None:
        if name.startswith("agent-"):
            # lb_bind 0.0.0.0 (the default): published on every address of the node
            i = argv.index("--lb-bind")
            argv = argv[:i] + argv[i + 2:]
        super()._spawn(name, ["ip", "netns", "exec", self.names[name], *argv])

    def orchctl(self, *args: str, show: bool = False, check: bool = True) -> str:
        out = subprocess.run(["ip", "netns", "exec", self.names["controller"], sys.executable,
                              "-m", "orchctl.main", *args], env=self.env, capture_output=True,
                             text=True, timeout=120, check=False)
        if check and out.returncode != 0:
            raise RuntimeError(f"orchctl {' '.join(args)}: {out.stdout}{out.stderr}")
        return out.stdout


def in_ns(ns: str, code: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=60, check=True).stdout


GET = """
import http.client, sys, time
out = []
for host in sys.argv[1:]:
    try:
        c = http.client.HTTPConnection(host, {port}, timeout=2)
        c.request("GET", "/")
        out.append(c.getresponse().read().decode().strip())
        c.close()
    except OSError as e:
        out.append("error " + type(e).__name__)
print("\\n".join(out))
"""


def get(names: dict[str, str], *hosts: str) -> list[str]:
    """One request from the client's namespace to each of ``hosts``: the bodies."""
    out = subprocess.run(["ip", "netns", "exec", names["client"], sys.executable, "-c",
                          GET.format(port=PORT), *hosts], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return out.strip().splitlines()


def wait(what: str, pred: object, within: float) -> float:
    began = time.monotonic()
    while True:
        if pred():  # type: ignore[operator]
            return time.monotonic() - began
        if time.monotonic() - began > within:
            raise AssertionError(f"not within {within} s: {what}")
        time.sleep(0.1)


def seen(alloc: str, client: str) -> str:
    """What the backend answers: its allocation, its version, the client's address."""
    return f"{alloc} 1 {client}"


def test_the_kernel_mesh_reaches_endpoints_here_and_on_other_nodes() -> None:
    require("network namespaces with nftables", not why_not(), why_not() or "")
    require("conntrack", bool(subprocess.run(["sh", "-c", "command -v conntrack"],
                                             capture_output=True).returncode == 0),
            "apt-get install conntrack")
    a1, a2 = f"{NET}.2", f"{NET}.3"
    work = Path(tempfile.mkdtemp(prefix="orch-kmesh-"))
    work.chmod(0o755)  # tasks run as nobody: they read the script and the sick folder
    script = work / "backend.py"
    script.write_text(BACKEND)
    script.chmod(0o644)
    sick = work / "sick"
    sick.mkdir(mode=0o777)
    sick.chmod(0o777)
    (work / "job.yaml").write_text(JOB.format(port=PORT, script=script, sick=sick))
    with bridge() as names:
        (work / "cluster").mkdir()
        demo = NsDemo(work / "cluster", names)
        try:
            demo.start_controller()
            demo.wait_trust(60)
            demo.start_agent(1)
            demo.start_agent(2)
            wait("two agents ready", lambda: demo.orchctl(
                "-o", "json", "node", "list", check=False).count('"NODE_STATUS_READY"') == 2,
                within=60)
            nodes = {n["id"]: n["name"] for n in json.loads(
                demo.orchctl("-o", "json", "node", "list"))}
            demo.orchctl("job", "run", str(work / "job.yaml"))
            wait("one allocation on each agent", lambda: len(set(running_on(
                demo.status("kmesh")).values())) == 2, within=60)
            by_node = {nodes[n]: a for a, n in running_on(demo.status("kmesh")).items()}
            # every agent forwards in the kernel, and both endpoints are in every table
            for node in ("agent-1", "agent-2"):
                st = json.loads(demo.orchctl("-o", "json", "node", "status", node))
                assert st["node"]["attributes"]["lb.mode"] == "kernel", st["node"]["attributes"]
            wait("the mesh answers on both nodes",
                 lambda: all(not b.startswith("error") for b in get(names, a1, a2)), within=30)
            services = json.loads(demo.orchctl("-o", "json", "service", "list"))
            assert [s["lb_mode"] for s in services] == ["kernel"]
            # prefer_local: each node's own endpoint, which sees the client's address
            got = get(names, a1, a2)
            assert got == [seen(by_node["agent-1"], f"{NET}.9"),
                           seen(by_node["agent-2"], f"{NET}.9")]
            table = in_ns(names["agent-1"], "import subprocess; print(subprocess.run(['nft', "
                          "'list', 'tables'], capture_output=True, text=True).stdout)")
            assert "table ip orch" in table

            # agent-1's endpoint fails its check (interval 0.5 s): agent-1 sends new flows to
            # agent-2's endpoint, through SNAT (it sees agent-1's address)
            (sick / by_node["agent-1"]).touch()
            took = wait("agent-1's endpoint leaves new flows",
                        lambda: get(names, a1) == [seen(by_node["agent-2"], a1)], within=15)
            print(f"a failing endpoint left new flows after {took:.2f} s")
            assert took < 5.0
            (sick / by_node["agent-1"]).unlink()
            wait("it comes back",
                 lambda: get(names, a1) == [seen(by_node["agent-1"], f"{NET}.9")], within=15)
        finally:
            demo.stop_all()
            demo.cleanup_tasks()
        # a clean stop removed the table
        for node in ("agent-1", "agent-2"):
            out = subprocess.run(["ip", "netns", "exec", names[node], "nft", "list", "tables"],
                                 capture_output=True, text=True, check=False).stdout
            assert "orch" not in out
    subprocess.run(["rm", "-rf", str(work)], check=False)


_ = socket  # (the client runs in its own namespace, through ``get``)
