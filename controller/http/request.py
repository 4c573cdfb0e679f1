"""An HTTP request -> the RPC's request message, by the message's descriptor (no hand-written
decoders): path and query parameters fill fields of the same name, a JSON body the rest
(protobuf's JSON mapping), and a job file body (YAML or JSON) the ``job`` of RegisterJob
and PlanJob. Every mistake is a RequestError naming the parameter and what it takes."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format, symbol_database
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from controller.http.routes import RESERVED, SERVICE, Route
from orch.errors import RequestError
from orch.jobspec import parse_job

MAX_BODY = 2 * 1024 * 1024
"""The largest request body read (a job file may hold 1 MiB; JSON of it a little more)."""
MAX_DEPTH = 32
"""The deepest a JSON body may nest (a job nests about 8 deep; as the job file reader)."""

_SCALARS = {
    FieldDescriptor.TYPE_STRING: "a string",
    FieldDescriptor.TYPE_BOOL: "true or false",
    FieldDescriptor.TYPE_INT32: "an integer", FieldDescriptor.TYPE_INT64: "an integer",
    FieldDescriptor.TYPE_UINT32: "an integer >= 0", FieldDescriptor.TYPE_UINT64: "an integer >= 0",
    FieldDescriptor.TYPE_SINT32: "an integer", FieldDescriptor.TYPE_SINT64: "an integer",
    FieldDescriptor.TYPE_DOUBLE: "a number", FieldDescriptor.TYPE_FLOAT: "a number",
    FieldDescriptor.TYPE_ENUM: "one of the enum's names",
}


def request_class(rpc: str) -> type[Message]:
    desc = SERVICE.methods_by_name[rpc].input_type
    cls: type[Message] = symbol_database.Default().GetSymbol(desc.full_name)
    return cls


def _field(desc: Any, name: str) -> FieldDescriptor | None:
    fd: FieldDescriptor | None = desc.fields_by_name.get(name)
    if fd is None:
        fd = next((f for f in desc.fields if f.json_name == name), None)
    return fd


def _scalar(fd: FieldDescriptor, text: str, where: str) -> Any:
    t = fd.type
    try:
        if t == FieldDescriptor.TYPE_STRING:
            return text
        if t == FieldDescriptor.TYPE_BOOL:
            low = text.lower()
            if low in ("", "true", "1", "yes"):
                return True
            if low in ("false", "0", "no"):
                return False
            raise ValueError(text)
        if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            return float(text)
        if t == FieldDescriptor.TYPE_ENUM:
            enum = fd.enum_type
            assert enum is not None
            value = enum.values_by_name.get(text) or enum.values_by_name.get(
                f"{enum.values[0].name.removesuffix('UNSPECIFIED')}{text.upper()}")
            if value is None:
                raise ValueError(text)
            return value.number
        if t in _SCALARS:
            n = int(text)
            if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64) and n < 0:
                raise ValueError(text)
            return n
    except ValueError:
        names = ", ".join(v.name for v in fd.enum_type.values) \
            if t == FieldDescriptor.TYPE_ENUM and fd.enum_type is not None else ""
        raise RequestError(f"{where}: expected {_SCALARS[t]}{f' ({names})' if names else ''}, "
                           f"got {text!r}") from None
    raise RequestError(f"{where}: {fd.name} cannot be given as a parameter (send it in the "
                       "JSON body)")


def set_params(msg: Message, params: Iterable[tuple[str, str]], *, kind: str) -> None:
    """Fill ``msg``'s scalar fields from (name, text) pairs; repeated fields take every
    value given (``topics=job&topics=node``) or a comma-separated list."""
    desc = msg.DESCRIPTOR
    for name, text in params:
        if kind == "query" and name in RESERVED:
            continue
        fd = _field(desc, name)
        where = f"{kind} parameter {name!r}"
        if fd is None or fd.message_type is not None:
            known = ", ".join(f.name for f in desc.fields if f.message_type is None)
            raise RequestError(f"{where}: unknown (this call takes: {known or 'none'})")
        try:
            if fd.is_repeated:
                getattr(msg, fd.name).extend(_scalar(fd, t, where) for t in text.split(",") if t)
            else:
                setattr(msg, fd.name, _scalar(fd, text, where))
        except (ValueError, TypeError) as e:  # out of the field's range (int32...)
            raise RequestError(f"{where}: {e}") from None


def parse_json(body: bytes, msg: Message) -> None:
    """Merge a JSON body (protobuf's JSON mapping) into ``msg``."""
    if not body.strip():
        return
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(f"the body is not JSON: {e}") from None
    except RecursionError:
        raise RequestError("the body nests too deep") from None
    if not isinstance(data, dict):
        raise RequestError("the body must be a JSON object")
    try:
        json_format.ParseDict(data, msg, max_recursion_depth=MAX_DEPTH)
    except (json_format.ParseError, RecursionError) as e:
        raise RequestError(f"the body does not fit {msg.DESCRIPTOR.name}: {e}") from None


def job_body(body: bytes, content_type: str, msg: Message) -> None:
    """RegisterJob/PlanJob: a job file (YAML or JSON, as ``orchctl job run`` reads it), or
    the request message as JSON (``{"job": {...}, "enforceVersion": 3}``)."""
    if not body.strip():
        raise RequestError("send the job file as the body (YAML or JSON)")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("the job file is not UTF-8 text") from None
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            data = None
        if isinstance(data, dict) and isinstance(data.get("job"), dict):
            parse_json(body, msg)
            return
    fmt = "json" if "json" in content_type or text.lstrip().startswith("{") else "yaml"
    msg.job.CopyFrom(  # type: ignore[attr-defined]
        parse_job(text, source="<request body>", fmt=fmt))


def build(route: Route, path_params: dict[str, str], query: Iterable[tuple[str, str]],
          body: bytes, content_type: str = "") -> Message:
    """The request message ``route``'s RPC takes, from the parts of an HTTP request (for a
    route with ``first``, that field of it: the one message of the RPC's stream)."""
    outer = msg = request_class(route.rpc)()
    if route.first:
        msg = getattr(outer, route.first)
    if len(body) > MAX_BODY:
        raise RequestError(f"the body is {len(body):,} bytes; at most {MAX_BODY:,} are read")
    if route.body == "job":
        job_body(body, content_type, msg)
    elif route.body == "json":
        parse_json(body, msg)
    elif route.body == "raw":
        raise RequestError(f"{route.method} {route.path} streams its body (not built here)")
    elif body.strip():
        raise RequestError(f"{route.method} {route.path} takes no body (use query parameters)")
    set_params(msg, query, kind="query")
    set_params(msg, path_params.items(), kind="path")
    for name, value in route.fixed.items():
        fd = msg.DESCRIPTOR.fields_by_name[name]
        if fd.enum_type is not None and isinstance(value, str):
            value = fd.enum_type.values_by_name[value].number
        setattr(msg, name, value)
    return outer
