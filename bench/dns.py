"""DNS benchmark: an agent's DNS server beside dnsmasq, and how fast answers follow gossip.

    python -m bench.dns                # the full run (about 3 minutes)
    python -m bench.dns --quick        # shorter rounds, a 30-member cluster
    python -m bench.dns --json         # the last line of stdout is one JSON object
    ./run bench dns                    # the same, from the repository

Throughput and latency. dnsperf (Debian) sends the same queries to two servers holding
the same records, in one run, interleaved round by round:
  orch     the agent's DnsServer (its UDP listener, answers, limits and metrics), in its
           own process under uvloop, holding 500 services × 10 endpoints (the zone built
           as an agent builds it from its endpoint table)
  dnsmasq  Debian's dnsmasq serving the same names from a hosts file (10 addresses a
           name) and the same SRV records (``srv-host``), no cache, no upstream
Both are single-threaded: each uses one core at most. Neither is pinned (taskset): on a
machine shared with other work a pinned process waits for its core's turn, and the
figures measured the machine's load rather than the servers.
The queries: every service's A and SRV, one after the other (1,000 names), and A alone
(dnsmasq looks its ``srv-host`` records up in a list, so SRV costs it more than A).
``qps`` is dnsperf's answered queries a second at most 100 outstanding (the server
saturated), median of the rounds; ``p99_ms`` is the 99th percentile of orch's latencies at half its
own maximum rate (dnsperf -Q, every answer's latency from dnsperf -v).

Propagation. ``--members`` gossip members (orch's LAN defaults, real UDP on 127.0.78.x),
each keeping a DNS zone as an agent does (the endpoint table rebuilt on gossip events);
one member announces a new healthy endpoint, the time until every member's zone answers
it is taken (``propagation_p99_s``: the 99th percentile over members and trials), then the
member withdraws it as an agent does when its check fails (``removal_p99_s``, to which
the check's own interval adds: a failing check is seen at its next run).

Discovery. A controller, two agents and a task with a port labelled ``metrics`` in this
process (127.0.79.x), and Debian's Prometheus with deploy/prometheus.yml pointed at one
agent's discovery: ``sd_targets_ok`` when every target was discovered and scraped up.

Benchmarks print figures; nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.report import pct, progress, table

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
SERVICES, ENDPOINTS = 500, 10
PROPAGATION_NET = "127.0.78"
SD_NET = "127.0.79"
JOIN_WITHIN = 300.0
"""Seconds the propagation cluster has to converge (every member seeing every other
alive) before the trials start."""


def catalog() -> dict[str, Any]:
    """500 services × 10 endpoints, as an agent's endpoint table holds them."""
    from agent.lb.model import Endpoint, ServiceSpec

    return {f"default/j{i}/g/svc-{i}": ServiceSpec(
        name=f"svc-{i}", job=f"j{i}", group="g", published_port=0, endpoints=tuple(
            Endpoint(alloc_id=f"a-{i}-{j}", node=f"node-{j}", host=f"10.{i // 250}.{i % 250}.{j + 1}",
                     port=20000 + j) for j in range(ENDPOINTS)))
        for i in range(SERVICES)}


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, \
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
        u.bind((host, 0))
        port = u.getsockname()[1]
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind((host, port))
        return int(port)


# --- the servers --------------------------------------------------------------------------

def serve_orch(port: int) -> None:
    """The orch DNS server with the benchmark's zone (run in its own process)."""
    import uvloop

    from agent.dns import zone as zones
    from agent.dns.config import DnsConfig
    from agent.dns.server import DnsServer

    async def main() -> None:
        cfg = DnsConfig(rate=1e9, burst=1 << 30)  # one source sends everything: no limit
        server = DnsServer(cfg, "bench")
        server.answerer.set_zone(zones.build(cfg.origin, catalog(), [], me="bench", mesh_host="",
                                             service_ttl=0, node_ttl=5))
        await server.listen(f"{HOST}:{port}")
        print("ready", flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


def dnsmasq_files(d: Path) -> tuple[Path, Path]:
    """A hosts file and a configuration with the same names and SRV records as orch's."""
    hosts, conf = [], ["no-resolv", "no-hosts", "local-ttl=0", "cache-size=0",
                       "domain-needed", "local=/orch/"]
    for spec in catalog().values():
        name = f"{spec.name}.service.default.orch"
        for e in spec.endpoints:
            hosts.append(f"{e.host} {name}")
            hosts.append(f"{e.host} {e.alloc_id}.alloc.orch")
            conf.append(f"srv-host={name},{e.alloc_id}.alloc.orch,{e.port},1,1")
    (d / "hosts").write_text("\n".join(hosts) + "\n")
    (d / "dnsmasq.conf").write_text("\n".join(conf) + "\n")
    return d / "hosts", d / "dnsmasq.conf"


def queries(d: Path, types: tuple[str, ...] = ("A", "SRV")) -> Path:
    """dnsperf's query file: every service's name, once per type."""
    path = d / f"queries-{'-'.join(types)}"
    lines = [f"svc-{i}.service.default.orch {t}" for i in range(SERVICES) for t in types]
    path.write_text("\n".join(lines) + "\n")
    return path


def dnsperf(port: int, qfile: Path, seconds: float, *, rate: float = 0,
            verbose: bool = False) -> tuple[float, list[float], dict[str, int]]:
    """(answered queries a second, latencies in seconds when ``verbose``, rcodes)."""
    cmd = ["dnsperf", "-s", HOST, "-p", str(port), "-d", str(qfile), "-l", f"{seconds:g}",
           "-q", "100", "-t", "2"]
    if rate:
        cmd += ["-Q", str(int(rate))]
    if verbose:
        cmd += ["-v"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60,
                         check=False).stdout
    m = re.search(r"Queries per second:\s+([\d.]+)", out)
    qps = float(m.group(1)) if m else 0.0
    lat = [float(x) for x in re.findall(r"^> \S+ .* ([\d.]+)$", out, re.M)] if verbose else []
    codes = {k: int(v) for k, v in re.findall(r"(\w+) (\d+) \([\d.]+%\)", out)}
    return qps, lat, codes


def check_answers(port: int) -> bool:
    """Whether the server answers the benchmark's names as it should (10 A, 10 SRV)."""
    import dns.message
    import dns.query

    for rdtype in ("A", "SRV"):
        q = dns.message.make_query("svc-7.service.default.orch.", rdtype)
        r = dns.query.udp(q, HOST, port=port, timeout=2)
        if sum(len(rr) for rr in r.answer) != ENDPOINTS:
            return False
    return True


def throughput(opts: argparse.Namespace, work: Path, result: dict[str, Any]) -> list[str]:
    if not shutil.which("dnsperf") or not shutil.which("dnsmasq"):
        progress("dnsperf or dnsmasq missing: apt-get install dnsperf dnsmasq-base")
        return []
    qfile, afile = queries(work), queries(work, ("A",))
    hosts, conf = dnsmasq_files(work)
    orch_port, masq_port = free_port(HOST), free_port(HOST)
    procs: list[subprocess.Popen[str]] = []
    try:
        orch = subprocess.Popen([sys.executable, "-m", "bench.dns", "--serve-orch",
                                 str(orch_port)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        procs.append(orch)
        assert orch.stdout is not None
        if orch.stdout.readline().strip() != "ready":
            raise RuntimeError("the orch DNS server did not start")
        masq = subprocess.Popen([
            "dnsmasq", "--keep-in-foreground", f"--conf-file={conf}", f"--addn-hosts={hosts}",
            f"--port={masq_port}", f"--listen-address={HOST}", "--bind-interfaces",
            "--user=root", "--pid-file="], text=True)
        procs.append(masq)
        time.sleep(1.0)
        for name, port in (("orch", orch_port), ("dnsmasq", masq_port)):
            if not check_answers(port):
                raise RuntimeError(f"{name} does not answer the benchmark's names")
        for port in (orch_port, masq_port):  # every answer once (orch caches rendered ones)
            for f in (qfile, afile):
                subprocess.run(["dnsperf", "-s", HOST, "-p", str(port), "-d", str(f), "-n", "1",
                                "-q", "10", "-t", "10"], capture_output=True, timeout=120,
                               check=False)
        qps: dict[str, list[float]] = {"orch": [], "dnsmasq": [], "orch A": [],
                                       "dnsmasq A": []}
        for r in range(opts.rounds):
            for name, port in (("orch", orch_port), ("dnsmasq", masq_port)):
                for suffix, f in (("", qfile), (" A", afile)):
                    q, _, codes = dnsperf(port, f, opts.seconds)
                    qps[name + suffix].append(q)
                    progress(f"round {r + 1}: {name}{suffix} {q:,.0f} queries/s {codes}")
        orch_max = statistics.median(qps["orch"])
        masq_max = statistics.median(qps["dnsmasq"])
        orch_a, masq_a = statistics.median(qps["orch A"]), statistics.median(qps["dnsmasq A"])
        lat: dict[str, list[float]] = {}
        for name, port in (("orch", orch_port), ("dnsmasq", masq_port)):
            _, lat[name], _ = dnsperf(port, qfile, opts.seconds, rate=orch_max / 2, verbose=True)
            progress(f"{name} at {orch_max / 2:,.0f} queries/s: {len(lat[name])} latencies")
        result.update({
            "orch_qps": round(orch_max), "dnsmasq_qps": round(masq_max),
            "qps_ratio_vs_dnsmasq": round(orch_max / masq_max, 3) if masq_max else None,
            "orch_a_qps": round(orch_a), "dnsmasq_a_qps": round(masq_a),
            "a_only_qps_ratio_vs_dnsmasq": round(orch_a / masq_a, 3) if masq_a else None,
            "p99_ms": round(pct(lat["orch"], 99) * 1e3, 3),
            "p50_ms": round(pct(lat["orch"], 50) * 1e3, 3),
            "dnsmasq_p99_ms": round(pct(lat["dnsmasq"], 99) * 1e3, 3),
            "half_rate_qps": round(orch_max / 2)})
        return [table(f"Answers, {SERVICES} services × {ENDPOINTS} endpoints, one core each "
                      f"(median of {opts.rounds} rounds of {opts.seconds:g} s)",
                      ("server", "A+SRV queries/s", "A queries/s",
                       "p50 ms at half orch's max", "p99 ms"),
                      [("orch", orch_max, orch_a, pct(lat["orch"], 50) * 1e3,
                        pct(lat["orch"], 99) * 1e3),
                       ("dnsmasq", masq_max, masq_a, pct(lat["dnsmasq"], 50) * 1e3,
                        pct(lat["dnsmasq"], 99) * 1e3)])]
    finally:
        for p in procs:
            p.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
            if p.stdout is not None:
                p.stdout.close()


# --- propagation --------------------------------------------------------------------------

def simulated_propagation(n: int, trials: int, seed: int) -> tuple[list[float], list[float]]:
    """Seconds until each member of an ``n``-member cluster (orch's gossip core at its LAN
    defaults, on the simulator's network: 0.5-1 ms one way) holds a new endpoint one
    member announces, then its withdrawal; every member of every trial."""
    from agent.lb import discovery
    from orch.gossip.config import GossipConfig
    from orch.gossip.core import EventKind, MemberEvent
    from orch.gossip.sim import SimNode, Simulator
    from orch.jobspec.model import Group, Service

    sim = Simulator(GossipConfig.lan(), seed=seed)
    names = [x.name for x in sim.start_cluster(n)]
    sim.run_for(20)
    rng = random.Random(seed)
    group = Group(name="g", services=(Service(name="web", port="http"),))
    publisher, key, present = "", "", True
    seen: dict[str, float] = {}
    t0 = 0.0

    def on_event(node: SimNode, ev: MemberEvent) -> None:
        if ev.kind is EventKind.UPDATE and ev.name == publisher and node.name not in seen \
                and (key in node.core.members[publisher].state) == present:
            seen[node.name] = sim.now - t0

    sim.on_event = on_event
    added: list[float] = []
    removed: list[float] = []
    for t in range(trials):
        publisher = rng.choice(names)
        entries = discovery.entries(f"trial-{t}", group, {"http": 30000 + t},
                                    sim.nodes[publisher].addr[0], namespace="default", job="web")
        key = next(iter(entries))
        for value in (entries, dict.fromkeys(entries)):
            present = value is entries
            seen.clear()
            seen[publisher] = 0.0
            t0 = sim.now
            sim.set_state(publisher, value)
            sim.run_until(t0 + 30, stop=lambda: len(seen) >= n)
            (added if present else removed).extend(seen.get(m, 30.0) for m in names)
            sim.run_for(1)
    return added, removed


def rebuild_cost(n: int) -> float:
    """Seconds one agent takes to rebuild its zone (endpoint table, then names) with ``n``
    members announcing 500 services × 10 endpoints between them (median of 5)."""
    from agent.dns import zone as zones
    from agent.dns.config import DnsConfig
    from agent.lb import discovery
    from orch.gossip.core import MemberInfo
    from orch.gossip.messages import Status

    cfg = DnsConfig()
    states: list[dict[str, Any]] = [{} for _ in range(n)]
    services: dict[str, Any] = {}
    placed: dict[tuple[str, str], discovery.Placed] = {}
    for spec in catalog().values():
        skey = discovery.service_key("default", spec.job, "g", spec.name)
        services[skey] = spec
        for j, e in enumerate(spec.endpoints):
            m = (hash(e.alloc_id) + j) % n
            placed[(e.alloc_id, spec.name)] = discovery.Placed(skey, f"m{m}", e.port)
            states[m][f"{discovery.PREFIX}{spec.name}:{e.alloc_id}"] = [
                f"10.1.{m // 250}.{m % 250}", e.port, 0, "tcp", "round_robin", 1, False,
                "default", spec.job, "g"]
    members = [MemberInfo(f"m{m}", (f"10.1.{m // 250}.{m % 250}", 7946), Status.ALIVE, 1,
                          states[m], 1, 0.0) for m in range(n)]
    expected = discovery.Expected(services, placed)
    took = []
    for _ in range(5):
        t = time.perf_counter()
        table = discovery.endpoint_table(members, "m0", expected)
        zones.build(cfg.origin, table.catalog, [(m.name, m.addr[0]) for m in members], me="m0",
                    mesh_host="10.1.0.0", service_ttl=0, node_ttl=5)
        took.append(time.perf_counter() - t)
    return statistics.median(took)


async def socket_propagation(n: int, trials: int) -> tuple[list[float], list[float]]:
    """The same on real sockets: ``n`` gossip members in this process (127.0.78.x, LAN
    defaults), each keeping its zone with a real DnsServer, the time taken when each
    member's zone answers the change."""
    import dns.name

    from agent.dns.config import DnsConfig
    from agent.dns.server import DnsServer
    from agent.dns.zone import Zone
    from agent.lb import discovery
    from agent.lb.model import ServiceSpec
    from agent.lb.table import EndpointTable
    from orch.gossip.config import GossipConfig
    from orch.gossip.messages import Status
    from orch.gossip.transport import GossipNode
    from orch.jobspec.model import Group, Service

    nodes = [GossipNode(GossipConfig.lan(), name=f"m{i}", bind=(f"{PROPAGATION_NET}.{i + 1}", 0),
                        rng=random.Random(i)) for i in range(n)]
    servers: list[DnsServer] = []
    tables: list[EndpointTable] = []
    key = discovery.service_key("default", "web", "g", "web")
    spec = ServiceSpec(name="web", job="web", group="g", published_port=0)
    picks = [(f"trial-{t}", random.Random(t).randrange(n)) for t in range(trials)]
    expected = discovery.Expected({key: spec}, {
        (alloc, "web"): discovery.Placed(key, f"m{i}", 30000 + t)
        for t, (alloc, i) in enumerate(picks)})
    seen: dict[int, float] = {}
    target = dns.name.Name([b""])
    present = True
    t0 = 0.0
    everyone = asyncio.Event()

    def watcher(i: int) -> Any:
        def fn(zone: Zone) -> None:
            if i not in seen and (zone.lookup(target) is not None) == present:
                seen[i] = time.monotonic() - t0
                if len(seen) == n:
                    everyone.set()
        return fn

    try:
        for node in nodes:
            await node.start()
        for node in nodes[1:]:
            node.join([nodes[0].addr])

        def views() -> int:
            """Members that see every member alive."""
            return sum(sum(m.status is Status.ALIVE for m in node.members()) == n
                       for node in nodes)
        began = time.monotonic()
        while views() < n:
            if time.monotonic() - began > JOIN_WITHIN:
                raise RuntimeError(f"{n} members did not converge in {JOIN_WITHIN:g} s "
                                   f"({views()} see every member alive)")
            await asyncio.sleep(1.0)
        progress(f"{n} members on sockets joined in {time.monotonic() - began:.1f} s")
        for i, node in enumerate(nodes):
            endpoints = EndpointTable(node.name)  # as the agent keeps it
            endpoints.set_expected(expected)
            endpoints.start(node)
            server = DnsServer(DnsConfig(), node.name)
            server.start(endpoints)
            server.listeners.append(watcher(i))
            servers.append(server)
            tables.append(endpoints)
        await asyncio.sleep(1.0)
        added: list[float] = []
        removed: list[float] = []
        group = Group(name="g", services=(Service(name="web", port="http"),))
        for t, (alloc, i) in enumerate(picks):
            entries = discovery.entries(alloc, group, {"http": 30000 + t}, nodes[i].addr[0],
                                        namespace="default", job="web")
            target = dns.name.from_text(f"{alloc}.alloc.orch.")
            for value in (entries, dict.fromkeys(entries)):
                present, seen = value is entries, {}
                everyone.clear()
                t0 = time.monotonic()
                nodes[i].set_state(value)
                tables[i].changed()  # as the agent does: its own state raises no event
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(everyone.wait(), 30)
                (added if present else removed).extend(seen.get(j, 30.0) for j in range(n))
        return added, removed
    finally:
        for endpoints in tables:
            await endpoints.close()
        for server in servers:
            await server.close()
        for node in nodes:
            with contextlib.suppress(Exception):
                await node.stop()


def propagation(opts: argparse.Namespace, result: dict[str, Any]) -> list[str]:
    """The simulator's ``--members`` cluster plus the real rebuild cost, and a smaller
    cluster on real sockets."""
    import uvloop

    from agent.lb.table import SETTLE as settle
    progress(f"simulating {opts.members} members, {opts.trials} trials")
    sim_add, sim_del = simulated_propagation(opts.members, opts.trials, seed=1)
    cost = rebuild_cost(opts.members)
    progress(f"a zone rebuild with {opts.members} members: {cost * 1e3:.1f} ms")
    add = [x + settle + cost for x in sim_add]
    rem = [x + settle + cost for x in sim_del]
    sock_add, sock_del = uvloop.run(socket_propagation(opts.socket_members, opts.trials))
    result.update({
        "propagation_p99_s": round(pct(add, 99), 3), "propagation_p50_s": round(pct(add, 50), 3),
        "removal_p99_s": round(pct(rem, 99), 3), "members": opts.members,
        "rebuild_ms": round(cost * 1e3, 2),
        "socket_members": opts.socket_members,
        "socket_propagation_p99_s": round(pct(sock_add, 99), 3),
        "socket_removal_p99_s": round(pct(sock_del, 99), 3)})
    return [table(f"Propagation to every member's DNS answers ({opts.trials} trials, LAN gossip "
                  "defaults)", ("cluster", "change", "p50 s", "p99 s", "max s"),
                  [(f"{opts.members}, simulated + rebuild", "new endpoint", pct(add, 50),
                    pct(add, 99), max(add)),
                   (f"{opts.members}, simulated + rebuild", "withdrawn", pct(rem, 50),
                    pct(rem, 99), max(rem)),
                   (f"{opts.socket_members}, sockets", "new endpoint", pct(sock_add, 50),
                    pct(sock_add, 99), max(sock_add)),
                   (f"{opts.socket_members}, sockets", "withdrawn", pct(sock_del, 50),
                    pct(sock_del, 99), max(sock_del))])]


# --- Prometheus discovery ------------------------------------------------------------------

EXPORTER = json.dumps({
    "name": "exporter", "update": {"min_healthy_time": "0s"}, "groups": [{
        "name": "x", "count": 2, "network": {"ports": [{"label": "metrics"}]},
        "tasks": [{"name": "serve", "driver": "process", "command": "/bin/sh", "args": [
            "-c", "printf 'demo_up 1\\n' > metrics; exec python3 -m http.server "
                  "$ORCH_PORT_metrics --bind ${ORCH_ADDR_metrics%:*}"],
            "resources": {"cpu_millicores": 100, "memory_mb": 64}}]}]})


async def discovery_check(work: Path, result: dict[str, Any]) -> list[str]:
    """A live cluster in this process and a real Prometheus discovering it."""
    import aiohttp
    import yaml

    from agent.config import AgentConfig
    from agent.dns.config import DnsConfig
    from agent.server import Agent
    from controller.config import ControllerConfig
    from controller.server import Controller
    from orch.jobspec import parse_job

    binary = shutil.which("prometheus")
    if binary is None:
        progress("prometheus missing: apt-get install prometheus")
        return []

    async def get(url: str) -> Any:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s, \
                s.get(url) as r:
            return await r.json()

    ctl = Controller(ControllerConfig(
        name="bench-ctl", bind=f"{SD_NET}.1:0", rpc_addr=f"{SD_NET}.1:0",
        metrics_addr=f"{SD_NET}.1:0", http_addr="", data_dir=str(work / "ctl")))
    await ctl.start()
    agents: list[Agent] = []
    proc = None
    try:
        assert ctl.gossip is not None
        for i in (2, 3):
            a = Agent(AgentConfig(
                name=f"bench-agent-{i}", bind=f"{SD_NET}.{i}:0",
                join=[f"{SD_NET}.1:{ctl.gossip.addr[1]}"], rpc_addr=f"{SD_NET}.{i}:0",
                metrics_addr=f"{SD_NET}.{i}:0", lb_bind=f"{SD_NET}.{i}",
                dns=DnsConfig(addr=f"{SD_NET}.{i}:0"), data_dir=str(work / f"agent-{i}"),
                drivers=["process"], task_user="root", allow_root_tasks=True))
            await a.start()
            agents.append(a)
        await ctl.jobs.register(parse_job(EXPORTER, "exporter.json", "json"))
        assert agents[0].metrics is not None
        sd = f"http://{SD_NET}.2:{agents[0].metrics.port}/v1/sd/prometheus"
        config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
        config["global"]["scrape_interval"] = "1s"
        sdc = config["scrape_configs"][0]["http_sd_configs"][0]
        sdc["url"], sdc["refresh_interval"] = sd, "1s"
        (work / "prometheus.yml").write_text(yaml.safe_dump(config))
        web = f"{SD_NET}.100:{free_port(f'{SD_NET}.100')}"
        proc = await asyncio.create_subprocess_exec(
            binary, f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'tsdb'}", f"--web.listen-address={web}",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        want = 5  # a controller, two agents, two task ports
        t0 = time.monotonic()
        ok, active = False, []
        while time.monotonic() - t0 < 60 and not ok:
            await asyncio.sleep(0.5)
            with contextlib.suppress(aiohttp.ClientError, OSError):
                active = (await get(f"http://{web}/api/v1/targets"))["data"]["activeTargets"]
                ok = len(active) == want and all(t["health"] == "up" for t in active)
        took = time.monotonic() - t0
        result["sd_targets_ok"] = ok
        result["sd_seconds"] = round(took, 1)
        progress(f"prometheus: {len(active)} targets, all up: {ok}, after {took:.1f} s")
        return [table("Prometheus discovery (deploy/prometheus.yml, one agent's /v1/sd/prometheus)",
                      ("targets", "up", "all discovered and up", "seconds"),
                      [(len(active), sum(t["health"] == "up" for t in active), ok, took)])]
    finally:
        if proc is not None:
            proc.terminate()
            await proc.wait()
        for a in agents:
            await a.stop(stop_tasks=True)
        await ctl.stop(grace=0.5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.dns", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="end with one line of JSON")
    ap.add_argument("--quick", action="store_true", help="short rounds, a smaller cluster")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--members", type=int, default=100)
    ap.add_argument("--socket-members", type=int, default=20)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--only", choices=("throughput", "propagation", "discovery"))
    ap.add_argument("--serve-orch", type=int, metavar="PORT", help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    if opts.serve_orch:
        serve_orch(opts.serve_orch)
        return 0
    if opts.quick:  # the defaults shortened; what the command line names wins
        given = set(argv if argv is not None else sys.argv[1:])
        for flag, value in (("--rounds", 1), ("--seconds", 3.0), ("--members", 30),
                            ("--socket-members", 10), ("--trials", 3)):
            if flag not in given:
                setattr(opts, flag[2:].replace("-", "_"), value)
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="orch-bench-dns-") as d:
        work = Path(d)
        tables: list[str] = []
        if opts.only in (None, "throughput"):
            tables += throughput(opts, work, result)
        if opts.only in (None, "propagation"):
            tables += propagation(opts, result)
        if opts.only in (None, "discovery"):
            tables += asyncio.run(discovery_check(work, result))
    for t in tables:
        print(t)
    if opts.json:
        print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
