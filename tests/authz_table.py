"""Who may call what: the one table, derived from the services' descriptors and the gate's
rules (``controller.api.authz.RULES``; the agent's service admits controllers only).

``tests/integration/test_authorization.py`` calls every method of every gRPC service as
every kind of caller below and checks each outcome against ``expected``, then every route
of the HTTP API (``controller.http.routes``) as every kind of HTTP caller against
``expected(..., transport="http")``: the same rules, so the same outcomes, except where
HTTP differs by design (``HTTP_CALLERS``). docs/security.md shows ``render()`` (a unit
test keeps it current):

    python -m tests.authz_table          # the tables, as markdown
    python -m tests.authz_table --write  # ... written into docs/security.md
"""

from __future__ import annotations

import sys
from pathlib import Path

from agent.agent_service import AgentService
from controller.api.authz import RULES
from orch.v1 import controller_pb2

SERVICES = ("ControllerService", "NodeService", "AgentService")
"""Every gRPC service of orch (the health and reflection services are read-only and hold
nothing)."""

CALLERS: dict[str, str] = {
    "plain": "plain text, no TLS",
    "no-cert": "TLS without a client certificate",
    "wrong-ca": "a certificate from another CA",
    "joiner": "a join token's holder (before it has a certificate)",
    "agent": "an agent's certificate",
    "removed": "the certificate of a node removed from the cluster",
    "controller": "a controller's certificate, no token",
    "cli": "the operator's certificate, no token",
    "cli+read": "the operator's certificate, a read token",
    "cli+other-ns": "the operator's certificate, a token for another namespace",
    "cli+management": "the operator's certificate, the management token",
}
"""Every kind of caller the suite tries, with what it presents."""

HTTP_CALLERS: dict[str, str] = {
    "plain": "plain HTTP to the HTTPS listener",
    "wrong-ca": "a certificate from another CA",
    "agent": "an agent's certificate",
    "removed": "the certificate of a node removed from the cluster",
    "controller": "a controller's certificate, no token",
    "cli": "the operator's certificate, no token",
    "cli+read": "the operator's certificate, a read token",
    "cli+management": "the operator's certificate, the management token",
    "web": "no certificate (a browser, curl), no token",
    "web+read": "no certificate, a read token",
    "web+other-ns": "no certificate, a token for another namespace",
    "web+management": "no certificate, the management token",
}
"""Every kind of HTTP caller the suite tries. HTTPS trusts the cluster CA only (a join
token's holder has nothing to do there: NodeService is not served over HTTP), and a
request without a certificate is the ``web`` role, whose token is its only credential."""

OUTCOMES = {
    "ok": "admitted (the call itself may still fail on what it asked)",
    "tls": "refused by TLS: the connection never opens",
    "role": "refused: the certificate's role (or a removed node's) may not call it",
    "token": "refused: an access token is needed",
    "policy": "refused: the token's policies do not allow it",
}


def methods() -> list[tuple[str, str]]:
    """(service, method) of every RPC the protos declare."""
    return [(s, m.name) for s in SERVICES
            for m in controller_pb2.DESCRIPTOR.services_by_name[s].methods]


def http_methods() -> list[str]:
    """The ControllerService methods, each served by an HTTP route (all but those that
    stream from the client)."""
    svc = controller_pb2.DESCRIPTOR.services_by_name["ControllerService"]
    return [m for s, m in methods() if s == "ControllerService"
            and not svc.methods_by_name[m].client_streaming]


def roles_of(caller: str) -> frozenset[str]:
    kind = caller.partition("+")[0]
    return frozenset({"joiner": {"join"}, "agent": {"agent"}, "controller": {"controller"},
                      "cli": {"cli"}, "web": {"web"}}.get(kind, set()))


def expected(service: str, method: str, caller: str, transport: str = "grpc") -> str:
    """What the gate must do with this caller's call (a key of ``OUTCOMES``)."""
    if caller in ("plain", "no-cert", "wrong-ca") or (transport == "http" and caller == "joiner"):
        return "tls"
    if service == "AgentService":
        if caller == "joiner":
            return "tls"  # an agent trusts the cluster CA only
        return "ok" if roles_of(caller) & AgentService.ROLES else "role"
    rule = RULES[f"{service}/{method}"]
    if caller == "removed" or not roles_of(caller) & rule.roles:
        return "role"
    if not rule.permission:
        return "ok"
    if rule.peer and caller == "controller":
        return "ok"
    token = caller.partition("+")[2]
    if not token:
        return "token"
    if token == "management":
        return "ok"
    if token == "read":
        return "ok" if rule.permission == "read" else "policy"
    return "policy"  # another namespace's token: the calls here act on the default one


MARKS = {"ok": "✓", "tls": "tls", "role": "role", "token": "token", "policy": "policy"}


def render() -> str:
    """The table, as markdown (docs/security.md)."""
    cols = list(CALLERS)
    lines = ["| RPC | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for service, method in methods():
        cells = [MARKS[expected(service, method, c)] for c in cols]
        lines.append(f"| {service}/{method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_http() -> str:
    """The HTTP API's table, as markdown (docs/security.md)."""
    from controller.http.routes import primary

    cols = list(HTTP_CALLERS)
    lines = ["| Route (RPC) | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for method in http_methods():
        r = primary(method)
        cells = [MARKS[expected("ControllerService", method, c, "http")] for c in cols]
        lines.append(f"| `{r.method} {r.path}` ({method}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def unruled() -> list[str]:
    """RPCs of the controller's services that have no rule of their own (a new RPC)."""
    return [f"{s}/{m}" for s, m in methods() if s != "AgentService" and f"{s}/{m}" not in RULES]


DOC = Path(__file__).resolve().parents[1] / "docs" / "security.md"


def write(doc: Path = DOC) -> None:
    """Put the current tables between their markers in docs/security.md."""
    text = doc.read_text()
    for marker, table in (("authz-table", render()), ("authz-http-table", render_http())):
        start = text.index("\n", text.index(f"<!-- {marker}")) + 1
        end = text.index(f"<!-- /{marker} -->")
        text = text[:start] + table + "\n" + text[end:]
    doc.write_text(text)


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write()
    else:
        print(render())
        print()
        print(render_http())
