"""Task templates: files an agent renders for a task from secrets, services and the node.

Templates are Jinja2, rendered in its sandbox (no attribute of a Python object that is
not data, no file or module access) with undefined names as errors::

    password = {{ secret("db-password") }}
    {% for e in service("kv") %}server {{ e.address }}   # every healthy endpoint
    {% endfor %}datacenter = {{ node.datacenter }}, kernel = {{ node.attr["kernel.name"] }}

``secret`` and ``service`` take a literal name, so that the controller knows from the job
which secrets each task needs (it sends only those) and the agent which services to watch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, nodes
from jinja2.sandbox import SandboxedEnvironment

FUNCTIONS = ("secret", "service")
"""What a template may call, each with one literal name."""
MAX_OUTPUT = 1024 * 1024
"""Bytes a rendered template may hold: a configuration file, not a data set."""

_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False,
                            keep_trailing_newline=True)


class TemplateProblem(ValueError):
    """A template that does not parse, calls what it may not, or cannot render."""


@dataclass(frozen=True, slots=True)
class Uses:
    """The names a template reads."""

    secrets: frozenset[str]
    services: frozenset[str]


@functools.lru_cache(maxsize=512)
def uses(data: str) -> Uses:
    """What ``data`` reads; TemplateProblem when it does not parse or names a secret or a
    service other than by a literal string."""
    try:
        ast = _ENV.parse(data)
    except TemplateSyntaxError as e:
        raise TemplateProblem(f"does not parse: {e.message or e} (line {e.lineno})") from None
    except TemplateError as e:
        raise TemplateProblem(f"does not parse: {e}") from None
    found: dict[str, set[str]] = {f: set() for f in FUNCTIONS}
    for call in ast.find_all(nodes.Call):
        if not isinstance(call.node, nodes.Name) or call.node.name not in FUNCTIONS:
            continue
        fn = call.node.name
        if len(call.args) != 1 or call.kwargs or not isinstance(call.args[0], nodes.Const) \
                or not isinstance(call.args[0].value, str):
            raise TemplateProblem(f"{fn}() takes one name as a literal string, such as "
                                  f'{fn}("name") (line {call.lineno})')
        found[fn].add(call.args[0].value)
    return Uses(frozenset(found["secret"]), frozenset(found["service"]))


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A healthy endpoint of a service, as a template sees it."""

    address: str
    """host:port"""
    host: str
    port: int
    node: str
    alloc_id: str


def render(data: str, *, secrets: Mapping[str, bytes],
           services: Callable[[str], Iterable[Endpoint]], node: Mapping[str, Any]) -> str:
    """The template's text; TemplateProblem when it cannot render (a missing secret, an
    undefined name, output past MAX_OUTPUT)."""
    def secret(name: str) -> str:
        if name not in secrets:
            raise TemplateProblem(f"secret {name!r} is not available (it does not exist, or "
                                  "the job does not name it)")
        return secrets[name].decode("utf-8", errors="replace")

    def service(name: str) -> list[Endpoint]:
        return sorted(services(name), key=lambda e: (e.host, e.port, e.alloc_id))

    try:
        out = _ENV.from_string(data).render(secret=secret, service=service, node=node)
    except TemplateProblem:
        raise
    except TemplateError as e:
        raise TemplateProblem(f"cannot render: {e}") from None
    except Exception as e:  # what a sandboxed template does wrong, e.g. a division by zero
        raise TemplateProblem(f"cannot render: {type(e).__name__}: {e}") from None
    if len(out.encode()) > MAX_OUTPUT:
        raise TemplateProblem(f"renders {len(out.encode())} bytes, more than {MAX_OUTPUT}")
    return out
