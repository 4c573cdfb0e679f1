"""docs/security.md shows the authorization table as the rules make it today, and every RPC
of the controller's services has a rule of its own."""

from __future__ import annotations

from pathlib import Path

from tests.authz_table import HTTP_CALLERS, expected, http_methods, methods, render, render_http, unruled

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"


def test_every_rpc_has_a_rule() -> None:
    assert not unruled(), f"add these to controller.api.authz.RULES: {unruled()}"
    assert len(methods()) > 30


def test_the_documented_table_is_the_generated_one() -> None:
    text = DOC.read_text()
    start = text.index("<!-- authz-table")
    body = text[text.index("\n", start) + 1:text.index("<!-- /authz-table -->")].strip()
    assert body == render(), "docs/security.md is stale: python -m tests.authz_table --write"


def test_the_documented_http_table_is_the_generated_one() -> None:
    text = DOC.read_text()
    start = text.index("<!-- authz-http-table")
    body = text[text.index("\n", start) + 1:text.index("<!-- /authz-http-table -->")].strip()
    assert body == render_http(), "docs/security.md is stale: python -m tests.authz_table --write"


def test_http_admits_exactly_whom_grpc_admits_with_the_same_credentials() -> None:
    """A caller with a certificate gets over HTTP what it gets over gRPC; one without (web)
    gets what the operator's certificate gets with the same token."""
    for method in http_methods():
        for caller in HTTP_CALLERS:
            http = expected("ControllerService", method, caller, "http")
            same = caller.replace("web", "cli") if caller.startswith("web") else caller
            assert http == expected("ControllerService", method, same), (method, caller)


def test_nothing_but_the_join_is_open_to_a_join_token_and_no_plain_text_gets_in() -> None:
    for service, method in methods():
        assert expected(service, method, "plain") == "tls"
        assert expected(service, method, "removed") in ("role", "tls")
        joiner = expected(service, method, "joiner")
        assert joiner == ("ok" if (service, method) == ("NodeService", "Join") else
                          "tls" if service == "AgentService" else "role")
