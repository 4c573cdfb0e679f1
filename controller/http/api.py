"""``/v1``: the ControllerService over HTTP, one route per RPC (``controller.http.routes``).

Each request becomes the RPC's request message (``controller.http.request``) and is handed
to the very servicer gRPC serves, with a context (``controller.http.context``) that makes
the one authorization gate and the one error mapping answer for HTTP: the same rules, the
same rate limits, the same refusals, the same messages.

- Replies are JSON in protobuf's JSON mapping, with field names as in the protos (as
  ``orchctl -o json`` prints them) and every field shown.
- Streams: ``Watch`` as one JSON object a line, or server-sent events (``Accept:
  text/event-stream``, or ``/v1/events/stream``; ``Last-Event-ID`` resumes after that
  index); ``AllocationLogs`` as the task's own bytes (``text/plain``), or server-sent events.
- Blocking queries, as Nomad's: a read with ``?index=N`` waits (up to ``wait``, default
  5 minutes) until the cluster's index passes N; every read says the index it saw in
  ``X-Orch-Index``.
- A follower answers a write with a 307 redirect to the leader's HTTP address (known from
  gossip), as it sends gRPC clients on; when it cannot name one, 503 and ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message

from controller.cluster import Cluster
from controller.http import request as requests
from controller.http.context import HttpAbort, HttpContext, certificate_pem, peer_of
from controller.http.request import request_class
from controller.http.routes import Route, allowed_methods, listed_field, match
from controller.leadership import LeaderStatus
from orch.errors import OrchError, RequestError
from orch.jobspec.durations import parse_duration
from orch.v1 import controller_pb2

log = logging.getLogger("api.http")

DEFAULT_WAIT = 300.0
"""Seconds a blocking query waits when it names no ``wait`` (Nomad's default)."""
MAX_WAIT = 600.0
"""The longest ``wait`` a blocking query may ask for (Nomad's limit)."""
MAX_BLOCKING = 1024
"""Blocking queries waiting at once; past it they are refused (429) rather than queued."""
MAX_STREAMS = 256
"""Streams (events, logs) open at once over HTTP; past it they are refused (429)."""
RAW = {"AllocationLogs": "text/plain; charset=utf-8", "SaveSnapshot": "application/octet-stream"}
"""Streams served as their bytes by default (``format=text``), with their content type."""
KEEPALIVE = 15.0
"""Seconds of silence after which a stream sends a heartbeat (a comment in server-sent
events, ``{}`` in NDJSON), so that proxies and clients keep it open."""
UPLOAD_CHUNK = 1 << 20
"""Bytes per piece of an uploaded body handed on (a snapshot restore)."""
MAX_PER_PAGE = 10_000
"""The most items a page of a list may ask for."""
OFF_LOOP = 256 * 1024
"""Replies larger than this (protobuf bytes) are encoded as JSON on a thread, so that one
big list (10,000 allocations take seconds) does not stall the controller's event loop."""
TOKEN_HEADER = "X-Orch-Token"
NEXT_HEADER = "X-Orch-Next-Token"
INDEX_HEADER = "X-Orch-Index"


def to_json(msg: Message) -> dict[str, Any]:
    """A message in protobuf's JSON mapping: the protos' field names, every field shown."""
    return json_format.MessageToDict(msg, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def dumps(data: Any) -> bytes:
    return json.dumps(data, indent=2, sort_keys=False).encode() + b"\n"


def secret_of(request: web.Request) -> str:
    """The access token an API request carries: ``Authorization: Bearer`` or
    ``X-Orch-Token`` (never a cookie: the API takes no cookies, so it needs no CSRF check)."""
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get(TOKEN_HEADER, "").strip()


def context_of(request: web.Request, secret: str, *, tls: bool) -> HttpContext:
    cert = certificate_pem(request.transport)
    return HttpContext(secret=secret, peer=peer_of(request.transport), cert_pem=cert,
                       token_only=tls and cert is None)


def error_body(code: str, message: str, **extra: str) -> bytes:
    return dumps({"code": code, "message": message, **{k: v for k, v in extra.items() if v}})


class HttpApi:
    """The ``/v1`` handler. ``servicer`` is the ControllerService servicer gRPC serves;
    ``http_of`` names a controller's HTTP address given its gRPC address ("" if unknown)."""

    def __init__(self, servicer: Any, cluster: Cluster, leader: LeaderStatus, *, tls: bool,
                 http_of: Callable[[str], str]) -> None:
        self.servicer = servicer
        self.cluster = cluster
        self.leader = leader
        self.tls = tls
        self.http_of = http_of
        self.blocking = 0
        self.streams = 0

    # --- calling --------------------------------------------------------------------------------

    async def call(self, rpc: str, msg: Message, ctx: HttpContext) -> Message:
        """One unary RPC through the gate (HttpAbort when it, or the call, fails)."""
        reply: Message = await getattr(self.servicer, rpc)(msg, ctx)
        return reply

    async def handle(self, request: web.Request) -> web.StreamResponse:
        found = match(request.method, request.path)
        if found is None:
            methods = allowed_methods(request.path)
            if methods:
                return web.Response(status=405, headers={"Allow": ", ".join(methods)},
                                    body=error_body("METHOD_NOT_ALLOWED", f"{request.path} takes "
                                                    f"{', '.join(methods)}"),
                                    content_type="application/json")
            return self._error(404, "NOT_FOUND", f"no API route {request.method} {request.path} "
                               "(GET /v1/openapi.json lists them)")
        route, params = found
        if route.body == "raw":
            return await self._upload(request, route)
        try:
            body = await self._body(request)
            msg = requests.build(route, params, request.query.items(), body,
                                 request.headers.get("Content-Type", ""))
            if route.rpc == "Watch" and not msg.since_index:  # type: ignore[attr-defined]
                last = request.headers.get("Last-Event-ID", "")
                if last.isdigit():
                    msg.since_index = int(last)  # type: ignore[attr-defined]
            index, wait = self._blocking(request, route)
        except OrchError as e:
            return self._error(400, "INVALID_ARGUMENT", str(e))
        ctx = context_of(request, secret_of(request), tls=self.tls)
        if route.client_streaming:  # its stream is this one message
            msg = _one(msg)  # type: ignore[assignment]
        if route.streaming:
            return await self._stream(request, route, msg, ctx)
        reply: Message | None
        try:
            if index is None:
                reply = await self.call(route.rpc, msg, ctx)
            else:
                reply = await self._blocking_call(route, msg, ctx, index, wait)
        except HttpAbort as e:
            return self._aborted(request, e)
        if reply is None:
            return self._error(429, "RESOURCE_EXHAUSTED", f"more than {MAX_BLOCKING} blocking "
                               "queries wait already; retry later", retry="1")
        headers = self._index_headers()
        try:
            nxt = page(route.rpc, reply, request.query.get("per_page"),
                       request.query.get("next_token"))
        except RequestError as e:
            return self._error(400, "INVALID_ARGUMENT", str(e))
        if nxt:
            headers[NEXT_HEADER] = nxt
        if reply.ByteSize() > OFF_LOOP:  # a big reply is encoded beside the event loop
            body = await asyncio.to_thread(lambda: dumps(to_json(reply)))
        else:
            body = dumps(to_json(reply))
        return web.Response(body=body, content_type="application/json", headers=headers)

    async def _upload(self, request: web.Request, route: Route) -> web.StreamResponse:
        """A client-streaming RPC of ``data`` chunks (RestoreSnapshot), fed from the body as
        it arrives (the RPC bounds what it takes)."""
        if route.params or request.query:
            return self._error(400, "INVALID_ARGUMENT", f"{route.method} {route.path} takes "
                               "only a body")
        chunk = request_class(route.rpc)

        async def pieces() -> AsyncIterator[Message]:
            while piece := await request.content.read(UPLOAD_CHUNK):
                yield chunk(data=piece)  # type: ignore[call-arg]
        ctx = context_of(request, secret_of(request), tls=self.tls)
        try:
            reply = await self.call(route.rpc, pieces(), ctx)  # type: ignore[arg-type]
        except HttpAbort as e:
            return self._aborted(request, e)
        return web.Response(body=dumps(to_json(reply)), content_type="application/json",
                            headers=self._index_headers())

    async def _body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > requests.MAX_BODY:
            raise RequestError(f"the body is {request.content_length:,} bytes; at most "
                                        f"{requests.MAX_BODY:,} are read")
        body = await request.content.read(requests.MAX_BODY + 1)
        if len(body) > requests.MAX_BODY:
            raise RequestError(f"the body is over {requests.MAX_BODY:,} bytes")
        return body

    def _index_headers(self) -> dict[str, str]:
        return {INDEX_HEADER: str(self.cluster.state.index),
                "X-Orch-Known-Leader": "true" if self.leader.leader()[0] else "false"}

    # --- blocking queries ----------------------------------------------------------------------

    @staticmethod
    def _blocking(request: web.Request, route: Route) -> tuple[int | None, float]:
        """The index a blocking query waits past, and for how long at most."""
        text = request.query.get("index")
        if text is None or route.method != "GET":
            return None, 0.0
        if not text.isdigit():
            raise RequestError(f"query parameter 'index': expected an index (an "
                                        f"integer >= 0, from {INDEX_HEADER}), got {text!r}")
        wait = DEFAULT_WAIT
        if "wait" in request.query:
            w = request.query["wait"]
            try:
                wait = float(w) if w.replace(".", "", 1).isdigit() else parse_duration(w) / 1e9
            except (ValueError, OrchError):
                raise RequestError(f"query parameter 'wait': expected a duration "
                                            f"(30s, 5m) or seconds, got {w!r}") from None
        return int(text), min(max(wait, 0.0), MAX_WAIT)

    async def _blocking_call(self, route: Route, msg: Message, ctx: HttpContext, index: int,
                             wait: float) -> Message | None:
        """The reply once the index is past ``index`` (or ``wait`` is over). The gate is
        passed before waiting, and again for the answer (a token revoked meanwhile gets
        nothing)."""
        reply = await self.call(route.rpc, msg, ctx)
        if self.cluster.state.index > index or wait <= 0:
            return reply
        if self.blocking >= MAX_BLOCKING:
            return None
        self.blocking += 1
        try:  # a little jitter, as Nomad adds, so that many waiters do not wake at once
            await self.cluster.index.wait_past(index, wait + random.uniform(0, wait / 16))
        finally:
            self.blocking -= 1
        return await self.call(route.rpc, msg, ctx)

    # --- streams --------------------------------------------------------------------------------

    @staticmethod
    def _format(request: web.Request, route: Route) -> str:
        fmt = request.query.get("format", "")
        if route.sse or fmt == "sse" or "text/event-stream" in request.headers.get("Accept", ""):
            return "sse"
        if fmt in ("ndjson", "text"):
            return fmt
        if fmt:
            raise RequestError(f"query parameter 'format': sse, ndjson or text, got "
                                        f"{fmt!r}")
        return "text" if route.rpc in RAW else "ndjson"

    async def _stream(self, request: web.Request, route: Route, msg: Message,
                      ctx: HttpContext) -> web.StreamResponse:
        try:
            fmt = self._format(request, route)
        except OrchError as e:
            return self._error(400, "INVALID_ARGUMENT", str(e))
        if self.streams >= MAX_STREAMS:
            return self._error(429, "RESOURCE_EXHAUSTED", f"{MAX_STREAMS} streams are open "
                               "already; retry later", retry="5")
        self.streams += 1
        try:
            try:
                stream = await Stream.open(self.servicer, route.rpc, msg, ctx)
            except HttpAbort as e:  # refused by the gate, or failed before it began
                return self._aborted(request, e)
            resp = web.StreamResponse(headers={
                "Content-Type": {"sse": "text/event-stream", "ndjson": "application/x-ndjson",
                                 "text": RAW.get(route.rpc, "text/plain; charset=utf-8")}[fmt],
                "X-Accel-Buffering": "no", **self._index_headers()})
            try:
                await resp.prepare(request)
                while True:
                    try:
                        item = await stream.next(KEEPALIVE)
                    except StopAsyncIteration:
                        break
                    except HttpAbort as e:  # the stream ended with an error after it began
                        await resp.write(_end_of_stream(fmt, e))
                        break
                    if item is None:  # silence: keep proxies and clients from giving up
                        if fmt == "sse":
                            await resp.write(b": keepalive\n\n")
                        elif fmt == "ndjson":
                            await resp.write(b"{}\n")  # as Nomad's event stream does
                        continue
                    await resp.write(_frame(fmt, item))
                await resp.write_eof()
                return resp
            except ConnectionError:  # the client went away: nothing more to send
                return resp
            finally:
                await stream.close()
        finally:
            self.streams -= 1

    # --- errors ---------------------------------------------------------------------------------

    @staticmethod
    def _error(status: int, code: str, message: str, retry: str = "") -> web.Response:
        return web.Response(status=status, body=error_body(code, message),
                            content_type="application/json",
                            headers={"Retry-After": retry} if retry else None)

    def _aborted(self, request: web.Request, e: HttpAbort) -> web.Response:
        leader = e.leader()
        if leader or (e.code.name == "FAILED_PRECONDITION"
                      and e.details.startswith("not the leader")):
            where = self.http_of(leader) if leader else ""
            if where:
                scheme = "https" if self.tls else "http"
                return web.Response(status=307, body=error_body(
                    "NOT_LEADER", e.details, leader=leader, location=f"{scheme}://{where}"),
                    content_type="application/json",
                    headers={"Location": f"{scheme}://{where}{request.path_qs}",
                             "X-Orch-Leader": leader})
            return web.Response(status=503, body=error_body("NOT_LEADER", e.details, leader=leader),
                                content_type="application/json",
                                headers={"Retry-After": "1", **({"X-Orch-Leader": leader}
                                                                if leader else {})})
        retry = "1" if e.code.name == "RESOURCE_EXHAUSTED" else ""
        return self._error(e.status, e.code.name, e.details, retry)


class Stream:
    """A server-streaming RPC, opened through the gate: ``open`` raises HttpAbort when the
    call is refused or fails before it yields anything (so the HTTP status can say so);
    ``next`` gives the items, or None after ``timeout`` seconds of silence."""

    def __init__(self, items: AsyncIterator[Message]) -> None:
        self._items = items
        self._next: asyncio.Future[Message] = self._advance()

    @classmethod
    async def open(cls, servicer: Any, rpc: str, msg: Message, ctx: HttpContext) -> Stream:
        s = cls(getattr(servicer, rpc)(msg, ctx))
        gate: asyncio.Future[Any] = asyncio.ensure_future(ctx.admitted.wait())
        first: set[asyncio.Future[Any]] = {s._next, gate}
        try:
            await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gate.cancel()
        if s._next.done() and isinstance(s._next.exception(), HttpAbort):
            await s.close()
            s._next.result()  # raises it
        return s

    async def next(self, idle: float | None = None) -> Message | None:
        """The next item; None after ``idle`` seconds without one; StopAsyncIteration at
        the end; HttpAbort when the call failed."""
        done, _ = await asyncio.wait({self._next}, timeout=idle)
        if not done:
            return None
        item = self._next.result()
        self._next = self._advance()
        return item

    def _advance(self) -> asyncio.Future[Message]:
        async def one() -> Message:
            return await anext(self._items)
        return asyncio.ensure_future(one())

    async def close(self) -> None:
        if not self._next.done():
            self._next.cancel()
        with contextlib.suppress(BaseException):
            await self._next
        with contextlib.suppress(Exception):
            await self._items.aclose()  # type: ignore[attr-defined]


def page(rpc: str, reply: Message, per_page: str | None, token: str | None) -> str:
    """Cut a list reply to one page (``per_page`` items from ``next_token`` on, as Nomad's
    paging); the next page's token ("" on the last page, or when no paging was asked)."""
    name = listed_field(rpc)
    if per_page is None and token is None:
        return ""
    if not name:
        raise RequestError("this call's reply is not a list: per_page and next_token do not "
                           "apply")
    try:
        n = int(per_page) if per_page is not None else MAX_PER_PAGE
        start = int(token or 0)
    except ValueError:
        raise RequestError("per_page and next_token are whole numbers (next_token from "
                           f"{NEXT_HEADER})") from None
    if not 0 < n <= MAX_PER_PAGE or start < 0:
        raise RequestError(f"per_page is 1..{MAX_PER_PAGE:,} and next_token >= 0")
    items = getattr(reply, name)
    total = len(items)
    kept = list(items[start:start + n])
    del items[:]
    items.extend(kept)
    return str(start + n) if start + n < total else ""


async def _one(msg: Message) -> AsyncIterator[Message]:
    """A client stream of one message."""
    yield msg


def _frame(fmt: str, item: Message) -> bytes:
    if fmt == "text" and isinstance(item, controller_pb2.LogChunk | controller_pb2.SnapshotChunk):
        return item.data
    data = json.dumps(to_json(item), separators=(",", ":"))
    if fmt == "sse":
        index = getattr(item, "index", 0) if isinstance(item, controller_pb2.Event) else 0
        return (f"id: {index}\n" if index else "").encode() + f"data: {data}\n\n".encode()
    return data.encode() + b"\n"


def _end_of_stream(fmt: str, e: HttpAbort) -> bytes:
    data = json.dumps({"code": e.code.name, "message": e.details})
    if fmt == "sse":
        return f"event: error\ndata: {data}\n\n".encode()
    if fmt == "ndjson":
        return json.dumps({"error": {"code": e.code.name, "message": e.details}}).encode() + b"\n"
    return f"\n[orch: the stream ended: {e.details}]\n".encode()
