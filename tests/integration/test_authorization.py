"""Every method of every gRPC service, called as every kind of caller, against the one table
(tests/authz_table.py, shown in docs/security.md): on a cluster set up as an installation
sets it up (a bootstrapped controller, agents joined with a token). Then every route of the
HTTP API, as every kind of HTTP caller, against the same table. A refused call changes
nothing in the store, and a new RPC without an entry in the table fails here."""

from __future__ import annotations

import json
import ssl
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf import symbol_database

from agent.server import Agent
from controller.http.routes import primary
from orch import pki
from orch.v1 import controller_pb2, controller_pb2_grpc, node_pb2
from tests.authz_table import CALLERS, HTTP_CALLERS, expected, http_methods, methods, unruled
from tests.integration.synthetic import wait_until
from tests.integration.test_trust import agent_config, bootstrapped

TIMEOUT = 10.0


@dataclass(frozen=True)
class Caller:
    """How one kind of caller connects: TLS material (None: plain text), the server name it
    checks, and its token."""

    ca: bytes | None
    cert: bytes | None = None
    key: bytes | None = None
    token: str = ""
    server: str = "controller.orch"

    def channel(self, addr: str, *, agent: bool) -> grpc.aio.Channel:
        if self.ca is None:
            return grpc.aio.insecure_channel(addr)
        creds = grpc.ssl_channel_credentials(self.ca, self.key, self.cert)
        server = "agent.orch" if agent and self.server == "controller.orch" else self.server
        return grpc.aio.secure_channel(addr, creds,
                                       options=[("grpc.ssl_target_name_override", server)])


def _request(service: str, method: str) -> Any:
    desc = controller_pb2.DESCRIPTOR.services_by_name[service].methods_by_name[method]
    return symbol_database.Default().GetSymbol(desc.input_type.full_name)()


async def _call(channel: grpc.aio.Channel, service: str, method: str, token: str) -> str:
    """The outcome of one call, as the table names them."""
    desc = controller_pb2.DESCRIPTOR.services_by_name[service].methods_by_name[method]
    stub = getattr(controller_pb2_grpc, f"{service}Stub")(channel)
    meta = (("authorization", f"Bearer {token}"),) if token else ()
    try:
        if desc.client_streaming:  # one empty message (the agents' stream: not a registration)
            async def one() -> AsyncIterator[Any]:
                yield _request(service, method)
            call = getattr(stub, method)(one(), timeout=TIMEOUT, metadata=meta)
            if desc.server_streaming:
                async for _ in call:
                    break
            else:
                await call
        elif desc.server_streaming:
            call = getattr(stub, method)(_request(service, method), timeout=TIMEOUT,
                                         metadata=meta)
            async for _ in call:
                break
        else:
            await getattr(stub, method)(_request(service, method), timeout=TIMEOUT,
                                        metadata=meta)
    except grpc.aio.AioRpcError as e:
        details = e.details() or ""
        if e.code() == grpc.StatusCode.UNAVAILABLE:
            return "tls"
        if e.code() == grpc.StatusCode.UNAUTHENTICATED:
            return "token"
        if e.code() == grpc.StatusCode.PERMISSION_DENIED:
            return "policy" if details.startswith("token ") else "role"
    return "ok"


def _tls(ca: bytes, cert: bytes | None = None, key: bytes | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca.decode())
    ctx.check_hostname = False  # the controller's certificate names controller.orch and its IPs
    if cert is not None and key is not None:
        with tempfile.TemporaryDirectory() as d:
            Path(d, "c.pem").write_bytes(cert)
            Path(d, "k.pem").write_bytes(key)
            ctx.load_cert_chain(Path(d, "c.pem"), Path(d, "k.pem"))
    return ctx


async def _http_call(base: str, method: str, tls: ssl.SSLContext | None, token: str) -> str:
    """The outcome of one HTTP call of an RPC's route, as the table names them."""
    route = primary(method)
    path = route.path
    for p in route.params:
        path = path.replace("{" + p + "}", "x")
    body = b'{"job": {}}' if route.body == "job" else b"{}" if route.body == "json" else b""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = (base if tls is not None else base.replace("https://", "http://")) + path
    if "/events" in path:
        url += "?tail=1"
    try:
        async with aiohttp.ClientSession() as http, http.request(
                route.method, url, data=body or None, headers=headers, ssl=tls or False,
                timeout=aiohttp.ClientTimeout(total=TIMEOUT), allow_redirects=False) as resp:
            text = (await resp.read()).decode(errors="replace")  # a snapshot is bytes
    except (aiohttp.ClientError, ssl.SSLError, ConnectionError):
        return "tls"
    if resp.status == 401:
        return "token"
    if resp.status == 403:
        return "policy" if json.loads(text)["message"].startswith("token ") else "role"
    assert resp.status != 429, "rate-limited: the table cannot be checked"
    return "ok"


async def test_every_rpc_as_every_caller_matches_the_table(tmp_path: Path) -> None:
    assert not unruled(), f"these RPCs have no entry in the table (controller.api.authz.RULES): " \
                          f"{unruled()}"
    async with bootstrapped(tmp_path, http_addr="127.0.44.1:0") as (ctl, cli):
        token = (await cli("cluster", "join-token", "agent", "-q")).strip()
        agent = Agent(agent_config(tmp_path, ctl, token, 1))
        gone = Agent(agent_config(tmp_path, ctl, token, 2))
        await agent.start()
        await gone.start()
        try:
            await wait_until(lambda: ctl.cluster.connected(agent.node_id)
                             and ctl.cluster.connected(gone.node_id), within=15)
            await cli("node", "rm", gone.node_id, "--keep-gossip-key")

            op = tmp_path / "ctl/pki/operator"
            ca, cli_cert, cli_key = (op / "ca.pem").read_bytes(), (op / "cli.pem").read_bytes(), \
                (op / "cli-key.pem").read_bytes()
            management = (op / "management.token").read_text().strip()
            read = _secret(await cli("acl", "token", "create", "--name", "r", "--policy", "read"))
            other = _secret(await cli("acl", "token", "create", "--name", "o", "--policy",
                                      "namespace:other:read,submit,driver-*"))
            other_ca = pki.Authority.generate("another cluster")
            stray_key = pki.new_key()
            stray = pki.cert_pem(other_ca.issue(stray_key.public_key(), role="cli", name="x"))
            joiner_auth = pki.join_authority(pki.JoinToken.parse(token).secret, "agent")
            joiner_cert, joiner_key = pki.joiner_identity(joiner_auth, "agent")

            def own(d: str) -> tuple[bytes, bytes]:
                return (tmp_path / d / "pki/cert.pem").read_bytes(), \
                    (tmp_path / d / "pki/key.pem").read_bytes()
            callers = {
                "plain": Caller(None),
                "no-cert": Caller(ca),
                "wrong-ca": Caller(ca, stray, pki.key_pem(stray_key)),
                "joiner": Caller(joiner_auth.pem, joiner_cert, joiner_key,
                                 server=pki.join_dns("agent")),
                "agent": Caller(ca, *own("agent-1")),
                "removed": Caller(ca, *own("agent-2")),
                "controller": Caller(ca, *own("ctl")),
                "cli": Caller(ca, cli_cert, cli_key),
                "cli+read": Caller(ca, cli_cert, cli_key, read),
                "cli+other-ns": Caller(ca, cli_cert, cli_key, other),
                "cli+management": Caller(ca, cli_cert, cli_key, management),
            }
            assert set(callers) == set(CALLERS)
            got: dict[tuple[str, str, str], str] = {}
            for name, caller in callers.items():
                for service, method in methods():
                    at_agent = service == "AgentService"
                    addr = agent.rpc_address if at_agent else ctl.rpc_address
                    before = ctl.cluster.state.index
                    async with caller.channel(addr, agent=at_agent) as ch:
                        outcome = await _call(ch, service, method, caller.token)
                    got[service, method, name] = outcome
                    if outcome != "ok":
                        assert ctl.cluster.state.index == before, \
                            f"{service}/{method} refused {name} but changed the store"
            wrong = {k: (v, expected(*k)) for k, v in got.items() if v != expected(*k)}
            assert not wrong, "outcome, expected:\n" + "\n".join(
                f"  {s}/{m} as {c}: {v} (table: {e})" for (s, m, c), (v, e) in sorted(wrong.items()))

            # the HTTP API: every route, as every kind of HTTP caller, against the same table
            assert ctl.http is not None
            base = ctl.http.url
            web = _tls(ca)
            http_callers: dict[str, tuple[ssl.SSLContext | None, str]] = {
                "plain": (None, ""),
                "wrong-ca": (_tls(ca, stray, pki.key_pem(stray_key)), ""),
                "agent": (_tls(ca, *own("agent-1")), ""),
                "removed": (_tls(ca, *own("agent-2")), ""),
                "controller": (_tls(ca, *own("ctl")), ""),
                "cli": (_tls(ca, cli_cert, cli_key), ""),
                "cli+read": (_tls(ca, cli_cert, cli_key), read),
                "cli+management": (_tls(ca, cli_cert, cli_key), management),
                "web": (web, ""), "web+read": (web, read), "web+other-ns": (web, other),
                "web+management": (web, management),
            }
            assert set(http_callers) == set(HTTP_CALLERS)
            http_got: dict[tuple[str, str], str] = {}
            for name, (tls, secret) in http_callers.items():
                for method in http_methods():
                    before = ctl.cluster.state.index
                    outcome = await _http_call(base, method, tls, secret)
                    http_got[method, name] = outcome
                    if outcome != "ok":
                        assert ctl.cluster.state.index == before, \
                            f"{method} over HTTP refused {name} but changed the store"
            wrong_http = {k: (v, expected("ControllerService", *k, transport="http"))
                          for k, v in http_got.items()
                          if v != expected("ControllerService", *k, transport="http")}
            assert not wrong_http, "HTTP outcome, expected:\n" + "\n".join(
                f"  {m} as {c}: {v} (table: {e})" for (m, c), (v, e) in sorted(wrong_http.items()))
        finally:
            await agent.stop(stop_tasks=True)
            await gone.stop(stop_tasks=True)


async def test_a_node_certificate_registers_only_its_own_node(tmp_path: Path) -> None:
    async with bootstrapped(tmp_path) as (ctl, cli):
        token = (await cli("cluster", "join-token", "agent", "-q")).strip()
        agent = Agent(agent_config(tmp_path, ctl, token, 1))
        await agent.start()
        try:
            await wait_until(lambda: ctl.cluster.connected(agent.node_id), within=15)
            ca = (tmp_path / "ctl/pki/ca.pem").read_bytes()
            cert, key = (tmp_path / "agent-1/pki/cert.pem").read_bytes(), \
                (tmp_path / "agent-1/pki/key.pem").read_bytes()
            caller = Caller(ca, cert, key)
            index = ctl.cluster.state.index

            async def register_as(node_id: str) -> AsyncIterator[controller_pb2.NodeMessage]:
                yield controller_pb2.NodeMessage(register=controller_pb2_node(node_id))
            async def connect() -> None:
                async with caller.channel(ctl.rpc_address, agent=False) as ch:
                    stub = controller_pb2_grpc.NodeServiceStub(ch)
                    async for _ in stub.Connect(register_as("someone-else"), timeout=TIMEOUT):
                        break
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await connect()
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert agent.node_id in (e.value.details() or "")
            assert "someone-else" not in ctl.cluster.state.nodes
            assert ctl.cluster.state.index == index
        finally:
            await agent.stop(stop_tasks=True)


def controller_pb2_node(node_id: str) -> node_pb2.Node:
    return node_pb2.Node(id=node_id, name=node_id)


def _secret(text: str) -> str:
    return next(line.split()[-1] for line in text.splitlines() if line.startswith("Secret"))
