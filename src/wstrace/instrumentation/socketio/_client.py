"""``socketio.AsyncClient``: the handshake span and offer, the answer per namespace, emit and handler spans."""

from __future__ import annotations

import contextvars
from typing import Any, Callable, Optional

from opentelemetry import context as otel_context

from wstrace._log import warn_once
from wstrace.connection import ConnectionTracer
from wstrace.instrumentation._instrumentor import Settings, client_tracer, is_instrumentation_enabled
from wstrace.instrumentation.socketio._common import (
    ANSWER_KEY,
    ANSWER_VALUE,
    OFFER_HEADER,
    emitting,
    handler_span,
    run_in_span,
    split_carrier,
    wrap_callback,
)


__all__ = ["connect", "eio_connect", "emit", "handle_connect", "handle_eio_disconnect", "handle_event"]

Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]

ATTR_CT = "_wstrace_ct"
ATTR_AGREED = "_wstrace_agreed"

_PENDING: contextvars.ContextVar[Optional[dict[str, str]]] = contextvars.ContextVar(
    "wstrace_socketio_headers", default=None
)
"""Headers the Socket.IO client's ``connect`` wants on the engine.io connection request it is about to make."""


def _ct(client: Any) -> Optional[ConnectionTracer]:
    return client.__dict__.get(ATTR_CT)  # type: ignore[no-any-return]


def _agreed(client: Any) -> set[str]:
    found: Optional[set[str]] = client.__dict__.get(ATTR_AGREED)
    if found is None:
        found = client.__dict__[ATTR_AGREED] = set()
    return found


def _trace_url(url: Any, path: Any) -> str:
    if not isinstance(url, str):
        return ""
    base = url.split("?", 1)[0].rstrip("/")
    return f"{base}/{str(path or 'socket.io').strip('/')}/"


def connect(settings: Settings) -> Wrapper:
    """Wrap ``AsyncClient.connect``: the handshake span covers the engine.io connection and the namespaces'
    ``CONNECT``; the engine.io request carries the context and the offer."""

    async def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not is_instrumentation_enabled():
            return await wrapped(*args, **kwargs)
        try:
            url = args[0] if args else kwargs.get("url")
            path = args[5] if len(args) > 5 else kwargs.get("socketio_path", "socket.io")
            ct = client_tracer(settings, _trace_url(url, path))
            headers = ct.request_headers()
            headers[OFFER_HEADER] = ANSWER_VALUE
            _agreed(instance).clear()
            old = instance.__dict__.get(ATTR_CT)
            if old is not None:
                old.closed(code=1000, initiator="local")
            instance.__dict__[ATTR_CT] = ct
        except Exception as exc:
            warn_once("starting a Socket.IO client handshake", exc)
            return await wrapped(*args, **kwargs)
        pending = _PENDING.set(headers)
        token = otel_context.attach(ct.handshake_context)
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            ct.handshake_failed(error=exc)
            instance.__dict__.pop(ATTR_CT, None)
            raise
        finally:
            otel_context.detach(token)
            _PENDING.reset(pending)
        ct.opened()
        return result

    return wrapper


async def eio_connect(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Wrap ``engineio.AsyncClient.connect``: add the Socket.IO client's headers (only under its ``connect``)."""
    headers = _PENDING.get()
    if headers is not None:
        try:
            _PENDING.set(None)  # once: this task's connect only
            given = args[1] if len(args) > 1 else kwargs.get("headers")
            merged = {**dict(given or {}), **headers}
            if len(args) > 1:
                args = (args[0], merged, *args[2:])
            else:
                kwargs = {**kwargs, "headers": merged}
        except Exception as exc:
            warn_once("adding wstrace headers to an engine.io request", exc)
    return await wrapped(*args, **kwargs)


async def handle_connect(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Wrap ``AsyncClient._handle_connect(namespace, data)``: the server's answer turns the carrier on for the
    namespace; the library gets the data without it."""
    try:
        namespace, data = args[0], args[1]
        if isinstance(data, dict) and data.get(ANSWER_KEY) == ANSWER_VALUE:
            _agreed(instance).add(namespace or "/")
            rest = {k: v for k, v in data.items() if k != ANSWER_KEY}  # never the library's own dict
            args = (namespace, rest, *args[2:])
    except Exception as exc:
        warn_once("reading a Socket.IO CONNECT answer", exc)
    return await wrapped(*args, **kwargs)


def handle_event(settings: Settings) -> Wrapper:
    """Wrap ``AsyncClient._handle_event(namespace, id, data)``: the handler runs in a CONSUMER span."""

    async def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if len(args) < 3 or kwargs:
            return await wrapped(*args, **kwargs)
        span = None
        try:
            namespace, _id, data = args[:3]
            namespace = namespace or "/"
            carrier = None
            if isinstance(data, list) and len(data) > 1 and namespace in _agreed(instance):
                rest, carrier = split_carrier(data)
                if carrier is not None:  # removed even with instrumentation suppressed: the peer sent it for us
                    args = (args[0], args[1], rest, *args[3:])
            if is_instrumentation_enabled():
                ct = _ct(instance)
                span, ctx = handler_span(settings, carrier, ct, data, namespace)
        except Exception as exc:
            warn_once("starting a Socket.IO handler span", exc)
        if span is None:
            return await wrapped(*args, **kwargs)
        return await run_in_span(span, ctx, wrapped(*args, **kwargs))

    return wrapper


_EMIT_ARGS = ("event", "data", "namespace", "callback")


def emit(settings: Settings) -> Wrapper:
    """Wrap ``AsyncClient.emit(event, data=None, namespace=None, callback=None)``."""

    async def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not is_instrumentation_enabled():
            return await wrapped(*args, **kwargs)
        try:
            given = dict(zip(_EMIT_ARGS, args, strict=False))
            given.update(kwargs)
            event = given.get("event")
            namespace = given.get("namespace") or "/"
            ct = _ct(instance)
            session_id = ct.session_id if ct is not None else None
            span = emitting(settings, event, namespace, None, session_id=session_id, count=False)
        except Exception as exc:
            warn_once("starting a Socket.IO emit span", exc)
            return await wrapped(*args, **kwargs)
        with span as emit_:
            try:
                callback = given.get("callback")
                if callable(callback):  # anything else is passed on untouched
                    given["callback"] = wrap_callback(settings, callback, emit_, event, namespace, session_id)
                if emit_.carrier is not None and namespace in _agreed(instance):
                    data = given.get("data")
                    if isinstance(data, tuple):
                        given["data"] = (*data, emit_.carrier)
                    elif data is None:
                        given["data"] = (emit_.carrier,)
                    else:
                        given["data"] = (data, emit_.carrier)
                args, kwargs = (), given
            except Exception as exc:
                warn_once("adding wstrace to a Socket.IO emit", exc)
            return await wrapped(*args, **kwargs)

    return wrapper


async def handle_eio_disconnect(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Wrap ``AsyncClient._handle_eio_disconnect(reason)``: the connection ended."""
    try:
        return await wrapped(*args, **kwargs)
    finally:
        try:
            _agreed(instance).clear()
            ct = instance.__dict__.pop(ATTR_CT, None)
            if ct is not None:
                reason = str(args[0] if args else kwargs.get("reason", ""))
                if reason == "client disconnect":
                    ct.closed(code=1000, initiator="local")
                elif reason == "server disconnect":
                    ct.closed(code=1000, initiator="remote")
                else:
                    ct.closed(code=1006, reason=reason, initiator=None)
        except Exception as exc:
            warn_once("recording a Socket.IO disconnect", exc)
