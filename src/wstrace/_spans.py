"""What wstrace's connection spans are called and carry: names per route, message attributes, errors, bodies.

Shared by the handshake, message and stream code, so that every message span
is built by one function and every failure is recorded one way.
"""

from __future__ import annotations

import base64
import codecs
import re
from typing import Any, Callable, Optional, Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode

from wstrace import semconv as sc
from wstrace._log import warn_once
from wstrace.config import Config


__all__ = [
    "IN",
    "ConnectionSpans",
    "OUT",
    "Route",
    "captured",
    "excluded",
    "header_attributes",
    "link",
    "mapped_route",
    "message_attributes",
    "receive_parent",
    "record_error",
    "route",
    "size",
]

OUT = "sent"
"""``websocket.message.direction`` of an outbound message."""
IN = "received"
"""``websocket.message.direction`` of an inbound message."""

_LINK_ATTRIBUTES = {
    kind: {sc.LINK_KIND: kind} for kind in ("handshake", "creation", "remote", "inbound", "previous", "server")
}


def link(span_context: trace.SpanContext, kind: str) -> Link:
    """A link of ``wstrace.link.kind`` ``kind`` (its attributes are shared, not copied per link)."""
    return Link(span_context, _LINK_ATTRIBUTES[kind])


class Route:
    """Span names and metric attributes of a route, shared by every connection on it."""

    __slots__ = ("close", "connection", "handshake", "message_metrics", "receive", "send", "stream_metrics")

    def __init__(self, route: Optional[str]) -> None:
        suffix = f" {route}" if route else ""
        self.handshake = f"GET{suffix}"
        self.send = f"send{suffix}"
        self.receive = f"receive{suffix}"
        self.close = f"close{suffix}"
        self.connection = f"websocket{suffix}"
        base = {sc.HTTP_ROUTE: route} if route else {}
        self.stream_metrics = {
            direction: {**base, sc.STREAM_DIRECTION: direction} for direction in ("outbound", "inbound")
        }
        self.message_metrics = tuple(
            {**base, sc.MESSAGE_DIRECTION: direction, sc.MESSAGE_TYPE: kind}
            for direction in (OUT, IN)
            for kind in ("binary", "text")
        )
        """Message counter attributes by slot: direction (sent, received), then type (binary, text)."""


_ROUTES: dict[Optional[str], Route] = {}
_MAX_ROUTES = 1024  # routes named by a user's mapping function must not grow this without bound


def route(name: Optional[str]) -> Route:
    """The (cached) names of route ``name``; ``None`` names spans without a route, as HTTP spans do."""
    found = _ROUTES.get(name)
    if found is None:
        if len(_ROUTES) >= _MAX_ROUTES:
            _ROUTES.clear()
        found = _ROUTES[name] = Route(name)
    return found


def mapped_route(config: Config, path: str) -> Optional[str]:
    """The ``routes`` option's name for ``path``, if it gives one; never raises."""
    if config.routes is None:
        return None
    try:
        route = config.routes(path or "/")
    except Exception as exc:
        warn_once("the routes function", exc)
        return None
    return route if isinstance(route, str) and route else None


def _call(name: str, hook: Callable[..., Any], *args: Any) -> None:
    """Run the user's hook; what it raises is logged once, never passed on."""
    try:
        hook(*args)
    except Exception as exc:
        warn_once(f"the {name}", exc)


def header_attributes(
    config: Config, prefix: str, wanted: Sequence[str], headers: Sequence[tuple[str, str]]
) -> dict[str, list[str]]:
    """``http.{request,response}.header.<name>`` for each header whose lower-case name a pattern matches in
    full, values in order; a name ``sanitize_headers`` matches is recorded as ``[REDACTED]``."""
    found: dict[str, list[str]] = {}
    sanitize = config.sanitize_headers or ()
    for name, value in headers:
        key = name.lower()
        if any(re.fullmatch(pattern, key) for pattern in wanted):
            redacted = any(re.fullmatch(pattern, key) for pattern in sanitize)
            found.setdefault(prefix + key, []).append("[REDACTED]" if redacted else value)
    return found


def excluded(config: Config, url: str) -> bool:
    """Whether the ``excluded_urls`` option leaves this connection untraced; never raises."""
    if config.excluded_urls is None:
        return False
    try:
        return bool(config.excluded_urls(url))
    except Exception as exc:
        warn_once("the excluded_urls function", exc)
        return False


def message_attributes(session_id: str, is_text: bool, ordinal: int, body_size: Optional[int]) -> dict[str, Any]:
    """The attributes every message span starts with (``docs/semantic-conventions.md``, "Message spans")."""
    attributes: dict[str, Any] = {
        sc.NETWORK_PROTOCOL_NAME: "websocket",
        sc.SESSION_ID: session_id,
        sc.MESSAGE_TYPE: "text" if is_text else "binary",
        sc.MESSAGE_ORDINAL: ordinal,
    }
    if body_size is not None:
        attributes[sc.MESSAGING_MESSAGE_BODY_SIZE] = body_size
    return attributes


def record_error(span: Span, error: BaseException | str, description: Optional[str] = None) -> None:
    """The one way wstrace marks a span failed: the exception (if one), ``error.type`` and status ERROR."""
    if isinstance(error, BaseException):
        span.record_exception(error)
        error_type = type(error).__qualname__
    else:
        error_type = error
    span.set_attribute(sc.ERROR_TYPE, error_type)
    span.set_status(Status(StatusCode.ERROR, str(error) if description is None else description))


def receive_parent(
    trust: str,
    connection_ctx: Optional[Context],
    handshake_links: Sequence[Link],
    remote: Optional[Context],
    remote_span: Optional[trace.SpanContext],
    ambient: Context,
    fallback: Optional[Context],
) -> tuple[Context, Context, Sequence[Link]]:
    """Parent, attach base and links of an inbound span, per model and trust policy.

    ``connection`` model: the connection span is the parent and the sender's
    context a link (the messaging conventions' choice for an ambient parent).
    ``message`` model: the sender's context is the parent under ``trust=parent``
    (it also brings the sender's baggage), a link otherwise; with no sender
    context the span is a root (or a child of ``fallback``, the request a
    client's reply answers), linked to the handshake.
    """
    if connection_ctx is not None:
        if remote_span is not None:
            return connection_ctx, ambient, (link(remote_span, "creation"),)
        return connection_ctx, ambient, ()
    if remote is not None and remote_span is not None and trust == "parent":
        return remote, remote, handshake_links
    parent = fallback if fallback is not None else _NO_CONTEXT
    if remote_span is not None:
        return parent, ambient, (*handshake_links, link(remote_span, "remote"))
    return parent, ambient, handshake_links


_NO_CONTEXT = Context()


class ConnectionSpans:
    """Starts the spans of one connection, from what every one of them needs to know about it."""

    __slots__ = ("config", "connection", "connection_ctx", "handshake", "names", "session_id", "tracer")

    def __init__(self, tracer: trace.Tracer, config: Config, names: Route, session_id: str) -> None:
        self.tracer = tracer
        self.config = config
        self.names = names
        self.session_id: str = session_id
        self.handshake: Optional[trace.SpanContext] = None
        """The sampled handshake, which every span of the ``message`` model links to."""
        self.connection: Optional[Span] = None
        """The connection span (``connection`` model)."""
        self.connection_ctx: Optional[Context] = None

    @property
    def links(self) -> Sequence[Link]:
        """A link to the handshake, made for each span: the SDK wraps a link's attributes in place, so a
        link kept for the connection's lifetime would keep a copy of them per connection."""
        return (link(self.handshake, "handshake"),) if self.handshake is not None else ()

    def start_handshake(
        self,
        parent: Context,
        links: Sequence[Link],
        attributes: dict[str, Any],
        kind: SpanKind,
        start_time: Optional[int] = None,
    ) -> Span:
        """The handshake span; a sampled one is what the ``message`` model's spans link to."""
        span = self.tracer.start_span(
            self.names.handshake, parent, kind=kind, attributes=attributes, links=links, start_time=start_time
        )
        if span.is_recording():
            self.handshake = span.get_span_context()
        return span

    def opened(
        self,
        span: Span,
        status: int,
        envelope: Optional[str],
        subprotocol: Optional[str],
        headers: Sequence[tuple[str, str]] = (),
    ) -> SpanContext:
        """End a sampled handshake span at the 101 and, in the ``connection`` model, open the connection span;
        returns the handshake's span context, all that is kept of it."""
        span.set_attributes(
            {sc.HTTP_RESPONSE_STATUS_CODE: status, sc.ENVELOPE: envelope or "none", sc.SESSION_ID: self.session_id}
        )
        if subprotocol and not subprotocol.startswith(sc.TOKEN_PREFIXES):  # ours carries a peer's context or session
            span.set_attribute(sc.SUBPROTOCOL, subprotocol)
        self._responded(span, status, headers)
        span.end()
        if self.config.model == "connection":
            attributes = {sc.NETWORK_PROTOCOL_NAME: "websocket", sc.SESSION_ID: self.session_id}
            self.connection = self.tracer.start_span(
                self.names.connection, trace.set_span_in_context(span), kind=SpanKind.INTERNAL, attributes=attributes
            )
            self.connection_ctx = trace.set_span_in_context(self.connection)
        return span.get_span_context()

    def failed(self, span: Span, client: bool, status: Optional[int], error: Optional[BaseException]) -> None:
        """End a sampled handshake span that got no 101."""
        if status is not None:
            span.set_attribute(sc.HTTP_RESPONSE_STATUS_CODE, status)
        # A client that gets no 101 has failed whatever the status; a
        # server's 4xx refusal is the client's fault, not the server's.
        if error is not None or (status is not None and (client or status >= 500)):
            record_error(span, error or str(status), str(error) if error else f"HTTP {status}")
        self._responded(span, status, ())
        span.end()

    def _attributes(self, payload: Any, is_text: bool, ordinal: int, body_size: Optional[int]) -> dict[str, Any]:
        attributes = message_attributes(self.session_id, is_text, ordinal, body_size)
        if self.config.capture_payload:
            attributes.update(captured(self.config, payload, is_text))
        return attributes

    def send(
        self,
        payload: Any,
        is_text: bool,
        ordinal: int,
        body_size: Optional[int],
        current: Context,
        links: Sequence[Link] = (),
        start_time: Optional[int] = None,
    ) -> Span:
        """An outbound message's span (or a run's), in the current context (``message`` model, with ``links``
        besides the handshake's) or the connection's."""
        parent = current
        connection = self.connection
        if connection is not None:
            links = ()
            # A reply inside a receive span (or any span of this connection's
            # trace) keeps its parent; anything else hangs off the connection.
            if trace.get_current_span(current).get_span_context().trace_id != connection.get_span_context().trace_id:
                parent = self.connection_ctx  # type: ignore[assignment]
        else:
            links = (*self.links, *links)
        attributes = self._attributes(payload, is_text, ordinal, body_size)
        span = self.tracer.start_span(
            self.names.send, parent, kind=SpanKind.PRODUCER, attributes=attributes, links=links, start_time=start_time
        )
        return self._started(span, payload, OUT)

    def reply(self, parent: Context, payload: Any, is_text: bool, ordinal: int, start_time: int) -> Span:
        """The span of a server's reply stream, started by its first chunk."""
        links = () if self.connection_ctx is not None else self.links
        attributes = self._attributes(payload, is_text, ordinal, None)
        span = self.tracer.start_span(
            self.names.send, parent, kind=SpanKind.PRODUCER, attributes=attributes, links=links, start_time=start_time
        )
        return self._started(span, payload, OUT)

    def receive(
        self,
        payload: Any,
        is_text: bool,
        ordinal: int,
        body_size: Optional[int],
        sender: tuple[Optional[Context], Optional[trace.SpanContext]],
        ambient: Context,
        request: Optional[Context] = None,
        start_time: Optional[int] = None,
    ) -> tuple[Span, Context]:
        """An inbound message's span (or a client's reply stream's, answering ``request``), and the
        context to attach it in."""
        parent, base, links = receive_parent(
            self.config.trust, self.connection_ctx, self.links, sender[0], sender[1], ambient, request
        )
        attributes = self._attributes(payload, is_text, ordinal, body_size)
        span = self.tracer.start_span(
            self.names.receive,
            parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
            start_time=start_time,
        )
        return self._started(span, payload, IN), base

    def chunk(
        self,
        kind: SpanKind,
        stream: Span,
        payload: Any,
        is_text: bool,
        ordinal: int,
        body_size: Optional[int],
        sender: Optional[trace.SpanContext],
    ) -> Span:
        """A span for one chunk under its stream's span (``chunk_spans``), linked to the sender's chunk."""
        span = self.tracer.start_span(
            self.names.send if kind is SpanKind.PRODUCER else self.names.receive,
            context=trace.set_span_in_context(stream),
            kind=kind,
            attributes=self._attributes(payload, is_text, ordinal, body_size),
            links=(link(sender, "creation"),) if sender is not None else (),
        )
        return self._started(span, payload, OUT if kind is SpanKind.PRODUCER else IN)

    def _started(self, span: Span, payload: Any, direction: str) -> Span:
        if self.config.message_hook is not None and span.is_recording():
            _call("message_hook", self.config.message_hook, span, payload, direction)
        return span

    def requested(self, span: Span, headers: Sequence[tuple[str, str]], capture: bool) -> None:
        """A handshake span's request side: captured request headers (``capture``), then the request hook."""
        config = self.config
        if capture and config.capture_request_headers:
            wanted = config.capture_request_headers
            span.set_attributes(header_attributes(config, "http.request.header.", wanted, headers))
        if config.request_hook is not None:
            _call("request_hook", config.request_hook, span, list(headers))

    def _responded(self, span: Span, status: Optional[int], headers: Sequence[tuple[str, str]]) -> None:
        config = self.config
        if headers and config.capture_response_headers:
            wanted = config.capture_response_headers
            span.set_attributes(header_attributes(config, "http.response.header.", wanted, headers))
        if config.response_hook is not None:
            _call("response_hook", config.response_hook, span, status, list(headers))

    def close(
        self,
        code: Optional[int],
        reason: str,
        initiator: Optional[str],
        failure: Optional[BaseException | str],
        error: Optional[BaseException] = None,
    ) -> None:
        """End the close's span (``message`` model), or the connection span with the close recorded on it.

        ``failure`` makes it an error; an ``error`` that did not (a clean close that raised) is recorded only.
        """
        attributes: dict[str, Any] = {
            sc.NETWORK_PROTOCOL_NAME: "websocket",
            sc.SESSION_ID: self.session_id,
            sc.CLOSE_INITIATOR: initiator or "none",
        }
        if code is not None:
            attributes[sc.CLOSE_CODE] = code
        if reason:
            attributes[sc.CLOSE_REASON] = reason
        span = self.connection
        if span is None:
            span = self.tracer.start_span(
                self.names.close, _NO_CONTEXT, kind=SpanKind.INTERNAL, attributes=attributes, links=self.links
            )
        else:
            span.set_attributes(attributes)
        if failure is not None:
            record_error(span, failure, f"WebSocket closed with code {code}" + (f": {reason}" if reason else ""))
        elif error is not None:
            span.record_exception(error)
        span.end()


def size(payload: Any) -> Optional[int]:
    """A payload's size in bytes (UTF-8 for text), or ``None`` for something that is not a payload."""
    if isinstance(payload, str):
        # Counting UTF-8 bytes without encoding: ASCII is the common case.
        return len(payload) if payload.isascii() else len(payload.encode("utf-8", "surrogatepass"))
    if isinstance(payload, (bytes, bytearray)):
        return len(payload)
    if isinstance(payload, memoryview):
        return payload.nbytes
    return None


def captured(config: Config, payload: Any, is_text: bool) -> dict[str, Any]:
    """The body attributes of a message span (``capture_payload``); empty if there is nothing to record."""
    redact = config.redact
    if redact is not None:
        if isinstance(payload, (bytearray, memoryview)):
            payload = bytes(payload)  # a copy: the hook must not be able to change what is sent
        try:
            payload = redact(payload)
        except Exception as exc:
            warn_once("the redact hook", exc)  # nothing recorded: better than an unredacted body
            return {}
        if payload is None:
            return {}
    body = _body(payload, is_text, config.capture_payload_bytes)
    if body is None:
        warn_once("the redact hook", TypeError(f"it returned a {type(payload).__name__}, not str or bytes"))
        return {}
    return {sc.MESSAGE_BODY: body[0], sc.MESSAGE_BODY_TRUNCATED: body[1]}


def _body(payload: Any, is_text: bool, cap: int) -> Optional[tuple[str, bool]]:
    """``(recorded body, truncated)``: text as text, binary as base64, of at most ``cap`` payload bytes."""
    if isinstance(payload, str):
        # Each character is at least one UTF-8 byte: never encode more than cap of them.
        raw = payload[:cap].encode("utf-8", "surrogatepass")
        truncated = len(payload) > cap or len(raw) > cap
    elif isinstance(payload, (bytes, bytearray)):
        raw = bytes(payload[:cap])
        truncated = len(payload) > cap
    elif isinstance(payload, memoryview):
        raw = payload.tobytes()
        truncated = len(raw) > cap
    else:
        return None
    raw = raw[:cap]
    if not is_text:
        return base64.b64encode(raw).decode("ascii"), truncated
    # Not final: a character cut by the cap is dropped rather than replaced;
    # invalid UTF-8 (and lone surrogates) become U+FFFD.
    return codecs.getincrementaldecoder("utf-8")("replace").decode(raw), truncated
