"""``socketio.Server`` and ``socketio.AsyncServer``: the connection's handshake span, the carrier's answer, emit and
handler spans."""

from __future__ import annotations

from typing import Any, Callable, Optional

from wstrace import _handshake as hs
from wstrace._log import warn_once
from wstrace.connection import ConnectionTracer
from wstrace.instrumentation._instrumentor import Settings, is_instrumentation_enabled
from wstrace.instrumentation.socketio._common import (
    ANSWER_KEY,
    ANSWER_VALUE,
    ATTR_CONN,
    ATTR_EXCLUDED,
    Call,
    Handshake,
    Pair,
    after,
    current_emit,
    given,
    handling,
    held,
    offered,
    pair,
    record_close,
    splice,
    starting_emit,
)
from wstrace.instrumentation.socketio._receiving import ATTR_RECEIVERS, Receiver, close, folding
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
    return held(server, ATTR_CONN, dict)


def _excluded(server: Any) -> set[Any]:
    """The engine.io session ids of this server's connections that ``excluded_urls`` leaves alone."""
    return held(server, ATTR_EXCLUDED, set)


def _receiver(settings: Settings, server: Any, eio_sid: Any) -> Optional[Receiver]:
    """A traced connection's :class:`Receiver` (made on first use; none once it has closed)."""
    receivers: dict[Any, Receiver] = held(server, ATTR_RECEIVERS, dict)
    found = receivers.get(eio_sid)
    if found is None and eio_sid in _connections(server):
        found = receivers.setdefault(eio_sid, Receiver(settings.config.stream_idle, settings.config.run_limit))
        if eio_sid not in _connections(server):  # it closed meanwhile (another thread): keep nothing for it
            close(receivers.pop(eio_sid, None))
            return None
    return found


def _agreed(server: Any, eio_sid: Any) -> bool:
    """Whether this engine.io session offered the carrier (the server answers every offer, except on a connection
    it leaves alone)."""
    environ = getattr(server, "environ", None)
    return isinstance(environ, dict) and offered(environ.get(eio_sid)) and eio_sid not in _excluded(server)


def _environ_headers(environ: dict[str, Any]) -> list[tuple[str, str]]:
    headers = [(k[5:].replace("_", "-").lower(), v) for k, v in environ.items() if k.startswith("HTTP_")]
    return [(k, v) for k, v in headers if isinstance(v, str)]


Address = tuple[Optional[str], Optional[int]]

_PLACEHOLDER_NAMES = frozenset({"aiohttp", "asgi"})
"""What python-engineio's aiohttp, ASGI and tornado drivers put in ``SERVER_NAME`` (with ``SERVER_PORT`` and
``REMOTE_PORT`` ``"0"`` and ``REMOTE_ADDR`` ``"127.0.0.1"``) instead of the request's values."""


def _port(value: Any) -> Optional[int]:
    """A port from a socket address or an environ value; ``None`` for anything else and for 0 (a placeholder:
    no connected socket has port 0)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    return value if isinstance(value, int) and 0 < value < 65536 else None


def _pair(value: Any) -> Address:
    """A ``(host, port)`` socket address (an ASGI scope's, a transport's); ``(None, None)`` for anything else."""
    if isinstance(value, (tuple, list)) and len(value) >= 2 and isinstance(value[0], str):
        return value[0], _port(value[1])
    return None, None


def _addresses(environ: dict[str, Any]) -> tuple[Address, Address]:
    """The server's and the client's address and port of an engine.io request: from the request object the
    async drivers keep in the environ (aiohttp's, the ASGI scope, tornado's handler), else from the WSGI keys
    (``SERVER_NAME``, ``SERVER_PORT``, ``REMOTE_ADDR``, ``REMOTE_PORT``) when they are not the drivers'
    placeholders. Never raises: what cannot be read is ``None``."""
    try:
        scope = environ.get("asgi.scope")
        if isinstance(scope, dict):
            return _pair(scope.get("server")), _pair(scope.get("client"))
        request = environ.get("aiohttp.request")
        if request is not None:
            transport = request.transport
            if transport is None:
                return (None, None), (None, None)
            return _pair(transport.get_extra_info("sockname")), _pair(transport.get_extra_info("peername"))
        handler = environ.get("tornado.handler")
        if handler is not None:  # as the tornado adapter reads it: the Host header, the remote IP and its port
            request = handler.request
            client_address = request.remote_ip if isinstance(request.remote_ip, str) else None
            socket_host, socket_port = _pair(getattr(getattr(request.connection, "context", None), "address", None))
            client_port = socket_port if socket_host == client_address else None  # unless xheaders replaced it
            return hs.host_and_port(request.host), (client_address, client_port)
    except Exception as exc:
        warn_once("reading an engine.io request's addresses", exc)
        return (None, None), (None, None)
    name, remote = environ.get("SERVER_NAME"), environ.get("REMOTE_ADDR")
    if name in _PLACEHOLDER_NAMES and environ.get("SERVER_SOFTWARE") == name:  # a driver we do not read
        return (None, None), (None, None)
    server = (name if isinstance(name, str) else None, _port(environ.get("SERVER_PORT")))
    return server, (remote if isinstance(remote, str) else None, _port(environ.get("REMOTE_PORT")))


def _new_tracer(settings: Settings, environ: dict[str, Any]) -> ConnectionTracer:
    (server_address, server_port), (client_address, client_port) = _addresses(environ)
    return ConnectionTracer.server(
        settings.tracer,
        settings.config,
        path=str(environ.get("PATH_INFO") or "/"),
        query=str(environ.get("QUERY_STRING") or ""),
        headers=_environ_headers(environ),
        method=str(environ.get("REQUEST_METHOD") or "GET"),
        scheme="wss" if environ.get("wsgi.url_scheme") == "https" else "ws",
        server_address=server_address,
        server_port=server_port,
        client_address=client_address,
        client_port=client_port,
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
            if ct.excluded:  # left alone: no spans, no answer, no carrier, for as long as it lasts
                _excluded(instance).add(eio_sid)
                return None
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
        _excluded(instance).discard(eio_sid)
        ct = _connections(instance).pop(eio_sid, None)
        receivers = instance.__dict__.get(ATTR_RECEIVERS)
        if receivers is not None:
            close(receivers.pop(eio_sid, None))
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
            if emit_ is not None and eio_sid not in _excluded(instance):  # the span describes traced recipients
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
        if (
            eio_pkt.packet_type == _EIO_MESSAGE
            and isinstance(data, str)
            and data[:1] in ("2", "5")
            and eio_sid not in _excluded(instance)  # the span describes traced recipients
        ):
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
        if _only_excluded(instance, args, kwargs):
            return None
        started = fold(settings, instance, _EMIT_ARGS, args, kwargs) or starting_emit(
            settings, _EMIT_ARGS, args, kwargs
        )
        return started[0] if started is not None else None

    return pair(prepare)


def _only_excluded(server: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether an emit goes only to connections ``excluded_urls`` leaves alone (at least one): it is theirs, and
    gets no span. Asked only while the server has such connections; an emit a pub/sub manager also sends to the
    other processes is never theirs only."""
    excluded = server.__dict__.get(ATTR_EXCLUDED)
    if not excluded:
        return False
    try:
        manager = server.manager
        if callable(getattr(manager, "_publish", None)):
            return False
        found = given(_EMIT_ARGS, args, kwargs)
        room = found.get("to") or found.get("room")
        skip = found.get("skip_sid")
        skipped = set(skip) if isinstance(skip, list) else {skip}
        seen = False
        for sid, eio_sid in manager.get_participants(found.get("namespace") or "/", room):
            if sid in skipped:
                continue
            if eio_sid not in excluded:
                return False  # one traced recipient: the emit is traced
            seen = True
        return seen
    except Exception as exc:
        warn_once("reading a Socket.IO emit's recipients", exc)
        return False


def handle_event_internal(settings: Settings) -> Pair:
    """Wrap ``_handle_event_internal(server, sid, eio_sid, data, namespace, id)``: the handler runs in a CONSUMER
    span, with the carrier (where agreed) stripped from its arguments."""

    def prepare(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Optional[Call]:
        if len(args) < 5 or kwargs:
            return None
        server, eio_sid = args[0], args[2]
        if eio_sid in _excluded(server):
            return None
        ct = _connections(server).get(eio_sid)
        namespace = args[4] or "/"
        acked = len(args) > 5 and args[5] is not None
        fold = folding(settings, lambda: _receiver(settings, server, eio_sid), ct, namespace, acked)
        inner = handling(settings, args, 3, _agreed(server, eio_sid), ct, namespace, fold)
        return handling_streams(settings, server, inner)

    return pair(prepare)
