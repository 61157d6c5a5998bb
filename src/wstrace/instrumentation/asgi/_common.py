"""Translation between ASGI ``websocket`` scopes and events and the core's vocabulary."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Mapping, MutableMapping, Optional

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind


__all__ = [
    "MARK",
    "ASGIApp",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "accept_carries_headers",
    "address",
    "current_server_span",
    "outer_server_span",
    "current_task",
    "encode_headers",
    "offered_subprotocols",
    "route_template",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MARK = "wstrace.asgi"
"""Scope key set on a traced connection, so that a second wstrace middleware (a
mounted sub-application, or the middleware added both by hand and by the
instrumentor) passes it through instead of tracing it twice."""


def accept_carries_headers(scope: Scope) -> bool:
    """Whether the server puts ``websocket.accept``'s ``headers`` on the 101: ASGI spec version 2.1 and later.

    The spec added the key in 2.1; a server that claims no ``spec_version`` is at 2.0 and may drop it. daphne
    (4.2) claims none and drops it; uvicorn (2.4) and hypercorn (2.3) send it. Without it, the envelope answer
    never reaches the client, so the envelope cannot be agreed.
    """
    asgi = scope.get("asgi")
    version = asgi.get("spec_version", "2.0") if isinstance(asgi, Mapping) else "2.0"
    try:
        major, _, minor = str(version).partition(".")
        return (int(major), int(minor.partition(".")[0] or 0)) >= (2, 1)
    except ValueError:
        return False


def offered_subprotocols(scope: Scope) -> list[str]:
    offered = scope.get("subprotocols") or ()
    return [str(p) for p in offered]


def address(value: Any) -> tuple[Optional[str], Optional[int]]:
    """``scope["server"]`` / ``scope["client"]``: ``(host, port)``, ``(path, None)`` for a Unix socket, or ``None``."""
    if isinstance(value, (tuple, list)) and len(value) >= 2:
        host, port = value[0], value[1]
        return (str(host) if host is not None else None), (int(port) if isinstance(port, int) else None)
    return None, None


def route_template(scope: Scope, entry_root_path: str) -> Optional[str]:
    """The matched route's path template, if a router recorded one in the scope.

    Starlette's router (and FastAPI's) sets ``scope["route"]`` when it matches,
    in the same scope dict. A route inside a mounted sub-application is relative
    to the mount: the prefix the mounts added to ``root_path`` (as matched) is put
    in front. A ``Mount`` that handed the connection to a non-router application
    names no endpoint, so it gives no template.
    """
    route = scope.get("route")
    template = getattr(route, "path", None)
    if not isinstance(template, str) or not template or hasattr(route, "routes"):
        return None
    root_path = scope.get("root_path") or ""
    prefix = root_path[len(entry_root_path) :] if root_path.startswith(entry_root_path) else ""
    return f"{prefix.rstrip('/')}{template}"


def outer_server_span(span: Span) -> Optional[Span]:
    """The span current at entry, if it is a SERVER span another instrumentation made for this connection.

    The rule: the current span is recording and of kind SERVER. Only an
    outer HTTP instrumentation (OpenTelemetry's ASGI middleware, FastAPI's
    native telemetry) makes such a span around an ASGI call; an ASGI server
    makes none. wstrace's handshake span becomes its child (``ConnectionTracer.server(nested_in=...)``);
    wstrace never writes on it.
    """
    if span.is_recording() and getattr(span, "kind", None) is SpanKind.SERVER:
        return span
    return None


def current_server_span() -> Optional[Span]:
    return outer_server_span(trace.get_current_span())


def encode_headers(pairs: Any, ours: dict[str, str]) -> list[tuple[bytes, bytes]]:
    """The application's accept headers plus ours; a header the application set wins."""
    headers = [(_bytes(name), _bytes(value)) for name, value in pairs or ()]
    taken = {name.lower() for name, _ in headers}
    for name, value in ours.items():
        key = name.encode("latin-1")
        if key not in taken:
            headers.append((key, value.encode("latin-1")))
    return headers


def _bytes(value: Any) -> bytes:
    # ASGI says bytes; a str is tolerated rather than failing the application's accept.
    return value.encode("latin-1") if isinstance(value, str) else bytes(value)


def current_task() -> Optional[object]:
    """The running asyncio task, or ``None`` (another async library, or none running)."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None
