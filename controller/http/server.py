"""The controller's HTTP listener: ``/v1`` (the API), ``/ui`` (the web UI), one TLS.

With the cluster's trust (a bootstrapped or joined controller) it serves HTTPS with the
controller's own certificate; a client certificate from the cluster CA is identified as
on gRPC, and a request without one (a browser, ``curl`` with a token) is the ``web``
role, whose token is its only credential (``verify_client`` requires a certificate as
gRPC does). Without trust it serves plain HTTP on loopback only (``daemon.refuse_plain_text``).
The certificate is read again when it is renewed. Every response carries security
headers; the UI's forbid inline script (Content-Security-Policy).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from controller.http.api import HttpApi
from controller.http.openapi import DOCUMENT
from orch.tls import TlsConfig

log = logging.getLogger("api.http")

TLS_RELOAD = 60.0
"""Seconds between checks of the certificate file for a renewal."""
MAX_FORM = 2 * 1024 * 1024
"""The largest form the UI reads (a job file pasted into it: at most 1 MiB of text)."""
UI_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
          "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
"""The UI's Content-Security-Policy: its own scripts and styles only, nothing inline."""
API_CSP = "default-src 'none'; frame-ancestors 'none'"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def server_tls(tls: TlsConfig, *, verify_client: bool) -> ssl.SSLContext:
    """TLS 1.2+ with the controller's certificate; client certificates from the cluster CA
    (optional unless ``verify_client``; one from another CA fails the handshake)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=tls.ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    ctx.verify_mode = ssl.CERT_REQUIRED if verify_client else ssl.CERT_OPTIONAL
    return ctx


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Security headers on every response, and the time the controller spent on it
    (``Server-Timing: app;dur=<ms>``, as browsers' developer tools show it)."""
    t0 = time.perf_counter()
    try:
        resp = await handler(request)
    except web.HTTPException as e:
        resp = e
    ui = request.path.startswith("/ui")
    h = resp.headers
    if not resp.prepared:  # a stream has sent its headers already
        h["Server-Timing"] = f"app;dur={(time.perf_counter() - t0) * 1000:.1f}"
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("Referrer-Policy", "same-origin")  # "no-referrer" makes browsers send Origin: null
    h.setdefault("X-Frame-Options", "DENY")
    h.setdefault("Content-Security-Policy", UI_CSP if ui else API_CSP)
    h.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    if request.secure:
        h.setdefault("Strict-Transport-Security", "max-age=31536000")
    if not request.path.startswith("/ui/static/"):
        h.setdefault("Cache-Control", "no-store")
    if isinstance(resp, web.HTTPException):
        raise resp
    return resp


class HttpServer:
    """``host:port`` serving ``api`` under /v1 and ``ui`` (its routes) under /ui."""

    def __init__(self, api: HttpApi, host: str, port: int, *, tls: TlsConfig | None,
                 verify_client: bool = False,
                 ui: Callable[[web.Application], None] | None = None) -> None:
        self.api = api
        self.host, self.port = host, port
        self.tls = tls
        self.verify_client = verify_client
        self.ui = ui
        self._runner: web.AppRunner | None = None
        self._ssl: ssl.SSLContext | None = None
        self._reload: asyncio.Task[None] | None = None
        self._loaded = 0
        """The certificate file's mtime when it was loaded."""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}"

    def app(self) -> web.Application:
        app = web.Application(middlewares=[security_headers], client_max_size=MAX_FORM)
        app.router.add_get("/v1/openapi.json", self._openapi)
        app.router.add_route("*", "/v1/{tail:.*}", self.api.handle)
        app.router.add_get("/", self._root)
        if self.ui is not None:
            self.ui(app)
        return app

    async def start(self) -> None:
        if self.tls is not None:
            self._loaded = (await asyncio.to_thread(Path(self.tls.cert_file).stat)).st_mtime_ns
            self._ssl = server_tls(self.tls, verify_client=self.verify_client)
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self._ssl)
        await site.start()
        if self._runner.addresses:
            self.port = int(self._runner.addresses[0][1])
        if self.tls is not None:
            self._reload = asyncio.create_task(self._reload_tls(), name="http-tls-reload")
        log.info("HTTP API and web UI served", extra={"url": self.url})

    async def stop(self) -> None:
        if self._reload is not None:
            self._reload.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reload
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _reload_tls(self) -> None:
        """Load the renewed certificate: connections made from then on use it."""
        while True:
            await asyncio.sleep(TLS_RELOAD)
            try:
                await self.reload_tls()
            except (OSError, ssl.SSLError):
                log.exception("could not load the renewed certificate; the previous one stays")

    async def reload_tls(self) -> bool:
        """Load the certificate file again if it changed since it was loaded; whether it did."""
        assert self.tls is not None
        assert self._ssl is not None
        now = (await asyncio.to_thread(Path(self.tls.cert_file).stat)).st_mtime_ns
        if now == self._loaded:
            return False
        self._ssl.load_cert_chain(self.tls.cert_file, self.tls.key_file)
        self._loaded = now
        log.info("HTTP listener loaded the renewed certificate")
        return True

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=DOCUMENT.read_bytes(), content_type="application/json")

    async def _root(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/ui/" if self.ui is not None else "/v1/openapi.json")
