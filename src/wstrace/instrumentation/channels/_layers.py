"""Trace context through Django Channels' channel layers: ``send`` and ``group_send`` carry it, dispatch continues it.

Wire form: the event dict gets one more key, :data:`KEY` (``"wstrace.context"``), whose value is a dict of
strings: the global propagator's fields (``traceparent``, ``tracestate``, ``baggage`` with the default
propagators) and ``destination``, the group or channel the event was sent to::

    {"type": "chat.message", "text": "hi",
     "wstrace.context": {"traceparent": "00-4bf9...-00f0...-01", "destination": "chat_lobby"}}

The dict the application passed is never changed: the layer gets a copy with the key. On the receiving side
the key is removed (from a copy: ``channels_redis`` hands one dict to several consumers of a process) where a
consumer dispatches the event, and only if it is this carrier, well formed: a dict of at most
:data:`MAX_ENTRIES` string entries, within ``max_envelope_bytes``, holding a valid span context. Anything else
under that key (an application's own value, a malformed, oversized or foreign carrier) is delivered with the
event exactly as it came, and the handler runs in a trace of its own.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any, Callable, Mapping, Optional

from opentelemetry import context as otel_context, trace
from opentelemetry.context import Context
from opentelemetry.instrumentation import utils as _otel_utils
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import AttributeValue

from wstrace import _context, propagation, semconv as sc
from wstrace._log import warn_once
from wstrace._spans import record_error
from wstrace.instrumentation._instrumentor import Settings, is_instrumentation_enabled
from wstrace.queues import _messaging


__all__ = ["KEY", "MAX_ENTRIES", "SYSTEM", "Handling", "Layers", "parse"]

KEY = "wstrace.context"
"""The event key that carries the sender's context."""
DESTINATION = "destination"
"""The carrier entry naming the group or channel the event was sent to (the ``process`` span's destination)."""
SYSTEM = "django_channels"
"""``messaging.system`` of the layer spans."""
MAX_ENTRIES = 16
"""A carrier with more entries is not ours: it is left in the event."""

_ASGI_PREFIXES = ("websocket.", "http.", "lifespan.")
"""Event types a consumer gets from its ASGI server, not from a channel layer."""

_SENDING: ContextVar[bool] = ContextVar("wstrace.channels.sending", default=False)
"""True inside a traced ``send``/``group_send``: the layer's own inner sends (the in-memory layer's
``group_send`` calls ``send`` per channel) are not traced again."""

_log = logging.getLogger("wstrace.instrumentation.channels")

# The keys suppress_instrumentation() sets (is_instrumentation_enabled() reads both), read from a context
# the dispatch looks up anyway.
_SUPPRESS = otel_context._SUPPRESS_INSTRUMENTATION_KEY
_SUPPRESS_PLAIN = getattr(
    _otel_utils, "_SUPPRESS_INSTRUMENTATION_KEY_PLAIN", "suppress_instrumentation"
)  # private there

_MISSING = object()


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def parse(raw: Any, max_bytes: int) -> Optional[tuple[Context, Optional[str]]]:
    """The sender's context and destination from a carrier value, or ``None`` if it is not a well-formed one."""
    if type(raw) is not dict or not 0 < len(raw) <= MAX_ENTRIES:
        return None
    total = 0
    for key, value in raw.items():
        if type(key) is not str or type(value) is not str:
            return None
        total += _utf8_len(key) + _utf8_len(value)
    if total > max_bytes:
        return None
    carrier = {k: v for k, v in raw.items() if k != DESTINATION}
    try:
        context = propagation.extract(carrier)
    except Exception as exc:  # a propagator that chokes on the carrier
        warn_once("extracting context from a channel-layer event", exc, logger=_log)
        return None
    if propagation.remote_span_context(context) is None:
        return None
    destination = raw.get(DESTINATION)
    return context, destination or None


def span_destination(name: str) -> str:
    """A destination as a span name shows it: a process-specific channel (``specific.abc!xyz``) by its
    non-local part (``specific.abc!``), so that span names do not hold one random name per consumer."""
    bang = name.find("!")
    return name[: bang + 1] if bang >= 0 else name


class Layers:
    """The tracer and options the layer wrappers and the dispatch wrapper share."""

    __slots__ = ("_active", "_recent", "carrier", "first", "settings")

    def __init__(self, settings: Settings, carrier: bool, active: Callable[[], bool], first: bool = False) -> None:
        self.settings = settings
        self.carrier = carrier
        """Whether ``send`` and ``group_send`` add :data:`KEY` to the events (the spans are made either way)."""
        self.first = first
        """``group_spans="first"``: one ``process`` span per group message (or event) in this process."""
        self._active = active
        self._recent: list[_Opened] = []
        """The last events opened, newest first, as the layer handed them over (kept, so that their identity
        stays their own)."""

    def enabled(self) -> bool:
        return self._active() and is_instrumentation_enabled()

    # Sending ---------------------------------------------------------------------------------------------

    def sender(self, operation: str) -> Callable[..., Any]:
        """A ``wrapt`` wrapper for a layer's ``send`` (``operation="send"``) or ``group_send``."""

        def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            # A plain function returning the awaitable: bad arguments raise at the call, as without wstrace.
            if _SENDING.get() or not self.enabled():
                return wrapped(*args, **kwargs)
            started = self._start(operation, args, kwargs)
            if started is None:
                return wrapped(*args, **kwargs)
            span, args, kwargs = started
            try:
                sending = wrapped(*args, **kwargs)  # the coroutine: its body runs when traced() awaits it
            except BaseException as exc:
                _fail(span, exc)
                span.end()
                raise
            return traced(sending, span)

        async def traced(sending: Any, span: trace.Span) -> Any:
            inside = _SENDING.set(True)
            # Current during the call, so that a Redis instrumentation's spans nest under it.
            attachment = _context.attach(trace.set_span_in_context(span))
            try:
                return await sending
            except BaseException as exc:
                _fail(span, exc)
                raise
            finally:
                attachment.detach()
                _SENDING.reset(inside)
                span.end()

        return wrapper

    def _start(
        self, operation: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Optional[tuple[trace.Span, tuple[Any, ...], dict[str, Any]]]:
        """The PRODUCER span and the call's arguments with the event swapped for a copy with the carrier."""
        try:
            name_key = "group" if operation == "group_send" else "channel"
            if len(args) >= 2:
                destination, message = args[0], args[1]
            else:
                destination = args[0] if args else kwargs.get(name_key)
                message = kwargs.get("message")
            if not isinstance(destination, str):
                return None
            shown = span_destination(destination)
            attributes = _messaging(SYSTEM, "send", operation, destination)
            if shown != destination:
                attributes[sc.MESSAGING_DESTINATION_TEMPORARY] = True
            if isinstance(message, Mapping):
                kind = message.get("type")
                if isinstance(kind, str):
                    attributes[sc.DJANGO_CHANNELS_EVENT_TYPE] = kind
            span = self.settings.tracer.start_span(f"send {shown}", kind=SpanKind.PRODUCER, attributes=attributes)
            if self.carrier and type(message) is dict:
                carried = self._carry(message, span, shown)
                if carried is not message:
                    if len(args) >= 2:
                        args = (args[0], carried, *args[2:])
                    else:
                        kwargs = {**kwargs, "message": carried}
            return span, args, kwargs
        except Exception as exc:  # never stop the application's send
            warn_once("tracing a channel-layer send", exc, logger=_log)
            return None

    def _carry(self, message: dict[Any, Any], span: trace.Span, destination: str) -> dict[Any, Any]:
        if KEY in message:
            warn_once(f"an event already has a {KEY!r} key: it is sent as it is, with no context", logger=_log)
            return message
        carrier = propagation.inject(trace.set_span_in_context(span))
        if not carrier:  # nothing to carry (no SDK, or a propagator that writes nothing)
            return message
        carrier[DESTINATION] = destination
        if sum(_utf8_len(k) + _utf8_len(v) for k, v in carrier.items()) > self.settings.config.max_envelope_bytes:
            warn_once(
                "a channel-layer carrier over max_envelope_bytes was dropped; the event carries no context", logger=_log
            )
            return message
        out = dict(message)  # the application's dict is never changed
        out[KEY] = carrier
        return out

    # Receiving -------------------------------------------------------------------------------------------

    def open(self, message: Any) -> tuple[Any, Optional[Handling]]:
        """A layer event about to be dispatched: the event the handler gets, and its context (current).

        ASGI messages (``websocket.*``, ``http.*``, ``lifespan.*``) and anything that is not a dict come back
        as they are, with nothing attached. A well-formed carrier is removed from a copy; anything else is left.
        """
        if type(message) is not dict:
            return message, None
        kind = message.get("type")
        if not isinstance(kind, str) or kind.startswith(_ASGI_PREFIXES) or not self._active():
            return message, None
        here = _context.current()
        if here.get(_SUPPRESS) or here.get(_SUPPRESS_PLAIN):  # is_instrumentation_enabled(), one lookup
            return message, None
        event = message
        try:
            for opened in self._recent:
                if opened.message is message:
                    break
            else:
                opened = self._read(message)
            event = opened.event  # a span that fails to start still leaves the handler its event, carrier removed
            return event, self._handle(opened.group, kind, here)
        except Exception as exc:
            warn_once("tracing a channel-layer event", exc, logger=_log)
            return event, None

    def _read(self, message: dict[Any, Any]) -> _Opened:
        """What the carrier of a layer event says, and the event the handler gets; remembered among the last
        :data:`_RECENT` events read.

        ``channels_redis``' core layer hands one dict to every consumer of a process that the event is for
        (a ``group_send`` to 50 consumers of one process: the same dict, 50 times): it is read once, and
        they share its stripped copy, as they would share the dict without wstrace. The in-memory and pub/sub
        layers give each consumer a copy of its own: a carrier equal to one read recently is the same
        ``group_send`` (one ``send`` span, one carrier), so it is not parsed again and belongs to the same group.
        """
        event = message
        group: Optional[_Group] = None
        raw = message.get(KEY, _MISSING)
        if type(raw) is dict:
            # Only plain strings, as parse() demands: a str subclass or an odd __eq__ must not pass as ours.
            if all(type(k) is str and type(v) is str for k, v in raw.items()):
                for opened in self._recent:
                    if opened.group.carrier == raw:
                        group = opened.group
                        break
            if group is None:
                group = self._parse(raw)
            if group is not None:
                event = {k: v for k, v in message.items() if k != KEY}
        if group is None:  # no carrier, or not a well-formed one (left in the event): a trace of its own
            group = _Group(None, Context(), None, None)
        opened = _Opened(message, event, group)
        recent = self._recent
        recent.insert(0, opened)
        del recent[_RECENT:]
        return opened

    def _parse(self, raw: dict[Any, Any]) -> Optional[_Group]:
        parsed = parse(raw, self.settings.config.max_envelope_bytes)
        if parsed is None:
            return None
        remote, destination = parsed
        trust = self.settings.config.trust
        if trust == "parent":  # the parent, and the base: the sender's baggage comes along
            return _Group(dict(raw), remote, None, destination)
        linked = propagation.remote_span_context(remote) if trust == "link" else None
        return _Group(dict(raw), Context(), linked, destination)

    def _handle(self, group: _Group, kind: str, here: Context) -> Handling:
        """Start the handler's ``process`` span and make it current; with ``group_spans="first"``, a handler
        call of a group message whose span another handler call of this process started joins that span.

        The group's parent: the sender's context under ``trust="parent"`` (then also the base of the new
        context, so that the sender's baggage comes along), else empty (a new trace, based on the current
        context); ``linked``: the sender's span under ``trust="link"``. A span current where the event is
        dispatched (the connection span, in the ``connection`` model) is linked, never the parent: a process
        span belongs to its event's trace.
        """
        parent = group.parent
        first = group.first
        if first is not None:
            # With a parent, the first span's own context; else this call's, as its own span's would be.
            ctx = group.joined
            if ctx is None:
                ctx = trace.set_span_in_context(first, here)
            return Handling(None, _context.attach(ctx))
        links: Optional[list[Link]] = None
        if group.linked is not None:
            links = [Link(group.linked, _CREATION)]
        ambient = trace.get_current_span(here).get_span_context()
        if ambient.is_valid:
            links = [*links, Link(ambient, _AMBIENT)] if links else [Link(ambient, _AMBIENT)]
        attributes = group.attributes
        if attributes is None or group.kind != kind:
            attributes = group.attributes = _messaging(SYSTEM, "process", "process", group.destination)
            attributes[sc.DJANGO_CHANNELS_EVENT_TYPE] = group.kind = kind
        span = self.settings.tracer.start_span(
            group.name, context=parent, kind=SpanKind.CONSUMER, attributes=attributes, links=links
        )
        ctx = trace.set_span_in_context(span, parent if parent else here)
        if self.first:
            group.first = span
            group.joined = ctx if parent else None
        return Handling(span, _context.attach(ctx))


_RECENT = 4
"""Layer events remembered, newest first: the handler calls of two group messages can interleave in a process."""


class _Group:
    """One group message (or event) as this process reads it: the carrier, the ``process`` span's relations,
    name and attributes (built once, shared by its spans), and with ``group_spans="first"`` its one span."""

    __slots__ = ("attributes", "carrier", "destination", "first", "joined", "kind", "linked", "name", "parent")

    def __init__(
        self,
        carrier: Optional[dict[str, str]],
        parent: Context,
        linked: Optional[trace.SpanContext],
        destination: Optional[str],
    ) -> None:
        self.carrier = carrier
        """A copy of the well-formed carrier read (``None``: none), to know other copies of the same event."""
        self.parent = parent
        self.linked = linked
        self.destination = destination
        self.name = f"process {destination}" if destination else "process"
        self.attributes: Optional[dict[str, AttributeValue]] = None
        self.kind: Optional[str] = None
        self.first: Optional[trace.Span] = None
        self.joined: Optional[Context] = None


class _Opened:
    """A layer event read: the dict the layer handed over, the event for the handler, and its group."""

    __slots__ = ("event", "group", "message")

    def __init__(self, message: dict[Any, Any], event: dict[Any, Any], group: _Group) -> None:
        self.message = message
        self.event = event
        self.group = group


class Handling:
    """A handler call's context, attached: its ``process`` span, or none when it joined another call's."""

    __slots__ = ("attachment", "span")

    def __init__(self, span: Optional[trace.Span], attachment: _context.Attachment) -> None:
        self.span = span
        self.attachment = attachment

    def fail(self, exc: BaseException) -> None:
        if self.span is not None:
            _fail(self.span, exc)

    def finish(self) -> None:
        try:
            # Detaches only if still current, in the Context that attached: resetting a stale
            # token would roll back what the application attached after us.
            self.attachment.detach()
            if self.span is not None:
                self.span.end()
        except Exception as exc:  # pragma: no cover - defensive
            warn_once("ending a process span", exc, logger=_log)


_CREATION = {sc.LINK_KIND: "creation"}
_AMBIENT = {sc.LINK_KIND: "ambient"}


def _fail(span: trace.Span, exc: BaseException) -> None:
    try:
        if span.is_recording():
            record_error(span, exc)
    except Exception as err:  # pragma: no cover - defensive
        warn_once("recording a channel-layer send error", err, logger=_log)
