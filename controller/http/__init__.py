"""The controller's HTTP listener: the JSON API under ``/v1`` and the web UI under ``/ui``.

routes      every ControllerService RPC's HTTP method and path (data; the OpenAPI document
            and the route test read it)
request     an HTTP request -> the RPC's request message, by the proto's descriptors
context     the gRPC servicer context the endpoints expect, over an HTTP request (so the
            one authorization gate and the one error mapping serve HTTP too)
api         /v1: calls the very servicer gRPC serves; JSON, NDJSON, server-sent events,
            blocking queries, followers' redirects
openapi     the OpenAPI document, generated from the protos and the routes
sessions    the web UI's sessions (a token behind an HttpOnly cookie) and CSRF tokens
ui          /ui: server-rendered pages (Jinja2) enhanced by htmx (vendored in static/)
server      the aiohttp application, its TLS and its security headers
"""
