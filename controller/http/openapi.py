"""The OpenAPI 3.1 document of ``/v1``, generated from the protos' descriptors and the routes.

    python -m controller.http.openapi            # writes controller/http/openapi.json
    python -m controller.http.openapi --check    # fails when it is stale (./run lint)

``./run proto`` regenerates it with the gRPC code; the controller serves the file at
``/v1/openapi.json``. Schemas follow protobuf's JSON mapping as the API writes it: the
protos' field names, 64-bit integers as strings, bytes as base64, enums by name.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from controller.http.routes import ROUTES, SERVICE, Route, listed_field

DOCUMENT = Path(__file__).with_name("openapi.json")
_INT64 = (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
          FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64)
_INT32 = (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_SINT32,
          FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_SFIXED32)


def _name(desc: Descriptor) -> str:
    return desc.full_name.removeprefix("orch.v1.").replace(".", "_")


def _scalar(fd: FieldDescriptor, schemas: dict[str, Any]) -> dict[str, Any]:
    t = fd.type
    if fd.message_type is not None:
        _message(fd.message_type, schemas)
        return {"$ref": f"#/components/schemas/{_name(fd.message_type)}"}
    if t == FieldDescriptor.TYPE_ENUM and fd.enum_type is not None:
        return {"type": "string", "enum": [v.name for v in fd.enum_type.values]}
    if t in _INT64:
        return {"type": "string", "format": "uint64" if t in (FieldDescriptor.TYPE_UINT64,
                                                             FieldDescriptor.TYPE_FIXED64)
                else "int64",
                "pattern": "^-?[0-9]+$"}
    if t in _INT32:
        return {"type": "integer", "format": "int32"}
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return {"type": "number"}
    if t == FieldDescriptor.TYPE_BOOL:
        return {"type": "boolean"}
    if t == FieldDescriptor.TYPE_BYTES:
        return {"type": "string", "contentEncoding": "base64"}
    return {"type": "string"}


def _field(fd: FieldDescriptor, schemas: dict[str, Any]) -> dict[str, Any]:
    mt = fd.message_type
    if mt is not None and mt.GetOptions().map_entry:
        return {"type": "object",
                "additionalProperties": _scalar(mt.fields_by_name["value"], schemas)}
    if fd.is_repeated:
        return {"type": "array", "items": _scalar(fd, schemas)}
    return _scalar(fd, schemas)


def _message(desc: Descriptor, schemas: dict[str, Any]) -> str:
    name = _name(desc)
    if name in schemas:
        return name
    schemas[name] = {}  # placeholder: messages may refer to themselves
    schemas[name] = {"type": "object", "additionalProperties": False,
                     "properties": {f.name: _field(f, schemas) for f in desc.fields}}
    return name


def _query_fields(route: Route) -> list[FieldDescriptor]:
    desc = SERVICE.methods_by_name[route.rpc].input_type
    if route.body != "none":
        return []
    return [f for f in desc.fields if f.message_type is None and f.name not in route.params
            and f.name not in route.fixed]


def _operation(route: Route, schemas: dict[str, Any], seen: dict[str, int]) -> dict[str, Any]:
    m = SERVICE.methods_by_name[route.rpc]
    seen[route.rpc] = seen.get(route.rpc, 0) + 1
    op_id = route.rpc if seen[route.rpc] == 1 else f"{route.rpc}{seen[route.rpc]}"
    params: list[dict[str, Any]] = [
        {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
        for p in route.params]
    for f in _query_fields(route):
        params.append({"name": f.name, "in": "query", "required": False,
                       "schema": _field(f, schemas)})
    if route.method == "GET" and not m.server_streaming:
        params += [{"name": "index", "in": "query", "required": False,
                    "description": "blocking query: wait until the cluster's index passes this "
                                   "(X-Orch-Index of an earlier reply)",
                    "schema": {"type": "integer", "minimum": 0}},
                   {"name": "wait", "in": "query", "required": False,
                    "description": "how long a blocking query waits at most (30s, 5m; at most "
                                   "10m; default 5m)", "schema": {"type": "string"}}]
    if route.method == "GET" and listed_field(route.rpc):
        params += [{"name": "per_page", "in": "query", "required": False,
                    "description": f"a page of at most this many {listed_field(route.rpc)}",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 10000}},
                   {"name": "next_token", "in": "query", "required": False,
                    "description": "where the page starts: X-Orch-Next-Token of the page before",
                    "schema": {"type": "string"}}]
    out = _message(m.output_type, schemas)
    ref = {"$ref": f"#/components/schemas/{out}"}
    if m.server_streaming:
        content: dict[str, Any] = {"text/event-stream": {"schema": {"type": "string"},
                                                          "description": f"data: {out} (JSON)"},
                                   "application/x-ndjson": {"schema": ref}}
        if route.rpc == "AllocationLogs":
            content["text/plain"] = {"schema": {"type": "string"}}
        if route.rpc == "SaveSnapshot":
            content = {"application/octet-stream": {"schema": {"type": "string",
                                                               "format": "binary"}}}
    else:
        content = {"application/json": {"schema": ref}}
    op: dict[str, Any] = {
        "operationId": op_id, "summary": route.summary,
        "description": f"ControllerService/{route.rpc}",
        "tags": [route.path.split("/")[2]],
        "parameters": params,
        "responses": {"200": {"description": out, "content": content},
                      **{str(s): {"$ref": f"#/components/responses/{r}"}
                         for s, r in ((400, "BadRequest"), (401, "Unauthenticated"),
                                      (403, "Forbidden"), (404, "NotFound"),
                                      (429, "TooManyRequests"))}},
    }
    if route.method != "GET":
        op["responses"]["307"] = {"$ref": "#/components/responses/NotLeader"}
    if route.body == "raw":
        op["requestBody"] = {"required": True, "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
    elif route.first:
        first = m.input_type.fields_by_name[route.first].message_type
        assert first is not None
        req = _message(first, schemas)
        op["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{req}"}}}}
    elif route.body == "json":
        req = _message(m.input_type, schemas)
        op["requestBody"] = {"required": False, "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{req}"}}}}
    elif route.body == "job":
        req = _message(m.input_type, schemas)
        op["requestBody"] = {"required": True, "description": "a job file, as orchctl job run "
                             "reads it (YAML or JSON), or the request message as JSON",
                             "content": {"application/yaml": {"schema": {"type": "string"}},
                                         "application/json": {"schema": {"oneOf": [
                                             {"type": "object"},
                                             {"$ref": f"#/components/schemas/{req}"}]}}}}
    return op


def document() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    seen: dict[str, int] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, schemas, seen)
    error = {"type": "object", "required": ["code", "message"], "properties": {
        "code": {"type": "string", "description": "the gRPC status name (NOT_FOUND...)"},
        "message": {"type": "string"},
        "leader": {"type": "string", "description": "the leader's gRPC address"}}}
    schemas["Error"] = error

    def resp(text: str) -> dict[str, Any]:
        return {"description": text, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/Error"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "orch controller API", "version": "v1",
                 "description": "The ControllerService of protos/orch/v1/controller.proto over "
                                "HTTP: one route per RPC, the same authorization as gRPC."},
        "security": [{"bearer": []}, {"token": []}, {}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "token": {"type": "apiKey", "in": "header", "name": "X-Orch-Token"}},
            "responses": {
                "BadRequest": resp("the request is malformed, or cannot be done as asked"),
                "Unauthenticated": resp("an access token is needed, or it is unknown"),
                "Forbidden": resp("the certificate's role or the token's policies do not "
                                  "allow it"),
                "NotFound": resp("no such object, or no such route"),
                "TooManyRequests": resp("the rate limit (Retry-After says when to retry)"),
                "NotLeader": resp("a follower sends writes to the leader (Location)")},
            "schemas": dict(sorted(schemas.items())),
        },
    }


def render() -> str:
    return json.dumps(document(), indent=1, sort_keys=False) + "\n"


ORCHCTL = {
    "ListJobs": "job status", "RegisterJob": "job run", "PlanJob": "job plan",
    "GetJob": "job status NAME", "StopJob": "job stop", "JobHistory": "job history",
    "RevertJob": "job revert", "ScaleJob": "job scale", "PromoteDeployment": "job promote",
    "ListAllocations": "job status NAME", "GetAllocation": "alloc status",
    "RestartAllocation": "alloc restart", "StopAllocation": "alloc stop",
    "AllocationLogs": "alloc logs [-f]", "ListNodes": "node list", "GetNode": "node status",
    "DrainNode": "node drain", "SetNodeEligibility": "node eligibility", "RemoveNode": "node rm",
    "ListMembers": "members", "ListServices": "service list", "GetLeader": "leader",
    "WatchServices": "service list --watch",
    "Watch": "events [-f]", "BootstrapAcl": "acl bootstrap", "CreateToken": "acl token create",
    "ListTokens": "acl token list", "SelfToken": "acl token self",
    "RevokeToken": "acl token revoke", "Keyring": "keyring", "FireEvent": "event fire",
    "GetJoinToken": "cluster join-token", "PurgeNode": "node purge",
    "GarbageCollect": "system gc", "SaveSnapshot": "operator snapshot save",
    "RestoreSnapshot": "operator snapshot restore", "ExecAllocation": "alloc exec",
}
"""The orchctl command that calls each RPC (docs/http-api.md's table)."""


def routes_markdown() -> str:
    """The route table of docs/http-api.md (a unit test keeps the page current)."""
    lines = ["| Method | Path | RPC | orchctl | What |", "|---|---|---|---|---|"]
    for r in ROUTES:
        cli = f"`{ORCHCTL[r.rpc]}`" if r.rpc in ORCHCTL else "-"
        lines.append(f"| {r.method} | `{r.path}` | {r.rpc} | {cli} | {r.summary} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m controller.http.openapi")
    ap.add_argument("--check", action="store_true", help="fail when the file is stale")
    ap.add_argument("--routes", action="store_true", help="print docs/http-api.md's route table")
    opts = ap.parse_args(argv)
    if opts.routes:
        print(routes_markdown())
        return 0
    text = render()
    if opts.check:
        if not DOCUMENT.exists() or DOCUMENT.read_text() != text:
            print(f"{DOCUMENT} is stale: run ./run proto", file=sys.stderr)
            return 1
        return 0
    DOCUMENT.write_text(text)
    print(f"wrote {DOCUMENT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
