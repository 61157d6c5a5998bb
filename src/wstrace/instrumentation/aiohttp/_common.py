"""Translation between aiohttp objects and core events, shared by its client and server sides."""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from typing import Any, Optional

from wstrace.carriers import hide_trace_tokens
from wstrace.connection import ConnectionTracer
from wstrace.instrumentation._instrumentor import Settings, client_tracer


__all__ = [
    "ATTR",
    "BINARY",
    "CLOSE",
    "CLOSED",
    "ERROR",
    "LOCAL_CLOSE",
    "RECEIVING",
    "TEXT",
    "add_response_headers",
    "failure_status",
    "in_receive",
    "in_send",
    "merged_headers",
    "new_client_tracer",
    "new_server_tracer",
    "offered_subprotocols",
    "on_connection_lost",
    "server_connection_lost",
    "tracer_of",
    "watch_server",
]

ATTR = "_wstrace"
"""Attribute under which a WebSocket response object holds its ConnectionTracer."""

LOCAL_CLOSE = "_wstrace_local_close"
"""Set on a connection once the application called ``close()``: that call records the close."""

RECEIVING = "_wstrace_receiving"
"""True on a connection while the application's ``receive()`` runs: the message it returns records the end.

aiohttp's own ``_waiting`` covers only the wait for a frame, not the ``close()`` with which ``receive()``
answers a close frame, during which the TCP connection may go."""

# aiohttp.WSMsgType values, as plain ints (an IntEnum compares equal to them),
# so that this module does not import aiohttp.
TEXT = 0x1
BINARY = 0x2
CLOSE = 0x8
CLOSED = 0x101
ERROR = 0x102

in_receive: ContextVar[bool] = ContextVar("wstrace_aiohttp_in_receive", default=False)
"""True while ``receive()`` runs: aiohttp calls ``close()`` from inside it, and the message it returns tells more."""

in_send: ContextVar[bool] = ContextVar("wstrace_aiohttp_in_send", default=False)
"""True while a send wrapper runs, so that a send method calling another is enveloped once."""


def tracer_of(ws: Any) -> Optional[ConnectionTracer]:
    """The connection's ConnectionTracer; ``None`` for anything else (a Mock answers every attribute)."""
    ct = getattr(ws, ATTR, None)
    return ct if isinstance(ct, ConnectionTracer) else None


def failure_status(exc: BaseException) -> Optional[int]:
    """The HTTP status a failed handshake exception carries (``WSServerHandshakeError``, ``HTTPException``)."""
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) and status > 0 else None


# Client ------------------------------------------------------------------------


def new_client_tracer(settings: Settings, session: Any, url: Any) -> ConnectionTracer:
    # The session resolves a relative URL against its base_url.
    build = getattr(session, "_build_url", None)
    if callable(build):
        target = build(url)
    else:
        from yarl import URL  # noqa: PLC0415 - aiohttp's own dependency, loaded with it

        target = URL(url)
    return client_tracer(settings, str(target.with_query(None).with_fragment(None)))


def merged_headers(headers: Any, ours: dict[str, str]) -> list[tuple[str, str]]:
    """The caller's request headers plus ours; a header the caller set wins."""
    if headers is None:
        pairs: list[tuple[str, str]] = []
    elif hasattr(headers, "items"):
        pairs = list(headers.items())  # a multidict yields every value of a repeated header
    else:
        pairs = list(headers)
    taken = {str(name).lower() for name, _ in pairs}
    pairs.extend((name, value) for name, value in ours.items() if name not in taken)
    return pairs


# Server ------------------------------------------------------------------------


def offered_subprotocols(request: Any) -> list[str]:
    values = request.headers.getall("Sec-WebSocket-Protocol", ())
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


def new_server_tracer(settings: Settings, request: Any, offered: list[str]) -> ConnectionTracer:
    transport = request.transport
    server = _address(transport, "sockname")
    client = _address(transport, "peername")
    return ConnectionTracer.server(
        settings.tracer,
        settings.config,
        path=request.path or "/",
        query=request.query_string,
        headers=request.headers,
        subprotocols=offered,
        scheme="wss" if request.secure else "ws",
        server_address=server[0],
        server_port=server[1],
        client_address=client[0],
        client_port=client[1],
        route=_route(request),
        instruments=settings.instruments,
    )


def add_response_headers(ws: Any, ct: ConnectionTracer, offered: list[str]) -> None:
    """Put the envelope answer and session id on the 101, before ``prepare`` sends it.

    aiohttp merges its handshake headers into ``ws.headers`` and sends them all.
    It picks the subprotocol by matching the offer against the application's
    list, which never holds our ``wstrace.tp.`` tokens; a browser that offered
    only ours gets the first echoed, or its handshake would fail.
    """
    for name, value in ct.response_headers().items():
        ws.headers[name] = value
    echo = hide_trace_tokens(offered)[1]
    if echo is not None and "Sec-WebSocket-Protocol" not in ws.headers:
        ws.headers["Sec-WebSocket-Protocol"] = echo


def _route(request: Any) -> Optional[str]:
    """The matched resource's template (``/rooms/{room}``), a low-cardinality span name."""
    try:
        resource = request.match_info.route.resource
    except Exception:  # a low-level server's BaseRequest has no match_info
        return None
    canonical = getattr(resource, "canonical", None)
    return canonical if isinstance(canonical, str) and canonical else None


def _address(transport: Any, name: str) -> tuple[Optional[str], Optional[int]]:
    try:
        value = transport.get_extra_info(name) if transport is not None else None
    except Exception:
        return None, None
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None, None


_serving: dict[int, tuple[Any, ConnectionTracer]] = {}
"""Server connections by ``id()`` of their aiohttp protocol object (slotted: it takes no attribute).

An entry lives from the 101 until the connection is lost or its handler task
ends, whichever comes first, so an id is never reused while it is here.
"""


def watch_server(request: Any, ws: Any, ct: ConnectionTracer) -> None:
    """End the server connection as soon as its TCP connection goes, or its handler task ends.

    aiohttp tells the handler only when it next calls ``receive()``; until then
    the message being handled would keep its span open. A handler that raises
    skips aiohttp's ``close()`` (which records a normal end), and the
    transport is simply closed (no close frame).
    """
    key = id(request.protocol)
    _serving[key] = (ws, ct)
    task = asyncio.current_task()
    if task is None:
        return

    def done(task: asyncio.Task[Any]) -> None:
        if _serving.get(key, (None, None))[1] is ct:
            del _serving[key]
        ct.closed(error=None if task.cancelled() else task.exception())

    task.add_done_callback(done)


def server_connection_lost(protocol: Any, exc: Optional[BaseException]) -> None:
    ws, ct = _serving.pop(id(protocol), (None, None))
    if ct is None or getattr(ws, LOCAL_CLOSE, False) or getattr(ws, RECEIVING, False):
        return  # not a WebSocket, or the application's close() or receive() is under way and records the end
    _lost(ws, ct, exc)


def _lost(ws: Any, ct: ConnectionTracer, exc: Optional[BaseException]) -> None:
    """The TCP connection ended before the application saw the end of the WebSocket."""
    # A close frame the application has not read yet is still in aiohttp's
    # queue: then the peer did close, and waited in vain for our answer.
    for item in getattr(getattr(ws, "_reader", None), "_buffer", ()):
        message = item if hasattr(item, "type") else item[0]  # queued as (message, size)
        if getattr(message, "type", None) == CLOSE:
            ct.close_received(message.data, message.extra or "")
            ct.closed()
            return
    ct.closed(error=exc)


def on_connection_lost(ws: Any, ct: ConnectionTracer) -> None:
    """End the client connection when its TCP connection goes, if nothing else will.

    The loss reaches the application only through ``receive()``; one that is
    not waiting in it (nor closing) would otherwise leave the spans open.
    """
    conn = getattr(getattr(ws, "_response", None), "connection", None)
    future = getattr(getattr(conn, "protocol", None), "closed", None)
    if not isinstance(future, asyncio.Future):
        return

    def done(future: asyncio.Future[Any]) -> None:
        if not future.cancelled():
            future.exception()  # retrieved: nobody else may await this future
        if getattr(ws, RECEIVING, False) or getattr(ws, LOCAL_CLOSE, False):
            return  # receive() or close() is about to see the end and records it better
        _lost(ws, ct, None)

    future.add_done_callback(done)
