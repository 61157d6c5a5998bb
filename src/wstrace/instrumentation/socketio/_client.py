"""``socketio.Client`` and ``socketio.AsyncClient``: the handshake span and offer, the answer per namespace, emit and
handler spans."""

from __future__ import annotations

import contextvars
from typing import Any, Callable, Optional

from wstrace._close import NORMAL
from wstrace._log import warn_once
from wstrace.connection import ConnectionTracer
from wstrace.instrumentation._instrumentor import Settings, client_tracer, is_instrumentation_enabled
from wstrace.instrumentation.socketio._common import (
    ANSWER_KEY,
    ANSWER_VALUE,
    OFFER_HEADER,
    Call,
    Handshake,
    Pair,
    after,
    given,
    handling,
    held,
    pair,
    record_close,
    starting_emit,
)
from wstrace.instrumentation.socketio._receiving import ATTR_RECEIVER, Receiver, asked, close, folding, receiver_of
from wstrace.instrumentation.socketio._streams import closed, fold, handling_streams


__all__ = ["connect", "eio_connect", "emit", "handle_connect", "handle_eio_disconnect", "handle_event"]

ATTR_CT = "_wstrace_ct"
ATTR_AGREED = "_wstrace_agreed"

_PENDING: contextvars.ContextVar[Optional[dict[str, str]]] = contextvars.ContextVar(
    "wstrace_socketio_headers", default=None
)
"""Headers the Socket.IO client's ``connect`` wants on the engine.io connection request it is about to make."""


def _ct(client: Any) -> Optional[ConnectionTracer]:
    return client.__dict__.get(ATTR_CT)  # type: ignore[no-any-return]


def _left_alone(ct: Optional[ConnectionTracer]) -> bool:
    """Whether ``excluded_urls`` leaves the client's connection alone: its events get no span and no carrier."""
    return ct is not None and ct.excluded


def _receiver(settings: Settings, client: Any) -> Optional[Receiver]:
    """The connected client's :class:`Receiver` (made on first use; none once it has disconnected)."""
    if _ct(client) is None:
        return None
    found = receiver_of(settings, client, ATTR_RECEIVER)
    if _ct(client) is None:  # it disconnected meanwhile (another thread): keep nothing for it
        close(client.__dict__.pop(ATTR_RECEIVER, None))
        return None
    return found


def _agreed(client: Any) -> set[str]:
    return held(client, ATTR_AGREED, set)


def _trace_url(url: Any, path: Any) -> str:
    if not isinstance(url, str):
        return ""
    base = url.split("?", 1)[0].rstrip("/")
    return f"{base}/{str(path or 'socket.io').strip('/')}/"


class _Connecting(Handshake):
    """The client's handshake: while ``connect`` runs, the engine.io request gets our headers (:data:`_PENDING`)."""

    __slots__ = ("_client", "_headers", "_pending")

    def __init__(
        self,
        ct: ConnectionTracer,
        client: Any,
        headers: dict[str, str],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        websocket: bool,
    ) -> None:
        super().__init__(ct, args, kwargs, websocket=websocket)
        self._client = client
        self._headers = headers
        self._pending: Optional[contextvars.Token[Optional[dict[str, str]]]] = None

    def __enter__(self) -> _Connecting:
        self._pending = _PENDING.set(self._headers)
        super().__enter__()
        return self

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        super().__exit__(exc_type, exc, tb)
        try:
            if self._pending is not None:
                _PENDING.reset(self._pending)
        except ValueError:  # another context (cannot happen for a plain call): leave it
            pass

    def failed(self) -> None:
        self._client.__dict__.pop(ATTR_CT, None)


_CONNECT_ARGS = ("url", "headers", "auth", "transports", "namespaces", "socketio_path")


def connect(settings: Settings) -> Pair:
    """Wrap ``connect``: the handshake span covers the engine.io connection and the namespaces' ``CONNECT``; the
    engine.io request carries the context and the offer."""

    def prepare(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Optional[Call]:
        if not is_instrumentation_enabled():
            return None
        try:
            found = given(_CONNECT_ARGS, args[:6], kwargs)
            ct = client_tracer(settings, _trace_url(found.get("url"), found.get("socketio_path", "socket.io")))
            _agreed(instance).clear()
            old = instance.__dict__.get(ATTR_CT)
            if old is not None:
                old.closed(code=NORMAL, initiator="local")
            close(instance.__dict__.pop(ATTR_RECEIVER, None))
            instance.__dict__[ATTR_CT] = ct  # an excluded one too: its events are left alone
            if ct.excluded:
                return None  # no header, no offer: the connection goes as it would without wstrace
            headers = ct.request_headers()
            headers[OFFER_HEADER] = ANSWER_VALUE
        except Exception as exc:
            warn_once("starting a Socket.IO client handshake", exc)
            return None
        transports = found.get("transports")  # the first request is a polling one unless only websocket is allowed
        websocket = transports == "websocket" or (
            isinstance(transports, (list, tuple)) and list(transports) == ["websocket"]
        )
        return _Connecting(ct, instance, headers, args, kwargs, websocket)

    return pair(prepare)


def eio_connect(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Wrap the engine.io client's ``connect(url, headers=None, ...)`` (threaded and asyncio: the call is returned
    as it is, awaited by the caller): add the Socket.IO client's headers (only under its ``connect``)."""
    headers = _PENDING.get()
    if headers is not None:
        try:
            _PENDING.set(None)  # once: this connect only
            given_ = args[1] if len(args) > 1 else kwargs.get("headers")
            merged = {**dict(given_ or {}), **headers}
            if len(args) > 1:
                args = (args[0], merged, *args[2:])
            else:
                kwargs = {**kwargs, "headers": merged}
        except Exception as exc:
            warn_once("adding wstrace headers to an engine.io request", exc)
    return wrapped(*args, **kwargs)


def handle_connect(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Wrap ``_handle_connect(namespace, data)`` (threaded and asyncio): the server's answer turns the carrier on
    for the namespace; the library gets the data without it."""
    try:
        namespace, data = args[0], args[1]
        if isinstance(data, dict) and data.get(ANSWER_KEY) == ANSWER_VALUE:
            _agreed(instance).add(namespace or "/")
            rest = {k: v for k, v in data.items() if k != ANSWER_KEY}  # never the library's own dict
            args = (namespace, rest, *args[2:])
    except Exception as exc:
        warn_once("reading a Socket.IO CONNECT answer", exc)
    return wrapped(*args, **kwargs)


def handle_event(settings: Settings) -> Pair:
    """Wrap ``_handle_event(namespace, id, data)``: the handler runs in a CONSUMER span."""

    def prepare(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Optional[Call]:
        if len(args) < 3 or kwargs:
            return None
        ct = _ct(instance)
        if _left_alone(ct):
            return None
        namespace = args[0] or "/"
        fold = folding(settings, lambda: _receiver(settings, instance), ct, namespace, args[1] is not None)
        inner = handling(settings, args, 2, namespace in _agreed(instance), ct, namespace, fold)
        return handling_streams(settings, instance, inner)

    return pair(prepare)


_EMIT_ARGS = ("event", "data", "namespace", "callback")


def emit(settings: Settings) -> Pair:
    """Wrap ``emit(event, data=None, namespace=None, callback=None)``: its span, and the carrier where agreed."""

    def prepare(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Optional[Call]:
        ct = _ct(instance)
        if _left_alone(ct):
            return None
        started = fold(settings, instance, _EMIT_ARGS, args, kwargs, ct=ct, count=False) or starting_emit(
            settings, _EMIT_ARGS, args, kwargs, ct=ct, count=False
        )
        if started is None:
            return None
        call, found = started
        if ct is not None:
            asked(settings, instance, call.emit.span)
        try:
            carrier = call.emit.carrier
            if carrier is not None and (found.get("namespace") or "/") in _agreed(instance):
                data = found.get("data")
                if isinstance(data, tuple):
                    found["data"] = (*data, carrier)
                elif data is None:
                    found["data"] = (carrier,)
                else:
                    found["data"] = (data, carrier)
                call.args, call.kwargs = (), found
        except Exception as exc:
            warn_once("adding wstrace to a Socket.IO emit", exc)
        return call

    return pair(prepare)


_LOCAL_REASONS = frozenset({"client disconnect"})
_REMOTE_REASONS = frozenset({"server disconnect"})


def _disconnect(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
    def then() -> None:
        _agreed(instance).clear()
        closed(instance)
        ct = instance.__dict__.pop(ATTR_CT, None)  # first: no receiver is made for it after this
        close(instance.__dict__.pop(ATTR_RECEIVER, None))
        if ct is not None:
            record_close(ct, args[0] if args else kwargs.get("reason", ""), _LOCAL_REASONS, _REMOTE_REASONS)

    return after(then, args, kwargs)


handle_eio_disconnect = pair(_disconnect)
"""Wrap ``_handle_eio_disconnect(reason)``: the connection ended."""
