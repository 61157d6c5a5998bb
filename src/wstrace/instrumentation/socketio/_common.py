"""What the Socket.IO server, client and manager wrappers share: the carrier, the negotiation, the spans.

The carrier's wire form is specified in ``docs/protocol.md`` ("Socket.IO: the per-event carrier"):

* offer (client → server): the engine.io connection request carries ``wstrace-socketio: 1`` (header), or the query
  parameter ``wstrace-socketio=1`` (browsers);
* answer (server → client): the Socket.IO ``CONNECT`` packet's data object gets the key ``"wstrace": "1"``, only on a
  connection that offered;
* carrier: on a namespace where both agreed, an ``EVENT`` packet's argument array ends with one object holding only
  the key ``"__wstrace__"``, whose value is the propagator's carrier (``{"traceparent": ..., "tracestate": ...}``).
"""

from __future__ import annotations

import contextvars
import inspect
import json
import weakref
from typing import Any, Callable, Optional, Sequence

from opentelemetry import context as otel_context, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind

from wstrace import _handshake as hs, propagation, semconv as sc
from wstrace._log import warn_once
from wstrace._spans import link, receive_parent, record_error
from wstrace.config import Config
from wstrace.connection import ConnectionTracer
from wstrace.instrumentation._instrumentor import Settings


__all__ = [
    "handler_span",
    "ANSWER_KEY",
    "ANSWER_VALUE",
    "CARRIER_KEY",
    "OFFER_ENVIRON",
    "OFFER_HEADER",
    "PUBSUB_KEY",
    "Emit",
    "current_emit",
    "emitting",
    "handshake_links",
    "offered",
    "process_span",
    "remote_parent",
    "run_in_span",
    "split_carrier",
    "valid_carrier",
    "wrap_callback",
]

OFFER_HEADER = "wstrace-socketio"
"""Header (and query parameter) of the client's offer; its value is :data:`ANSWER_VALUE`."""
OFFER_ENVIRON = "HTTP_WSTRACE_SOCKETIO"
"""The offer header as engine.io's WSGI-style ``environ`` holds it."""
ANSWER_KEY = "wstrace"
"""Key the server adds to its ``CONNECT`` packet's data to accept the offer."""
ANSWER_VALUE = "1"
"""Version of the carrier, offered and answered."""
CARRIER_KEY = "__wstrace__"
"""The one key of the trailing argument object that carries an event's context."""
PUBSUB_KEY = "wstrace"
"""Key added to a pub/sub manager's ``emit`` message: the emitter's context, a propagator carrier."""

SYSTEM = "socket.io"
EVENT_NAME = sc.SOCKETIO_EVENT_NAME
NAMESPACE = sc.SOCKETIO_NAMESPACE
ROOMS = sc.SOCKETIO_ROOMS
RECIPIENTS = sc.SOCKETIO_RECIPIENTS

MAX_FIELDS = 8
"""Most entries a carrier may hold (traceparent, tracestate, baggage, ... of any propagator)."""
MAX_VALUE = 4096
"""Longest carrier value accepted, in characters (the handshake sources' bound)."""

ATTR_CONN = "_wstrace_connections"
"""Server attribute: engine.io session id → its ConnectionTracer."""


def offered(environ: Any) -> bool:
    """Whether an engine.io connection request (its ``environ``) offered the carrier; never raises."""
    try:
        if not isinstance(environ, dict):
            return False
        if str(environ.get(OFFER_ENVIRON, "")).strip() == ANSWER_VALUE:
            return True
        query = environ.get("QUERY_STRING")
        if isinstance(query, str) and OFFER_HEADER in query:
            return f"{OFFER_HEADER}={ANSWER_VALUE}" in query.split("&")
    except Exception as exc:  # a hostile environ: no offer
        warn_once("reading a Socket.IO offer", exc)
    return False


def valid_carrier(value: Any) -> bool:
    if not isinstance(value, dict) or not value or len(value) > MAX_FIELDS:
        return False
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str) or len(key) > 64 or len(item) > MAX_VALUE:
            return False
    return True


def split_carrier(args: Sequence[Any]) -> tuple[Sequence[Any], Optional[dict[str, str]]]:
    """The arguments without a trailing carrier, and the carrier; ``(args, None)`` (the same object, untouched)
    when the last argument is not exactly a well-formed carrier object."""
    if not args:
        return args, None
    last = args[-1]
    if type(last) is not dict or len(last) != 1 or CARRIER_KEY not in last:
        return args, None
    carrier = last[CARRIER_KEY]
    if not valid_carrier(carrier):
        return args, None
    return list(args[:-1]), dict(carrier)


def carrier_arg(ctx: Optional[Context] = None) -> Optional[dict[str, Any]]:
    """The trailing argument object for the current context (or ``ctx``), ``None`` when there is nothing to carry."""
    carrier = propagation.inject(ctx)
    return {CARRIER_KEY: carrier} if carrier else None


_HANDSHAKE_LINKS: weakref.WeakKeyDictionary[ConnectionTracer, tuple[Link, ...]] = weakref.WeakKeyDictionary()


def handshake_links(ct: Optional[ConnectionTracer]) -> Sequence[Link]:
    """The link to a connection's handshake, one tuple per connection (as the WebSocket receive spans reuse
    theirs)."""
    if ct is None:
        return ()
    found = _HANDSHAKE_LINKS.get(ct)
    if found is None:
        span_context = trace.get_current_span(ct.handshake_context).get_span_context()
        found = (link(span_context, "handshake"),) if span_context.is_valid else ()
        _HANDSHAKE_LINKS[ct] = found
    return found


def attributes(event: Any, namespace: str, operation: str, session_id: Optional[str]) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        sc.MESSAGING_SYSTEM: SYSTEM,
        sc.MESSAGING_OPERATION_TYPE: operation,
        sc.MESSAGING_OPERATION_NAME: operation,
        sc.MESSAGING_DESTINATION_NAME: namespace,
        EVENT_NAME: str(event),
        NAMESPACE: namespace,
    }
    if session_id is not None:
        attrs[sc.SESSION_ID] = session_id
    return attrs


def rooms_of(room: Any) -> Optional[list[str]]:
    if room is None:
        return None
    if isinstance(room, (list, tuple, set, frozenset)):
        return [str(r) for r in room]
    return [str(room)]


class Emit:
    """One emit in progress: its span, its carrier (encoded once), and how many packets it sent."""

    __slots__ = ("_encoded", "carrier", "context", "recipients", "span")

    def __init__(self, span: Span, context: Context) -> None:
        self.span = span
        self.context = context
        self.recipients = 0
        self.carrier: Optional[dict[str, Any]] = None
        self._encoded: Optional[str] = None
        if span.get_span_context().is_valid:
            self.carrier = carrier_arg(context)

    def encoded(self) -> Optional[str]:
        """The carrier object as JSON, once per emit."""
        if self._encoded is None and self.carrier is not None:
            self._encoded = json.dumps(self.carrier, separators=(",", ":"))
        return self._encoded


_EMIT: contextvars.ContextVar[Optional[Emit]] = contextvars.ContextVar("wstrace_socketio_emit", default=None)


def current_emit() -> Optional[Emit]:
    return _EMIT.get()


class emitting:
    """Start an emit's PRODUCER span and make it (and its :class:`Emit`) current for the emit's sends."""

    __slots__ = ("_attachment", "_count", "_emit", "_token")

    def __init__(
        self,
        settings: Settings,
        event: Any,
        namespace: str,
        room: Any,
        *,
        parent: Optional[Context] = None,
        links: Sequence[Link] = (),
        session_id: Optional[str] = None,
        count: bool = True,
    ) -> None:
        attrs = attributes(event, namespace, "send", session_id)
        rooms = rooms_of(room)
        if rooms:
            attrs[ROOMS] = rooms
            attrs[sc.MESSAGING_DESTINATION_NAME] = rooms[0] if len(rooms) == 1 else ",".join(rooms)
        base = parent if parent is not None else otel_context.get_current()
        if settings.config.message_spans:
            span = settings.tracer.start_span(
                f"send {event} {namespace}", parent, kind=SpanKind.PRODUCER, attributes=attrs, links=links
            )
        else:  # no event spans: the carrier holds the context current at the emit
            span = trace.NonRecordingSpan(trace.get_current_span(base).get_span_context())
        ctx = trace.set_span_in_context(span, base)
        self._emit = Emit(span, ctx)
        self._count = count
        self._token: Optional[contextvars.Token[Optional[Emit]]] = None
        self._attachment: Optional[object] = None

    def __enter__(self) -> Emit:
        self._token = _EMIT.set(self._emit)
        self._attachment = otel_context.attach(self._emit.context)
        return self._emit

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        span = self._emit.span
        try:
            if self._count and span.is_recording():
                span.set_attribute(RECIPIENTS, self._emit.recipients)
            if exc is not None:
                record_error(span, exc)
            span.end()
        except Exception as error:
            warn_once("ending a Socket.IO emit span", error)
        try:
            otel_context.detach(self._attachment)  # type: ignore[arg-type]
            if self._token is not None:
                _EMIT.reset(self._token)
        except Exception as error:  # another context: leave it
            warn_once("restoring the context after a Socket.IO emit", error)


def remote_parent(
    config: Config, carrier: Optional[dict[str, str]], ct: Optional[ConnectionTracer]
) -> tuple[Context, Sequence[Link]]:
    """Parent and links of an inbound event's span, per the trust policy: the sender's context from the carrier,
    else a fresh trace linked to the connection's handshake."""
    remote, remote_span = hs.remote(config, carrier) if carrier else (None, None)
    connection = ct.connection_context if ct is not None else None
    parent, _base, links = receive_parent(
        config.trust, connection, handshake_links(ct), remote, remote_span, otel_context.get_current(), None
    )
    return parent, links


def handler_span(
    settings: Settings, carrier: Optional[dict[str, str]], ct: Optional[ConnectionTracer], data: Any, namespace: str
) -> tuple[Span, Context]:
    """The span an inbound event's handler runs in (``process {event} {namespace}``), per the trust policy."""
    parent, links = remote_parent(settings.config, carrier, ct)
    event = data[0] if isinstance(data, list) and data else ""
    session_id = ct.session_id if ct is not None else None
    return process_span(settings, "process", event, namespace, parent, links, session_id)


def process_span(
    settings: Settings,
    name: str,
    event: Any,
    namespace: str,
    parent: Context,
    links: Sequence[Link],
    session_id: Optional[str],
) -> tuple[Span, Context]:
    if not settings.config.message_spans:  # no event spans: the handler runs in the sender's context
        span: Span = trace.NonRecordingSpan(trace.get_current_span(parent).get_span_context())
        return span, trace.set_span_in_context(span, parent)
    attrs = attributes(event, namespace, "process", session_id)
    span = settings.tracer.start_span(
        f"{name} {event} {namespace}", parent, kind=SpanKind.CONSUMER, attributes=attrs, links=links
    )
    return span, trace.set_span_in_context(span, parent)


def end_span(span: Span, error: Optional[BaseException] = None) -> None:
    try:
        if error is not None:
            record_error(span, error)
        span.end()
    except Exception as exc:
        warn_once("ending a Socket.IO span", exc)


def wrap_callback(
    settings: Settings, callback: Callable[..., Any], emit: Emit, event: Any, namespace: str, session_id: Optional[str]
) -> Callable[..., Any]:
    """The ack callback, run in an ``ack`` span that is a child of the emit it answers.

    A coroutine function stays one (the client tells them apart with ``iscoroutinefunction``).
    """
    parent = emit.context

    if inspect.iscoroutinefunction(callback):

        async def acknowledged_async(*args: Any) -> Any:
            span, ctx = process_span(settings, "ack", event, namespace, parent, (), session_id)
            token = otel_context.attach(ctx)
            try:
                result = await callback(*args)
            except BaseException as exc:
                end_span(span, exc)
                raise
            finally:
                otel_context.detach(token)
            end_span(span)
            return result

        return acknowledged_async

    def acknowledged(*args: Any) -> Any:
        span, ctx = process_span(settings, "ack", event, namespace, parent, (), session_id)
        token = otel_context.attach(ctx)
        try:
            result = callback(*args)
        except BaseException as exc:
            end_span(span, exc)
            raise
        finally:
            otel_context.detach(token)
        if inspect.iscoroutine(result):
            return _finish(result, span, ctx)
        end_span(span)
        return result

    return acknowledged


async def run_in_span(span: Span, ctx: Context, coro: Any) -> Any:
    """Await ``coro`` with ``ctx`` (holding ``span``) current, then end the span (with the error, re-raised)."""
    return await _finish(coro, span, ctx)


async def _finish(coro: Any, span: Span, ctx: Context) -> Any:
    token = otel_context.attach(ctx)
    try:
        result = await coro
    except BaseException as exc:
        end_span(span, exc)
        raise
    finally:
        otel_context.detach(token)
    end_span(span)
    return result


def splice(data: str, encoded: str) -> Optional[str]:
    """An encoded Socket.IO ``EVENT`` packet (``2[/ns,][id][...]``) with ``encoded`` appended to its argument
    array; ``None`` if it is not one (binary events, other packets)."""
    if not data or data[0] != "2" or data[-1] != "]":
        return None
    return f"{data[:-1]},{encoded}]"
