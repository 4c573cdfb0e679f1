"""The HTTP API's routes: every ControllerService RPC has one, requests are built from the
descriptors with clear errors, the OpenAPI document is current, statuses map every code."""

from __future__ import annotations

import contextlib
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.http import openapi, request
from controller.http.context import HTTP_STATUS
from controller.http.routes import ROUTES, SERVICE, allowed_methods, match, primary, unrouted
from orch.errors import JobSpecError, RequestError
from orch.v1 import controller_pb2

JOB = b"""
name: web
groups:
  - name: app
    count: 2
    tasks:
      - name: server
        driver: process
        command: /bin/sleep
        args: ["600"]
        resources: {cpu_millicores: 100, memory_mb: 32}
"""


def test_every_rpc_of_the_controller_service_has_a_route() -> None:
    assert not unrouted(), f"add a route to controller/http/routes.py for: {unrouted()}"
    for m in SERVICE.methods:
        route = primary(m.name)
        assert route.rpc == m.name
        # a client stream is one HTTP request: its body in pieces, or its first message
        assert not m.client_streaming or route.body == "raw" or route.first


def test_routes_are_unambiguous_and_match_their_own_paths() -> None:
    seen = set()
    for r in ROUTES:
        assert (r.method, r.path) not in seen
        seen.add((r.method, r.path))
        path = r.path
        for p in r.params:
            path = path.replace("{" + p + "}", "abc-123")
        found = match(r.method, path)
        assert found is not None, r.path
        assert found[0] == r, r.path
        assert found[1] == dict.fromkeys(r.params, "abc-123")


def test_unknown_paths_and_methods() -> None:
    assert match("GET", "/v1/nothing") is None
    assert match("PUT", "/v1/jobs") is None
    assert allowed_methods("/v1/jobs") == ["GET", "POST"]
    assert allowed_methods("/v1/job/web") == ["DELETE", "GET"]


def test_query_and_path_parameters_fill_the_request() -> None:
    r, params = match("GET", "/v1/allocations")  # type: ignore[misc]
    msg = request.build(r, params, [("job", "web"), ("include_stopped", "true"),
                                    ("index", "7")], b"")
    assert msg == controller_pb2.ListAllocationsRequest(job="web", include_stopped=True)
    r, params = match("GET", "/v1/events")  # type: ignore[misc]
    msg = request.build(r, params, [("topics", "job,node"), ("types", "NodeDown"),
                                    ("sinceIndex", "5")], b"")
    assert list(msg.topics) == ["job", "node"]  # type: ignore[attr-defined]
    assert msg.since_index == 5  # type: ignore[attr-defined]
    r, params = match("GET", "/v1/events/stream")  # type: ignore[misc]
    assert request.build(r, params, [], b"").follow  # type: ignore[attr-defined]
    r, params = match("GET", "/v1/keyring")  # type: ignore[misc]
    assert request.build(r, params, [], b"").op == controller_pb2.KEYRING_OP_LIST  # type: ignore[attr-defined]


def test_bad_parameters_say_which_and_what_they_take() -> None:
    r, params = match("GET", "/v1/jobs")  # type: ignore[misc]
    with pytest.raises(RequestError, match=r"'bogus': unknown .*namespace, prefix"):
        request.build(r, params, [("bogus", "1")], b"")
    r, params = match("GET", "/v1/allocations")  # type: ignore[misc]
    with pytest.raises(RequestError, match="'include_stopped': expected true or false"):
        request.build(r, params, [("include_stopped", "maybe")], b"")
    r, params = match("POST", "/v1/job/web/scale")  # type: ignore[misc]
    with pytest.raises(RequestError, match="not JSON"):
        request.build(r, params, [], b"{nope")
    with pytest.raises(RequestError, match="does not fit ScaleJobRequest"):
        request.build(r, params, [], b'{"count": "many"}')
    msg = request.build(r, params, [], b'{"group": "app", "count": 3}')
    assert msg == controller_pb2.ScaleJobRequest(name="web", group="app", count=3)
    with pytest.raises(RequestError, match="nests too deep"):
        request.build(r, params, [], b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(RequestError, match="does not fit"):
        request.build(r, params, [], b'{"reason": ' + b'{"a": ' * 50 + b"1" + b"}" * 51)
    r, params = match("GET", "/v1/events")  # type: ignore[misc]
    with pytest.raises(RequestError, match="'tail'"):
        request.build(r, params, [("tail", str(2**40))], b"")
    r, params = match("GET", "/v1/jobs")  # type: ignore[misc]
    with pytest.raises(RequestError, match="takes no body"):
        request.build(r, params, [], b"{}")
    with pytest.raises(RequestError, match="at most"):
        request.build(r, params, [], b" " * (request.MAX_BODY + 1))


def test_a_job_file_body_yaml_or_json_or_the_request_message() -> None:
    r, params = match("POST", "/v1/jobs")  # type: ignore[misc]
    msg = request.build(r, params, [("enforce_version", "3")], JOB, "application/yaml")
    assert isinstance(msg, controller_pb2.RegisterJobRequest)
    assert msg.job.name == "web"
    assert msg.enforce_version == 3
    as_request = request.build(r, params, [], b'{"job": {"name": "x"}, "enforceVersion": "2"}')
    assert isinstance(as_request, controller_pb2.RegisterJobRequest)
    assert as_request.job.name == "x"
    assert as_request.enforce_version == 2
    with pytest.raises(JobSpecError, match="request body"):
        request.build(r, params, [], b"name: web\ngroups: 7\n")
    with pytest.raises(RequestError, match="send the job file"):
        request.build(r, params, [], b"")


FIELDS = sorted({f.name for m in SERVICE.methods for f in m.input_type.fields})


@given(st.dictionaries(st.sampled_from(FIELDS) | st.text(min_size=1, max_size=8),
                       st.text(max_size=8) | st.integers().map(str)
                       | st.sampled_from(["true", "no", "-1", "1e9", "KEYRING_OP_LIST"]),
                       max_size=4))
def test_any_query_is_a_request_or_a_request_error(query: dict[str, str]) -> None:
    for r in ROUTES:
        if r.body != "none":
            continue
        with contextlib.suppress(RequestError):
            request.build(r, dict.fromkeys(r.params, "x"), query.items(), b"")


def test_every_status_code_has_an_http_status() -> None:
    assert set(HTTP_STATUS) == set(grpc.StatusCode)


def test_the_openapi_document_is_current_and_names_every_route() -> None:
    assert openapi.DOCUMENT.read_text() == openapi.render(), "run ./run proto"
    doc = openapi.document()
    for r in ROUTES:
        assert r.method.lower() in doc["paths"][r.path]
    assert {o["operationId"] for p in doc["paths"].values() for o in p.values()} >= \
        {m.name for m in SERVICE.methods if not m.client_streaming}


def test_the_documented_route_table_is_the_generated_one() -> None:
    doc = (Path(__file__).resolve().parents[3] / "docs" / "http-api.md").read_text()
    start = doc.index("<!-- routes-table")
    body = doc[doc.index("\n", start) + 1:doc.index("<!-- /routes-table -->")].strip()
    assert body == openapi.routes_markdown(), \
        "docs/http-api.md is stale: python -m controller.http.openapi --routes"
