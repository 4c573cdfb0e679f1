"""DNS on every agent, on a live cluster (a controller and two agents on 127.0.53.x, process
tasks): a task finds another service by name and port through its agent's DNS, answers
follow scaling, an endpoint whose check fails leaves every agent's answers, and bad packets
over real sockets are dropped, counted, and do not stop the server."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

import dns.asyncquery
import dns.flags
import dns.message
import dns.name
import dns.rcode
import pytest

from agent.dns import zone as zones
from agent.dns.config import DnsConfig
from agent.dns.server import DnsServer
from agent.server import Agent
from controller.server import Controller
from controller.state import RUN
from orch.jobspec import parse_job
from tests.integration.live import live_cluster
from tests.integration.synthetic import wait_until

NET = "127.0.53"
pytestmark = pytest.mark.timeout(180, method="thread")

KV = """
name: kv
update: {{max_parallel: 5, min_healthy_time: 0s, healthy_deadline: 30s}}
groups:
  - name: store
    count: {count}
    network:
      ports: [{{label: http}}]
    services:
      - name: kv
        port: http
        check: {{type: http, port: http, path: /healthy, interval: 0.5s, timeout: 0.5s}}
    tasks:
      - name: server
        driver: process
        command: /bin/sh
        args: ["-c", "echo kv-$ORCH_ALLOC_INDEX > index.html; touch healthy;
                exec python3 -m http.server $ORCH_PORT_http --bind ${{ORCH_ADDR_http%:*}}"]
        resources: {{cpu_millicores: 100, memory_mb: 64}}
"""

CLIENT = """
import os, sys, urllib.request
import dns.resolver
r = dns.resolver.Resolver(filename="resolv.conf")  # the agent's DNS, on port 53
ans = r.resolve("kv.service.default.orch", "SRV")
srv = ans[0]
host = r.resolve(srv.target, "A")[0].address
body = urllib.request.urlopen(f"http://{host}:{srv.port}/", timeout=5).read().decode()
h, p = os.environ["ORCH_DNS"].rsplit(":", 1)
r2 = dns.resolver.Resolver(configure=False)  # the agent's DNS at ORCH_DNS, its own port
r2.nameservers, r2.port = [h], int(p)
n = len(r2.resolve("kv.service.orch", "A"))
open("result", "w").write(f"{body.strip()} {host}:{srv.port} {n}")
"""

CLIENT_JOB = """
name: client
type: batch
groups:
  - name: c
    tasks:
      - name: ask
        driver: process
        command: {python}
        args: ["-c", {script}]
        resources: {{cpu_millicores: 100, memory_mb: 64}}
"""


def dns_settings(agents: int) -> dict[int, dict[str, object]]:
    return {i: {"dns": DnsConfig(addr=f"{NET}.{i + 1}:0", task_addr=f"{NET}.{i + 1}:53")}
            for i in range(1, agents + 1)}


async def query(agent: Agent, name: str, rdtype: str = "A", *,
                tcp: bool = False) -> dns.message.Message:
    assert agent.dns is not None
    host, port = agent.dns.addresses[0]
    q = dns.message.make_query(name, rdtype)
    if tcp:
        return await dns.asyncquery.tcp(q, host, port=port, timeout=3)
    return await dns.asyncquery.udp(q, host, port=port, timeout=3)


async def ports(agent: Agent, name: str = "kv.service.default.orch.") -> set[int]:
    m = await query(agent, name, "SRV")
    return {rd.port for rrset in m.answer for rd in rrset}


async def run_kv(ctl: Controller, count: int) -> None:
    await ctl.jobs.register(parse_job(KV.format(count=count), "kv.yaml"))


def placed_ports(ctl: Controller) -> set[int]:
    return {a.ports["http"] for a in ctl.cluster.state.allocs.values()
            if a.job == "kv" and a.desired_status == RUN}


async def test_a_process_task_finds_a_service_by_name_and_port(tmp_path: Path) -> None:
    async with live_cluster(tmp_path, agents=2, net=NET,
                            agent_settings=dns_settings(2)) as (ctl, agents):
        await run_kv(ctl, 2)

        async def everywhere(n: int) -> bool:
            return all([len(await ports(a)) == n for a in agents])
        await wait_until(lambda: everywhere(2), within=30, every=0.2)
        script = CLIENT
        await ctl.jobs.register(parse_job(CLIENT_JOB.format(
            python=sys.executable, script=json.dumps(script)), "client.yaml"))

        def result() -> str | None:  # reads a file or two: the loop waits no longer
            for a in agents:
                for p in Path(a.cfg.data_dir, "alloc").glob("*/ask/local/result"):
                    return p.read_text()
            return None
        await wait_until(result, within=30, every=0.2)
        body, addr, n = (result() or "").split()
        assert body in ("kv-0", "kv-1")
        assert int(addr.rsplit(":", 1)[1]) in placed_ports(ctl)
        assert n == "2"
        confs = await asyncio.to_thread(lambda: [
            p.read_text() for a in agents
            for p in Path(a.cfg.data_dir, "alloc").glob("*/ask/local/resolv.conf")])
        assert confs
        assert "search service.default.orch." in confs[0]
        assert f"nameserver {NET}." in confs[0]


async def test_answers_follow_scaling_and_checks_on_every_agent(tmp_path: Path) -> None:
    async with live_cluster(tmp_path, agents=2, net=NET,
                            agent_settings=dns_settings(2)) as (ctl, agents):
        await run_kv(ctl, 1)

        async def everywhere(want: set[int] | int) -> bool:
            got = [await ports(a) for a in agents]
            return all((g == want) if isinstance(want, set) else len(g) == want for g in got)
        await wait_until(lambda: everywhere(1), within=30, every=0.2)
        await ctl.jobs.scale(("default", "kv"), "store", 5)
        await wait_until(lambda: everywhere(5), within=40, every=0.2)
        assert await ports(agents[0]) == placed_ports(ctl)
        a_records = await query(agents[1], "kv.service.orch.")
        assert {rd.address for rrset in a_records.answer for rd in rrset} <= {
            f"{NET}.2", f"{NET}.3"}

        # one endpoint's check fails: it leaves every agent's answers; the others stay
        victim = next(a for a in ctl.cluster.state.allocs.values()
                      if a.job == "kv" and a.desired_status == RUN)
        node = ctl.cluster.state.nodes[victim.node_id].name
        owner = next(a for a in agents if a.cfg.name == node)
        healthy = Path(owner.cfg.data_dir) / "alloc" / victim.id / "server" / "local" / "healthy"
        healthy.unlink()
        rest = placed_ports(ctl) - {victim.ports["http"]}
        await wait_until(lambda: everywhere(rest), within=20, every=0.1)
        healthy.touch()  # it passes again: back in every agent's answers
        await wait_until(lambda: everywhere(5), within=20, every=0.1)

        await ctl.jobs.scale(("default", "kv"), "store", 1)
        await wait_until(lambda: everywhere(1), within=40, every=0.2)
        # nodes and the mesh name: the published port is absent (not published), NXDOMAIN
        m = await query(agents[0], "agent-2.node.orch.")
        assert [rd.address for rrset in m.answer for rd in rrset] == [f"{NET}.3"]
        m = await query(agents[0], "kv.mesh.default.orch.")
        assert m.rcode() == dns.rcode.NXDOMAIN
        m = await query(agents[0], "example.com.")
        assert m.rcode() == dns.rcode.REFUSED


async def test_bad_packets_over_real_sockets(tmp_path: Path) -> None:
    async with live_cluster(tmp_path, agents=1, net=NET,
                            agent_settings=dns_settings(1)) as (_ctl, agents):
        agent = agents[0]
        assert agent.dns is not None
        host, port = agent.dns.addresses[0]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            bad = [b"", b"\x00" * 5, os.urandom(40), b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00"
                   b"\x00\x00\xc0\x0c\x00\x01\x00\x01", os.urandom(1400)]
            for b in bad:
                sock.sendto(b, (host, port))
            await wait_until(lambda: agent.dns is not None and sum(
                n for (_q, o), n in agent.dns.counts.items() if o == "malformed") >= len(bad) - 1,
                within=5)
        finally:
            sock.close()
        # over TCP: an oversized length prefix is read and refused; the server goes on
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"\xff\xff" + os.urandom(65535))
        await writer.drain()
        assert await reader.read(10) == b""
        writer.close()
        m = await query(agent, "orch.", "SOA", tcp=True)
        assert m.rcode() == dns.rcode.NOERROR
        assert m.flags & dns.flags.AA


async def test_other_zones_are_forwarded_to_upstreams(tmp_path: Path) -> None:
    # the upstream: another DNS server, for the zone "example." (real UDP on 127.0.53.9)
    upstream = DnsServer(DnsConfig(domain="example."), "up")
    upstream.answerer.set_zone(zones.build(dns.name.from_text("example."), {},
                                           [("www", "192.0.2.80")], me="up", mesh_host="",
                                           service_ttl=0, node_ttl=5))
    host, port = await upstream.listen(f"{NET}.9:0")
    try:
        settings = {1: {"dns": DnsConfig(addr=f"{NET}.2:0", upstreams=[f"{host}:{port}"],
                                         upstream_timeout=1.0)}}
        async with live_cluster(tmp_path, agents=1, net=NET,
                                agent_settings=settings) as (_ctl, agents):
            m = await query(agents[0], "www.node.example.")
            assert [rd.address for rrset in m.answer for rd in rrset] == ["192.0.2.80"]
            assert m.flags & dns.flags.RA
            m = await query(agents[0], "www.node.example.", tcp=True)
            assert [rd.address for rrset in m.answer for rd in rrset] == ["192.0.2.80"]
            assert (await query(agents[0], "agent-1.node.orch.")).answer  # its own zone still
            await upstream.close()  # no upstream answers: SERVFAIL, after upstream_timeout
            m = await query(agents[0], "other.node.example.")
            assert m.rcode() == dns.rcode.SERVFAIL
            assert agents[0].dns is not None
            assert agents[0].dns.counts[("A", "forward")] == 3
    finally:
        await upstream.close()


async def test_tasks_resolve_other_names_through_the_nodes_resolvers(tmp_path: Path) -> None:
    # the node's resolver: a DNS server for "example." on port 53 (as resolv.conf needs)
    upstream = DnsServer(DnsConfig(domain="example."), "up")
    upstream.answerer.set_zone(zones.build(dns.name.from_text("example."), {},
                                           [("www", "192.0.2.80")], me="up", mesh_host="",
                                           service_ttl=0, node_ttl=5))
    await upstream.listen(f"{NET}.9:53")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {NET}.9\nnameserver {NET}.2\n")  # the agent's own: skipped
    try:
        settings = {1: {"dns": DnsConfig(addr=f"{NET}.2:0", task_addr=f"{NET}.2:53",
                                         node_resolvers=str(resolv))}}
        async with live_cluster(tmp_path, agents=1, net=NET,
                                agent_settings=settings) as (_ctl, agents):
            agent = agents[0]
            assert agent.dns is not None
            q = dns.message.make_query("www.node.example.", "A")
            m = await dns.asyncquery.udp(q, f"{NET}.2", port=53, timeout=3)  # the tasks'
            assert [rd.address for rrset in m.answer for rd in rrset] == ["192.0.2.80"]
            m = await query(agent, "www.node.example.")  # the main listener: no upstreams
            assert m.rcode() == dns.rcode.REFUSED
            m = await dns.asyncquery.udp(dns.message.make_query("agent-1.node.orch.", "A"),
                                         f"{NET}.2", port=53, timeout=3)
            assert [rd.address for rrset in m.answer for rd in rrset] == [f"{NET}.2"]
    finally:
        await upstream.close()
