"""``socketio.Server`` and ``socketio.AsyncServer``: the connection's handshake span, the carrier's answer, emit and
handler spans."""

from __future__ import annotations

from typing import Any, Callable, Optional

from wstrace._log import warn_once
from wstrace.connection import ConnectionTracer
from wstrace.instrumentation._instrumentor import Settings, is_instrumentation_enabled
from wstrace.instrumentation.socketio._common import (
    ANSWER_KEY,
    ANSWER_VALUE,
    ATTR_CONN,
    Call,
    Handshake,
    Pair,
    after,
    current_emit,
    handling,
    offered,
    pair,
    record_close,
    splice,
    starting_emit,
)
from wstrace.instrumentation.socketio._streams import closed, fold, handling_streams


__all__ = [
    "emit",
    "handle_eio_connect",
    "handle_eio_disconnect",
    "handle_event_internal",
    "send_eio_packet",
    "send_packet",
]

# socketio.packet / engineio.packet type codes (stable protocol numbers).
_CONNECT = 0
_EVENT = 2
_BINARY_EVENT = 5
_EIO_MESSAGE = 4

_EMIT_ARGS = ("event", "data", "to", "room", "skip_sid", "namespace", "callback", "ignore_queue")


def _connections(server: Any) -> dict[str, ConnectionTracer]:
    found = server.__dict__.get(ATTR_CONN)
    if found is None:
        found = server.__dict__.setdefault(ATTR_CONN, {})  # one dict, whichever thread gets here first
    return found  # type: ignore[no-any-return]


def _agreed(server: Any, eio_sid: Any) -> bool:
    """Whether this engine.io session offered the carrier (the server answers every offer)."""
    environ = getattr(server, "environ", None)
    return isinstance(environ, dict) and offered(environ.get(eio_sid))


def _environ_headers(environ: dict[str, Any]) -> list[tuple[str, str]]:
    headers = [(k[5:].replace("_", "-").lower(), v) for k, v in environ.items() if k.startswith("HTTP_")]
    return [(k, v) for k, v in headers if isinstance(v, str)]


def _new_tracer(settings: Settings, environ: dict[str, Any]) -> ConnectionTracer:
    port = environ.get("SERVER_PORT")
    return ConnectionTracer.server(
        settings.tracer,
        settings.config,
        path=str(environ.get("PATH_INFO") or "/"),
        query=str(environ.get("QUERY_STRING") or ""),
        headers=_environ_headers(environ),
        method=str(environ.get("REQUEST_METHOD") or "GET"),
        scheme="wss" if environ.get("wsgi.url_scheme") == "https" else "ws",
        server_address=environ.get("SERVER_NAME") if isinstance(environ.get("SERVER_NAME"), str) else None,
        server_port=int(port) if isinstance(port, (int, str)) and str(port).isdigit() else None,
        client_address=environ.get("REMOTE_ADDR") if isinstance(environ.get("REMOTE_ADDR"), str) else None,
        instruments=settings.instruments,
    )


def handle_eio_connect(settings: Settings) -> Pair:
    """Wrap ``_handle_eio_connect(eio_sid, environ)``: the engine.io connection request is the Socket.IO
    connection's handshake."""

    def prepare(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Optional[Call]:
        if not is_instrumentation_enabled() or len(args) < 2:
            return None
        try:
            eio_sid, environ = args[0], args[1]
            if not isinstance(environ, dict):
                return None
            ct = _new_tracer(settings, environ)
            _connections(instance)[eio_sid] = ct
            websocket = "transport=websocket" in str(environ.get("QUERY_STRING") or "").split("&")
            return Handshake(ct, args, kwargs, websocket=websocket)
        except Exception as exc:  # a request we cannot read: untraced
            warn_once("reading an engine.io connection request", exc)
            return None

    return pair(prepare)


_REMOTE_REASONS = frozenset({"client disconnect", "transport close"})
_LOCAL_REASONS = frozenset({"server disconnect"})


def _disconnect(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
    def then() -> None:
        eio_sid: Any = args[0] if args else kwargs.get("eio_sid")
        ct = _connections(instance).pop(eio_sid, None)
        if ct is not None:
            reason = args[1] if len(args) > 1 else kwargs.get("reason", "")
            record_close(ct, reason, _LOCAL_REASONS, _REMOTE_REASONS)
        closed(instance)

    return after(then, args, kwargs)


handle_eio_disconnect = pair(_disconnect)
"""Wrap ``_handle_eio_disconnect(eio_sid, reason)``: the connection ended."""


def send_packet(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Wrap ``AsyncServer._send_packet(eio_sid, pkt)``: answer an offer in ``CONNECT``; add the carrier to an
    ``EVENT`` sent with an ack id (the manager's per-recipient packets)."""
    try:
        eio_sid, pkt = args[0], args[1]
        kind = pkt.packet_type
        if kind == _CONNECT:
            data = pkt.data
            if isinstance(data, dict) and "sid" in data and _agreed(instance, eio_sid):
                answered = dict(data)  # never the library's own dict
                answered[ANSWER_KEY] = ANSWER_VALUE
                args = (eio_sid, type(pkt)(pkt.packet_type, answered, namespace=pkt.namespace, id=pkt.id))
        elif kind in (_EVENT, _BINARY_EVENT):
            emit_ = current_emit()
            if emit_ is not None:
                emit_.recipients += 1
                if emit_.carrier is not None and kind == _EVENT and _agreed(instance, eio_sid):
                    data = [*list(pkt.data), emit_.carrier]
                    args = (eio_sid, type(pkt)(kind, data=data, namespace=pkt.namespace, id=pkt.id))
    except Exception as exc:
        warn_once("adding wstrace to a Socket.IO packet", exc)
    return wrapped(*args, **kwargs)


def send_eio_packet(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Wrap ``AsyncServer._send_eio_packet(eio_sid, eio_pkt)``: the manager's broadcast sends one encoded packet
    to every recipient; one that agreed gets a copy with the carrier."""
    emit_ = current_emit()
    if emit_ is None:
        return wrapped(*args, **kwargs)
    try:
        eio_sid, eio_pkt = args[0], args[1]
        data = eio_pkt.data
        if eio_pkt.packet_type == _EIO_MESSAGE and isinstance(data, str) and data[:1] in ("2", "5"):
            emit_.recipients += 1
            encoded = emit_.encoded()
            if encoded is not None and _agreed(instance, eio_sid):
                spliced = splice(data, encoded)
                if spliced is not None:
                    args = (eio_sid, type(eio_pkt)(eio_pkt.packet_type, spliced))
    except Exception as exc:
        warn_once("adding wstrace to an engine.io packet", exc)
    return wrapped(*args, **kwargs)


def emit(settings: Settings) -> Pair:
    """Wrap ``emit``: one PRODUCER span per stream of emits (``_streams``), or per emit with an ack callback,
    whatever the number of recipients."""

    def prepare(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Optional[Call]:
        started = fold(settings, instance, _EMIT_ARGS, args, kwargs) or starting_emit(
            settings, _EMIT_ARGS, args, kwargs
        )
        return started[0] if started is not None else None

    return pair(prepare)


def handle_event_internal(settings: Settings) -> Pair:
    """Wrap ``_handle_event_internal(server, sid, eio_sid, data, namespace, id)``: the handler runs in a CONSUMER
    span, with the carrier (where agreed) stripped from its arguments."""

    def prepare(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Optional[Call]:
        if len(args) < 5 or kwargs:
            return None
        server, eio_sid = args[0], args[2]
        ct = _connections(server).get(eio_sid)
        return handling_streams(
            settings, server, handling(settings, args, 3, _agreed(server, eio_sid), ct, args[4] or "/")
        )

    return pair(prepare)
