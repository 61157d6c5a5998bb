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
from typing import Any, Callable, NamedTuple, Optional, Sequence, TypeVar

from opentelemetry import context as otel_context, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind

from wstrace import _handshake as hs, propagation, semconv as sc
from wstrace._close import ABNORMAL, NORMAL
from wstrace._log import warn_once
from wstrace._spans import IN, OUT, link, receive_parent, record_error
from wstrace.config import Config
from wstrace.connection import ConnectionTracer
from wstrace.instrumentation._instrumentor import Settings, is_instrumentation_enabled
from wstrace.queues import _messaging


__all__ = [
    "ANSWER_KEY",
    "ANSWER_VALUE",
    "ATTR_CONN",
    "ATTR_EXCLUDED",
    "CARRIER_KEY",
    "OFFER_ENVIRON",
    "OFFER_HEADER",
    "PUBSUB_KEY",
    "Call",
    "Emit",
    "Handshake",
    "InSpan",
    "Pair",
    "Wrapper",
    "after",
    "current_emit",
    "data_size",
    "EmitCall",
    "Fold",
    "Sender",
    "emitting",
    "event_payload",
    "given",
    "held",
    "handler_span",
    "handling",
    "handshake_links",
    "message_hook",
    "offered",
    "pair",
    "process_span",
    "record_close",
    "remote_parent",
    "run_in_span",
    "split_carrier",
    "starting_emit",
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
ATTR_EXCLUDED = "_wstrace_excluded"
"""Server attribute: the engine.io session ids of the connections ``excluded_urls`` leaves alone."""


Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]
"""A wrapt-style wrapper: ``(wrapped, instance, args, kwargs)``."""


class Call:
    """One call of a patched method as the wrapper makes it: the arguments (changed or not), and what to do around
    it (here nothing; subclasses make a span current, end the handshake, ...). ``__enter__`` and ``__exit__``
    never raise, and ``__exit__`` never swallows the library's exception."""

    __slots__ = ("args", "kwargs")

    def __init__(self, args: tuple[Any, ...], kwargs: Optional[dict[str, Any]] = None) -> None:
        self.args = args
        self.kwargs = kwargs if kwargs is not None else {}

    def __enter__(self) -> Call:
        return self

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        return None


Prepare = Callable[[Any, tuple[Any, ...], dict[str, Any]], Optional[Call]]
"""Reads a call (``instance, args, kwargs``) and says how to make it; ``None``: call through, untouched."""


class Pair(NamedTuple):
    """The two wrappers of one patch: for the threaded class's method and for the asyncio class's coroutine."""

    threaded: Wrapper
    asyncio: Wrapper


def pair(prepare: Prepare) -> Pair:
    """The threaded and the asyncio wrapper made from one ``prepare``: the logic is written once, and the two
    differ only by the ``await``."""

    def threaded(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        call = _prepared(prepare, instance, args, kwargs)
        if call is None:
            return wrapped(*args, **kwargs)
        with call:
            return wrapped(*call.args, **call.kwargs)

    async def asyncio(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        call = _prepared(prepare, instance, args, kwargs)
        if call is None:
            return await wrapped(*args, **kwargs)
        with call:
            return await wrapped(*call.args, **call.kwargs)

    return Pair(threaded, asyncio)


def _prepared(prepare: Prepare, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Optional[Call]:
    try:
        return prepare(instance, args, kwargs)
    except Exception as exc:  # each prepare catches its own; this is the net under them
        warn_once("preparing a Socket.IO call", exc)
        return None


def given(names: Sequence[str], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """A call's arguments by name, from the method's parameter ``names`` (positional first)."""
    if len(args) > len(names) or any(name in kwargs for name in names[: len(args)]):
        raise TypeError("arguments the method refuses")  # the library says so: the call goes through untouched
    found = dict(zip(names, args, strict=False))
    found.update(kwargs)
    return found


class Handshake(Call):
    """Around the call that makes a connection (a client's ``connect``, the server's engine.io connect handler): the
    handshake context current while it runs, then the handshake span ends (``opened``, or failed)."""

    __slots__ = ("_status", "_token", "ct")

    def __init__(
        self, ct: ConnectionTracer, args: tuple[Any, ...], kwargs: dict[str, Any], *, websocket: bool = True
    ) -> None:
        super().__init__(args, kwargs)
        self.ct = ct
        self._status = 101 if websocket else 200  # long-polling's first request is a plain GET
        self._token: Optional[object] = None

    def __enter__(self) -> Handshake:
        self._token = otel_context.attach(self.ct.handshake_context)
        return self

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]  # logs, never raises, from another context
        if exc is not None:
            self.ct.handshake_failed(error=exc)
            self.failed()
        else:
            self.ct.opened(status=self._status)

    def failed(self) -> None:
        """What a subclass forgets when the connection failed."""


class after(Call):
    """Around a call: ``then()`` runs when it returns or raises (failures logged, never raised)."""

    __slots__ = ("_then",)

    def __init__(self, then: Callable[[], None], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__(args, kwargs)
        self._then = then

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        try:
            self._then()
        except Exception as error:
            warn_once("recording a Socket.IO disconnect", error)


def record_close(ct: ConnectionTracer, reason: Any, local: frozenset[str], remote: frozenset[str]) -> None:
    """End a connection for an engine.io disconnect ``reason``: engine.io has no close frames, so a normal
    closure when one end closed it (``local`` or ``remote`` reasons), else the transport was lost."""
    text = str(reason)
    if text in remote:
        ct.closed(code=NORMAL, initiator="remote")
    elif text in local:
        ct.closed(code=NORMAL, initiator="local")
    else:
        ct.closed(code=ABNORMAL, reason=text, initiator=None)


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


def handshake_links(ct: Optional[ConnectionTracer]) -> Sequence[Link]:
    """The link to a connection's handshake, made for each span as the core makes its own (``ConnectionSpans.links``:
    the SDK wraps a link's attributes in place, so a link kept per connection would keep a copy of them)."""
    span_context = ct.handshake_span_context if ct is not None else None
    return (link(span_context, "handshake"),) if span_context is not None and span_context.is_valid else ()


def attributes(event: Any, namespace: str, operation: str, session_id: Optional[str]) -> dict[str, Any]:
    """An event span's attributes: the messaging conventions' (the core's one builder) and Socket.IO's own."""
    attrs: dict[str, Any] = _messaging(SYSTEM, operation, operation, namespace)
    attrs[EVENT_NAME] = str(event)
    attrs[NAMESPACE] = namespace
    if session_id is not None:
        attrs[sc.SESSION_ID] = session_id
    return attrs


def rooms_of(room: Any) -> Optional[list[str]]:
    if room is None:
        return None
    if isinstance(room, (list, tuple, set, frozenset)):
        return [str(r) for r in room]
    return [str(room)]


def event_payload(event: Any, data: Any) -> list[Any]:
    """An emit's event and arguments as the ``message_hook`` gets them, ``[event, *arguments]`` (the packet's
    array), ``data`` expanded as python-socketio does: a tuple is several arguments, ``None`` none, anything else
    one."""
    if isinstance(data, tuple):
        return [event, *data]
    return [event] if data is None else [event, data]


def data_size(data: Any) -> int:
    """The bytes of an emit's ``str`` and ``bytes`` arguments (``data``, a tuple for several); others, JSON
    objects, count 0: encoding them to measure them would cost as much as the emit."""
    if isinstance(data, tuple):
        return sum(data_size(item) for item in data)
    if isinstance(data, str):
        return len(data) if data.isascii() else len(data.encode("utf-8", "replace"))
    if isinstance(data, (bytes, bytearray)):
        return len(data)
    return 0


def message_hook(config: Config, span: Span, payload: list[Any], direction: str) -> None:
    """Call the ``message_hook`` for an event span that just started (``direction``: ``sent`` or ``received``);
    what it raises is logged once, never passed on."""
    hook = config.message_hook
    if hook is None or not span.is_recording():
        return
    try:
        hook(span, payload, direction)
    except Exception as exc:
        warn_once("the message_hook", exc)


class Emit:
    """One emit in progress: its span, its carrier (encoded once), and how many packets it sent."""

    __slots__ = ("_encoded", "carrier", "context", "recipients", "span")

    def __init__(
        self, span: Span, context: Context, carrier: Optional[dict[str, Any]] = None, encoded: Optional[str] = None
    ) -> None:
        self.span = span
        self.context = context
        self.recipients = 0
        self.carrier = carrier
        """Given: a stream's, shared by its chunks (with its JSON, ``encoded``); else made for ``span``."""
        self._encoded = encoded
        if carrier is None and span.get_span_context().is_valid:
            self.carrier = carrier_arg(context)

    def encoded(self) -> Optional[str]:
        """The carrier object as JSON, once per emit."""
        if self._encoded is None and self.carrier is not None:
            self._encoded = json.dumps(self.carrier, separators=(",", ":"))
        return self._encoded


_T = TypeVar("_T")


def held(owner: Any, name: str, make: Callable[[], _T]) -> _T:
    """What a server or client keeps for wstrace under ``name`` in its own ``__dict__``, made by ``make`` the first
    time (one, whichever thread gets there first)."""
    found = owner.__dict__.get(name)
    if found is None:
        found = owner.__dict__.setdefault(name, make())
    return found  # type: ignore[no-any-return]


_EMIT: contextvars.ContextVar[Optional[Emit]] = contextvars.ContextVar("wstrace_socketio_emit", default=None)


def current_emit() -> Optional[Emit]:
    return _EMIT.get()


class EmitCall(Call):
    """Around an emit: its :class:`Emit` (``emit``, set by the subclass) and its context current for the emit's
    sends; :meth:`leave` restores both."""

    __slots__ = ("_attachment", "_token", "emit")

    emit: Emit

    def __init__(self, args: tuple[Any, ...], kwargs: Optional[dict[str, Any]]) -> None:
        super().__init__(args, kwargs)
        self._token: Optional[contextvars.Token[Optional[Emit]]] = None
        self._attachment: Optional[object] = None

    def __enter__(self) -> EmitCall:
        self._token = _EMIT.set(self.emit)
        self._attachment = otel_context.attach(self.emit.context)
        return self

    def leave(self) -> None:
        try:
            otel_context.detach(self._attachment)  # type: ignore[arg-type]
            if self._token is not None:
                _EMIT.reset(self._token)
        except Exception as error:  # another context: leave it
            warn_once("restoring the context after a Socket.IO emit", error)


class emitting(EmitCall):
    """Around an emit: its PRODUCER span and :class:`Emit` current for the emit's sends (``emit``), then the span
    ends with the recipient count."""

    __slots__ = ("_count",)

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
        payload: Optional[list[Any]] = None,
        args: tuple[Any, ...] = (),
        kwargs: Optional[dict[str, Any]] = None,
    ) -> None:
        super().__init__(args, kwargs)
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
            if payload is not None:
                message_hook(settings.config, span, payload, OUT)
        else:  # no event spans: the carrier holds the context current at the emit
            span = trace.NonRecordingSpan(trace.get_current_span(base).get_span_context())
        ctx = trace.set_span_in_context(span, base)
        self.emit = Emit(span, ctx)
        self._count = count

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        span = self.emit.span
        try:
            if self._count and span.is_recording():
                span.set_attribute(RECIPIENTS, self.emit.recipients)
            if exc is not None:
                record_error(span, exc)
            span.end()
        except Exception as error:
            warn_once("ending a Socket.IO emit span", error)
        self.leave()


Sender = tuple[Optional[Context], Optional[trace.SpanContext]]
"""An event's sender context and span context, as ``_handshake.remote`` reads them from the carrier."""


def remote_parent(
    config: Config, carrier: Optional[dict[str, str]], ct: Optional[ConnectionTracer], sender: Optional[Sender] = None
) -> tuple[Context, Sequence[Link]]:
    """Parent and links of an inbound event's span, per the trust policy: the sender's context from the carrier
    (or ``sender``, already read from it), else a fresh trace linked to the connection's handshake."""
    if sender is None:
        sender = hs.remote(config, carrier) if carrier else (None, None)
    remote, remote_span = sender
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


Fold = Callable[[dict[str, str], Any, tuple[Any, ...]], Optional[Call]]
"""Makes an inbound event a chunk of a receive stream (``_receiving``), from its carrier, the event as the handler
gets it (``[event, *arguments]``) and the call's arguments; ``None``: a span of its own."""


def handling(
    settings: Settings,
    args: tuple[Any, ...],
    at: int,
    agreed: bool,
    ct: Optional[ConnectionTracer],
    namespace: str,
    fold: Optional[Fold] = None,
) -> Optional[Call]:
    """Around an inbound event's handler (its arguments ``args[at]``): the carrier, where agreed, removed from the
    arguments, and the handler run in a CONSUMER span per the trust policy, or, through ``fold``, in a receive
    stream's span."""
    data = args[at]
    carrier = None
    try:
        if agreed and isinstance(data, list) and len(data) > 1:
            rest, carrier = split_carrier(data)
            if carrier is not None:  # removed even with instrumentation suppressed: the peer sent it for us
                args = (*args[:at], rest, *args[at + 1 :])
        if not is_instrumentation_enabled():
            return Call(args)
        if fold is not None and carrier is not None:
            folded = fold(carrier, args[at], args)
            if folded is not None:
                return folded
        span, ctx = handler_span(settings, carrier, ct, data, namespace)
        delivered = args[at]  # what the handler gets: the event and its arguments, without the carrier
        if settings.config.message_hook is not None and isinstance(delivered, list):
            message_hook(settings.config, span, list(delivered), IN)  # a copy: the hook cannot change them
        return InSpan(span, ctx, args)
    except Exception as exc:
        warn_once("starting a Socket.IO handler span", exc)
        return Call(args)


def starting_emit(
    settings: Settings,
    names: Sequence[str],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    ct: Optional[ConnectionTracer] = None,
    count: bool = True,
    ack: bool = True,
) -> Optional[tuple[emitting, dict[str, Any]]]:
    """Around an emit (a server's, a client's or a pub/sub manager's, whose parameters are ``names``): its span,
    and its ack callback run in an ``ack`` span (``ack``); with the emit's arguments by name. ``None``: no span."""
    if not is_instrumentation_enabled():
        return None
    try:
        found = given(names, args, kwargs)
        event = found.get("event")
        namespace = found.get("namespace") or "/"
        session_id = ct.session_id if ct is not None else None
        room = found.get("to") or found.get("room")
        payload = event_payload(event, found.get("data")) if settings.config.message_hook is not None else None
        call = emitting(
            settings,
            event,
            namespace,
            room,
            session_id=session_id,
            count=count,
            payload=payload,
            args=args,
            kwargs=kwargs,
        )
    except Exception as exc:
        warn_once("starting a Socket.IO emit span", exc)
        return None
    try:
        callback = found.get("callback")
        if ack and callable(callback):  # anything else is passed on untouched
            found["callback"] = wrap_callback(settings, callback, call.emit, event, namespace, session_id)
            call.args, call.kwargs = (), found  # every argument by name
    except Exception as exc:
        warn_once("wrapping a Socket.IO ack callback", exc)
    return call, found


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


class InSpan(Call):
    """Around a handler or callback: ``ctx`` (holding ``span``) current while it runs, then the span ends (with
    the error, if it raised)."""

    __slots__ = ("_ctx", "_span", "_token")

    def __init__(
        self, span: Span, ctx: Context, args: tuple[Any, ...] = (), kwargs: Optional[dict[str, Any]] = None
    ) -> None:
        super().__init__(args, kwargs)
        self._span = span
        self._ctx = ctx
        self._token: Optional[object] = None

    def __enter__(self) -> InSpan:
        self._token = otel_context.attach(self._ctx)
        return self

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]  # logs, never raises, from another context
        end_span(self._span, exc)


def wrap_callback(
    settings: Settings, callback: Callable[..., Any], emit: Emit, event: Any, namespace: str, session_id: Optional[str]
) -> Callable[..., Any]:
    """The ack callback, run in an ``ack`` span that is a child of the emit it answers.

    A coroutine function stays one (the client tells them apart with ``iscoroutinefunction``).
    """
    parent = emit.context

    def ack_span() -> InSpan:
        return InSpan(*process_span(settings, "ack", event, namespace, parent, (), session_id))

    if inspect.iscoroutinefunction(callback):

        async def acknowledged_async(*args: Any) -> Any:
            with ack_span():
                return await callback(*args)

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
        if inspect.iscoroutine(result):  # a plain function that returned a coroutine: the span lasts until it ends
            return run_in_span(InSpan(span, ctx), result)
        end_span(span)
        return result

    return acknowledged


async def run_in_span(around: InSpan, coro: Any) -> Any:
    """Await ``coro`` inside ``around``."""
    with around:
        return await coro


def splice(data: str, encoded: str) -> Optional[str]:
    """An encoded Socket.IO ``EVENT`` packet (``2[/ns,][id][...]``) with ``encoded`` appended to its argument
    array; ``None`` if it is not one (binary events, other packets)."""
    if not data or data[0] != "2" or data[-1] != "]":
        return None
    return f"{data[:-1]},{encoded}]"
