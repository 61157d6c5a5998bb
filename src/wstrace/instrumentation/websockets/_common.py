"""Translation between websockets objects and core events, shared by its asyncio and sync layers."""

from __future__ import annotations

from typing import Any, Callable, ContextManager, Optional

from opentelemetry.context import Context

from wstrace._context import attach
from wstrace.carriers import hide_trace_tokens
from wstrace.connection import ConnectionTracer
from wstrace.instrumentation._instrumentor import Settings, Wrapper, client_tracer, is_instrumentation_enabled
from wstrace.semconv import ENVELOPE_HEADER, SESSION_HEADER


__all__ = [
    "ATTR",
    "Arguments",
    "HANDSHAKE",
    "Steps",
    "async_handshake_wrapper",
    "merged_headers",
    "new_client_tracer",
    "new_server_tracer",
    "report_close",
    "sync_handshake_wrapper",
    "tracer_of",
]

Arguments = tuple[tuple[Any, ...], dict[str, Any]]
Steps = Callable[[Settings, Any, tuple[Any, ...], dict[str, Any]], ContextManager[Arguments]]
"""One side's handshake steps around the library's ``handshake(*args, **kwargs)`` on a connection: a context
manager given the settings, the connection and the arguments, yielding the arguments to call it with."""

ATTR = "_wstrace"
"""Attribute under which an open connection holds its ConnectionTracer (``_connection`` reads it as
``self._wstrace``, a load the interpreter specializes)."""
HANDSHAKE = "_wstrace_handshake"
"""Attribute under which a server connection holds its ConnectionTracer until the handshake's outcome:
a connection that never opened must not record a close when its TCP connection goes."""


def async_handshake_wrapper(settings: Settings, steps: Steps) -> Wrapper:
    """The wrapper of an asyncio connection's ``handshake``: the call inside ``steps``, unless suppressed."""

    async def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not is_instrumentation_enabled():
            return await wrapped(*args, **kwargs)
        with steps(settings, instance, args, kwargs) as (args, kwargs):
            return await wrapped(*args, **kwargs)

    return wrapper


def sync_handshake_wrapper(settings: Settings, steps: Steps) -> Wrapper:
    """The wrapper of a sync connection's ``handshake``: the call inside ``steps``, unless suppressed."""

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not is_instrumentation_enabled():
            return wrapped(*args, **kwargs)
        with steps(settings, instance, args, kwargs) as (args, kwargs):
            return wrapped(*args, **kwargs)

    return wrapper


def tracer_of(connection: Any) -> Optional[ConnectionTracer]:
    """The connection's ConnectionTracer; ``None`` for anything else (a Mock answers every attribute)."""
    ct = getattr(connection, ATTR, None)
    return ct if isinstance(ct, ConnectionTracer) else None


def new_client_tracer(settings: Settings, connection: Any) -> ConnectionTracer:
    uri = connection.protocol.uri
    host = f"[{uri.host}]" if ":" in uri.host else uri.host  # an IPv6 address
    return client_tracer(settings, f"{'wss' if uri.secure else 'ws'}://{host}:{uri.port}{uri.path or '/'}")


def merged_headers(additional: Any, ours: dict[str, str]) -> list[tuple[str, str]]:
    """The caller's extra headers plus ours; a header the caller set wins."""
    if additional is None:
        pairs: list[tuple[str, str]] = []
    elif hasattr(additional, "raw_items"):
        pairs = list(additional.raw_items())
    elif hasattr(additional, "items"):
        pairs = list(additional.items())
    else:
        pairs = list(additional)
    taken = {name.lower() for name, _ in pairs}
    pairs.extend((name, value) for name, value in ours.items() if name not in taken)
    return pairs


def new_server_tracer(settings: Settings, connection: Any, request: Any) -> ConnectionTracer:
    """Start the handshake span and hide our subprotocol tokens from the application."""
    path, _, query = request.path.partition("?")
    headers = request.headers
    offered = [p.strip() for v in headers.get_all("Sec-WebSocket-Protocol") for p in v.split(",") if p.strip()]
    server = _address(connection, "local_address")
    client = _address(connection, "remote_address")
    ct = ConnectionTracer.server(
        settings.tracer,
        settings.config,
        path=path or "/",
        query=query,
        headers=headers,
        subprotocols=offered,
        scheme="wss" if _secure(connection) else "ws",
        server_address=server[0],
        server_port=server[1],
        client_address=client[0],
        client_port=client[1],
        instruments=settings.instruments,
    )
    rest, echo = hide_trace_tokens(offered)
    if len(rest) != len(offered):
        # The application negotiates subprotocols without ours; the echo answers a browser that offered only ours.
        del headers["Sec-WebSocket-Protocol"]
        if rest:
            headers["Sec-WebSocket-Protocol"] = ", ".join(rest)
        else:
            setattr(connection, ATTR + "_echo", echo)
    return ct


def add_response_headers(connection: Any, ct: ConnectionTracer, response: Any) -> None:
    if response is None or response.status_code != 101:
        return
    for name, value in ct.response_headers().items():
        response.headers[name] = value
    echo = getattr(connection, ATTR + "_echo", None)
    if echo and "Sec-WebSocket-Protocol" not in response.headers:
        response.headers["Sec-WebSocket-Protocol"] = echo


def drop_negotiation_headers(*messages: Any) -> None:
    """Remove wstrace's own negotiation headers from an open connection's upgrade request and response.

    websockets keeps both for the connection's lifetime; once the envelope is settled these headers serve
    nobody, and an idle connection should not pay for them (about 1 KB each, measured).
    """
    for message in messages:
        headers = getattr(message, "headers", None)
        if headers is None:
            continue
        for name in (ENVELOPE_HEADER, SESSION_HEADER):
            if name in headers:
                del headers[name]


def _secure(connection: Any) -> bool:
    transport = getattr(connection, "transport", None)  # asyncio
    if transport is not None:
        return transport.get_extra_info("ssl_object") is not None
    return hasattr(getattr(connection, "socket", None), "getpeercert")  # sync: an ssl.SSLSocket


def _address(connection: Any, name: str) -> tuple[Optional[str], Optional[int]]:
    try:
        value = getattr(connection, name)
    except Exception:
        return None, None
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None, None


def report_close(ct: ConnectionTracer, connection: Any, error: Optional[BaseException] = None) -> None:
    """Report the connection's close frames, in the order they went by, then its end."""
    protocol = connection.protocol
    rcvd, sent = protocol.close_rcvd, protocol.close_sent
    frames = [(ct.close_received, rcvd), (ct.close_sent, sent)]
    if not protocol.close_rcvd_then_sent:  # our frame went first (or only one frame went by)
        frames.reverse()
    for report, frame in frames:
        if frame is not None:
            report(frame.code, frame.reason)
    ct.closed(error=error)


def handshake_status(connection: Any) -> Optional[int]:
    response = getattr(connection, "response", None)
    return getattr(response, "status_code", None)


def attach_for_handler(ct: ConnectionTracer) -> None:
    """In the connection model, make the connection span current for the server's handler.

    websockets runs the handshake and the handler in the same task (or
    thread), which ends with the connection, so this is never detached.
    """
    ctx: Optional[Context] = ct.connection_context
    if ctx is not None:
        attach(ctx)
