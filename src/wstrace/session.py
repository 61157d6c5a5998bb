"""The per-connection state machine that turns WebSocket events into telemetry.

An adapter (or your own code, for a library wstrace has no adapter for) makes
one :class:`ConnectionTracer` per connection and reports what happens to it:

* client: :meth:`ConnectionTracer.client`, send :meth:`~ConnectionTracer.request_headers`
  with the upgrade, then :meth:`~ConnectionTracer.opened` with the response headers;
* server: :meth:`ConnectionTracer.server` when the upgrade request arrives, add
  :meth:`~ConnectionTracer.response_headers` to the 101, then :meth:`~ConnectionTracer.opened`;
* either side: :meth:`~ConnectionTracer.handshake_failed` if there is no 101;
  :meth:`~ConnectionTracer.send_start` / :meth:`~ConnectionTracer.send_end` around
  each outbound message; :meth:`~ConnectionTracer.receive_done` before waiting for
  the next message and :meth:`~ConnectionTracer.received` once it arrives;
  :meth:`~ConnectionTracer.closed` when the connection ends.

Every tracing decision lives here: span names, kinds and parents for both
models, the trust policy, sampling that follows the handshake, the envelope.
Methods called from instrumented paths never raise into the caller; they log
the first failure and carry on, and the payload always gets through.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import logging
import re
import time
import uuid
from collections import OrderedDict
from typing import Any, Callable, Hashable, Literal, Mapping, Optional, Sequence, TypeVar

from opentelemetry import context as otel_context, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanKind, Status, StatusCode

from wstrace import _close, envelope as codec, propagation, semconv as sc
from wstrace._close import Initiator
from wstrace.carriers import HeaderSource, headers_carrier, query_carrier, split_subprotocols
from wstrace.config import Config, EnvelopeFormat
from wstrace.exceptions import EnvelopeEncodeError
from wstrace.metrics import Instruments
from wstrace.streams import Stream, StreamStats, wall_ns


__all__ = ["NOTHING_TO_END", "ConnectionTracer", "SendHandle", "Side"]

_log = logging.getLogger(__name__)

Side = Literal["client", "server"]

_SESSION_ID = re.compile(r"[0-9a-f]{32}\Z")

_warned: set[str] = set()
_P = TypeVar("_P", str, bytes)
_NO_CONTEXT = Context()

# Context key under which a message being handled offers itself as the owner of replies.
_OWNER = otel_context.create_key("wstrace-inbound")
# The key suppress_instrumentation() sets; read from the same context lookup as _OWNER.
_SUPPRESS = otel_context._SUPPRESS_INSTRUMENTATION_KEY
_OUT = "sent"
_IN = "received"
_FLUSH_EVERY = 1000
_MAX_PENDING_REQUESTS = 1024
# Open streams per connection: beyond this the oldest ends at its last chunk, so a
# server answering faster than stream_idle cannot pile up open spans until close.
_MAX_OPEN_STREAMS = 1024
_SWEEP_FLOOR = 64


def _warn_once(what: str, exc: BaseException) -> None:
    """Log an internal failure once per kind, never once per message."""
    if what not in _warned:
        _warned.add(what)
        _log.warning("wstrace: %s failed; tracing continues without it", what, exc_info=exc)


def _parse_offer(value: Optional[str]) -> Optional[EnvelopeFormat]:
    """Read a ``wstrace-envelope: <format>/<version>`` header value."""
    if not value:
        return None
    fmt, _, version = value.strip().lower().partition("/")
    if version != sc.ENVELOPE_VERSION or fmt not in ("frame", "json"):
        return None
    return fmt  # type: ignore[return-value]


class SendHandle:
    """An outbound message in flight, opaque to adapters: pass it back to ``send_end``."""

    __slots__ = ("ends_stream", "span", "stream")

    def __init__(self, span: Optional[Span]) -> None:
        self.span = span
        self.stream: Optional[Stream] = None
        self.ends_stream = False


class _Inbound:
    """A message being handled on the server: the owner of the reply stream sent while it is current.

    Only contexts hold it (the handling task's, and those of tasks it started). Once none does, no
    chunk can join its stream any more: the stream is handed to its tracer to end at its last chunk.
    """

    __slots__ = ("binary_prefix", "carrier", "ctx", "start_ns", "stream", "text_prefix", "tracer")

    def __init__(self, tracer: ConnectionTracer, ctx: Context, start_ns: int) -> None:
        self.tracer = tracer
        self.ctx = ctx
        self.start_ns = start_ns
        self.stream: Optional[Stream] = None
        self.carrier: Optional[dict[str, str]] = None
        """The stream's context, injected once per stream; its envelope prefixes are encoded once, when needed."""
        self.text_prefix: Optional[str] = None
        self.binary_prefix: Optional[bytes] = None

    def __del__(self) -> None:
        # Called wherever the last reference goes (a detach, a task's end, a GC pass): never SDK work
        # here. The tracer ends the stream at its next event or, on an event loop, at the loop's next
        # turn: a reply task the library started (tornado's write) may outlive the handler, and ending
        # its stream when the next message arrives would put that work on the next round trip.
        stream = self.stream
        if stream is None or stream.ended:
            return
        tracer = self.tracer
        try:
            tracer._orphans.append(stream)
            loop = tracer._loop
            # Only on the connection's own loop thread: a context dropped in a worker thread (or on
            # another loop) leaves the stream to the tracer's next event.
            if loop is not None and not tracer._flush_pending and asyncio.get_running_loop() is loop:
                tracer._flush_pending = True
                loop.call_soon(tracer._end_orphans)
        except Exception:  # no running loop in this thread, a closed loop, interpreter shutdown
            pass


class _Request:
    """A message a client sent: the messages answering it form its reply stream."""

    __slots__ = ("base", "ctx", "done", "start_ns", "stream")

    def __init__(self, ctx: Context, start_ns: int) -> None:
        self.ctx = ctx
        self.start_ns = start_ns
        self.stream: Optional[Stream] = None
        self.base: Optional[Context] = None
        self.done = False


NOTHING_TO_END = SendHandle(None)
"""The handle of a send that needs no ``send_end`` (a stream chunk, or nothing recorded)."""


def _safe_predicate(predicate: Callable[[Any], bool], payload: Any) -> bool:
    try:
        return bool(predicate(payload))
    except Exception as exc:
        _warn_once("the stream_end predicate", exc)
        return False


def _safe_key(key_of: Callable[[Any], Optional[Hashable]], payload: Any) -> Optional[Hashable]:
    try:
        return key_of(payload)
    except Exception as exc:
        _warn_once("the stream_key function", exc)
        return None


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


class _Route:
    """Span names and metric attributes of a route, shared by every connection on it."""

    __slots__ = ("close", "connection", "message_attributes", "receive", "send", "stream_attributes")

    def __init__(self, route: str) -> None:
        self.send = f"send {route}"
        self.receive = f"receive {route}"
        self.close = f"close {route}"
        self.connection = f"websocket {route}"
        self.stream_attributes = {
            direction: {sc.HTTP_ROUTE: route, sc.STREAM_DIRECTION: direction} for direction in ("outbound", "inbound")
        }
        self.message_attributes = [
            {sc.HTTP_ROUTE: route, sc.MESSAGE_DIRECTION: direction, sc.MESSAGE_TYPE: kind}
            for direction in (_OUT, _IN)
            for kind in ("binary", "text")
        ]
        """Counter attributes by slot (see ``ConnectionTracer._count``): direction, then message type."""


_ROUTES: dict[str, _Route] = {}
_MAX_ROUTES = 1024  # a server that names routes by raw path must not grow this without bound


def _route(route: str) -> _Route:
    found = _ROUTES.get(route)
    if found is None:
        if len(_ROUTES) >= _MAX_ROUTES:
            _ROUTES.clear()
        found = _ROUTES[route] = _Route(route)
    return found


class ConnectionTracer:
    """Telemetry for one WebSocket connection, seen from one side.

    Build it with :meth:`client` or :meth:`server`, not directly.
    """

    # Slots: thousands of connections may be open, each with one of these.
    __slots__ = (
        "__weakref__",
        "_base_attributes",
        "_capture",
        "_chunk_spans",
        "_client_streams",
        "_closed",
        "_closing",
        "_connection",
        "_connection_ctx",
        "_connection_trace",
        "_counts",
        "_flush_pending",
        "_handshake",
        "_handshake_link",
        "_idle_ns",
        "_instruments",
        "_last_request",
        "_loop",
        "_max_envelope",
        "_message_spans",
        "_names",
        "_offered",
        "_opened_ns",
        "_orphans",
        "_owns_connection",
        "_owns_handshake",
        "_received",
        "_recording",
        "_recv_ctx",
        "_recv_ends_stream",
        "_recv_span",
        "_recv_token",
        "_requests",
        "_sent",
        "_server_streams",
        "_started_ns",
        "_stream_end",
        "_streams",
        "_sweep_at",
        "_tracer",
        "_trust",
        "_typed_attributes",
        "_unflushed",
        "config",
        "envelope",
        "route",
        "session_id",
        "side",
    )

    def __init__(
        self,
        side: Side,
        tracer: trace.Tracer,
        config: Config,
        *,
        route: str,
        session_id: Optional[str] = None,
        instruments: Optional[Instruments] = None,
    ) -> None:
        self.side: Side = side
        self.config = config
        self.route = route
        """Low-cardinality name of the endpoint, used in span names."""
        self.session_id = session_id or uuid.uuid4().hex
        """Value of ``websocket.session.id``, shared by both ends when both are instrumented."""
        self.envelope: Optional[EnvelopeFormat] = None
        """The envelope format in force once open, or ``None`` for plain frames."""
        self._tracer = tracer
        self._handshake: Optional[Span] = None
        self._owns_handshake = True
        self._owns_connection = True
        self._handshake_link: Sequence[Link] = ()
        self._connection: Optional[Span] = None
        self._connection_ctx: Optional[Context] = None
        self._connection_trace = 0
        self._recording = False
        self._sent = 0
        self._received = 0
        self._recv_span: Optional[Span] = None
        self._recv_ctx: Optional[Context] = None
        self._recv_token: Optional[object] = None
        self._closed = False
        self._closing = _close.Closing()
        self._offered: Optional[EnvelopeFormat] = None
        self._names = _route(route)
        self._base_attributes: dict[str, Any] = {}
        self._typed_attributes: tuple[dict[str, Any], dict[str, Any]] = (
            {sc.MESSAGE_TYPE: "binary"},
            {sc.MESSAGE_TYPE: "text"},
        )
        """The base attributes plus the message type (binary, text): every message span starts from a copy."""
        # Options read on every message, looked up once.
        self._message_spans = config.message_spans
        self._chunk_spans = config.chunk_spans
        self._stream_end = config.stream_end
        self._trust = config.trust
        self._max_envelope = config.max_envelope_bytes
        self._instruments = instruments
        self._started_ns = time.monotonic_ns()
        self._opened_ns = 0
        self._counts = [0] * 8
        """Messages, then bytes, not yet added to the counters, per direction and type (slots: see ``_count``)."""
        self._unflushed = 0
        streams = config.streams and config.message_spans
        self._server_streams = streams and side == "server"
        self._client_streams = streams and side == "client"
        self._idle_ns = int(config.stream_idle * 1e9)
        self._streams: dict[StreamStats, Stream] = {}
        """Open streams, oldest first; a stream leaves when it ends."""
        self._orphans: list[Stream] = []
        """Server reply streams whose message no context holds any more: they are complete."""
        self._flush_pending = False
        """An ``_end_orphans`` call is scheduled on the event loop, or about to run here."""
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        """The event loop the connection opened on, if any: where released reply streams are ended."""
        self._last_request: Optional[_Request] = None
        self._requests: Optional[OrderedDict[Hashable, _Request]] = None
        """Requests in flight by key (client, with ``stream_key``); made on first use."""
        self._recv_ends_stream: Optional[Stream] = None
        self._sweep_at = _SWEEP_FLOOR
        self._capture = config.capture_payload

    # Handshake ---------------------------------------------------------------

    @classmethod
    def client(
        cls,
        tracer: trace.Tracer,
        config: Config,
        *,
        url: str,
        scheme: str,
        host: Optional[str],
        port: Optional[int],
        path: str,
        instruments: Optional[Instruments] = None,
    ) -> ConnectionTracer:
        """Start the client's handshake span as a child of the current context."""
        self = cls("client", tracer, config, route=path or "/", instruments=instruments)
        try:
            attributes: dict[str, Any] = {
                sc.HTTP_REQUEST_METHOD: "GET",
                sc.URL_FULL: _strip_query(url),
                sc.URL_SCHEME: scheme,
                sc.SESSION_ID: self.session_id,
            }
            if host:
                attributes[sc.SERVER_ADDRESS] = host
            if port:
                attributes[sc.SERVER_PORT] = port
            self._start_handshake(otel_context.get_current(), (), attributes, SpanKind.CLIENT)
        except Exception as exc:  # pragma: no cover - defensive
            _warn_once("starting the client handshake span", exc)
        return self

    def request_headers(self) -> dict[str, str]:
        """Headers a client adds to its upgrade request: context, envelope offer, session id."""
        headers: dict[str, str] = {}
        try:
            if self._handshake is not None:
                headers.update(propagation.inject(trace.set_span_in_context(self._handshake)))
        except Exception as exc:
            # A propagator that cannot write the context (baggage holding a lone
            # surrogate) must not cost the envelope offer and the session id.
            _warn_once("injecting handshake context", exc)
        if self.config.envelope != "off":
            headers[sc.ENVELOPE_HEADER] = f"{self.config.envelope_format}/{sc.ENVELOPE_VERSION}"
        headers[sc.SESSION_HEADER] = self.session_id
        return headers

    @classmethod
    def server(
        cls,
        tracer: trace.Tracer,
        config: Config,
        *,
        path: str,
        query: str = "",
        headers: HeaderSource = (),
        subprotocols: Sequence[str] = (),
        method: str = "GET",
        scheme: str = "ws",
        server_address: Optional[str] = None,
        server_port: Optional[int] = None,
        client_address: Optional[str] = None,
        client_port: Optional[int] = None,
        route: Optional[str] = None,
        server_span: Optional[Span] = None,
        instruments: Optional[Instruments] = None,
        start_time: Optional[int] = None,
    ) -> ConnectionTracer:
        """Start the server's handshake span from an upgrade request.

        Context is looked for in the configured handshake sources, in order,
        and used as the trust policy says.

        ``server_span`` adopts a SERVER span another instrumentation already
        made for this request (OpenTelemetry's ASGI middleware): no second
        handshake span is made, the adopted span gets the WebSocket attributes,
        and its owner, not wstrace, ends it. ``start_time`` (ns since the epoch)
        backdates the handshake span, for adapters that learn the route late.
        """
        pairs = _pairs(headers)
        offered_session = None
        offer = None
        for key, value in pairs:
            if key == sc.SESSION_HEADER:
                offered_session = value
            elif key == sc.ENVELOPE_HEADER:
                offer = _parse_offer(value)
        session_id = None
        if config.trust != "ignore" and offered_session and _SESSION_ID.match(offered_session):
            session_id = offered_session
        self = cls("server", tracer, config, route=route or path or "/", session_id=session_id, instruments=instruments)
        self._offered = offer
        try:
            remote, source = self._extract_handshake(pairs, query, subprotocols)
            attributes: dict[str, Any] = {
                sc.HTTP_REQUEST_METHOD: method,
                sc.URL_PATH: path,
                sc.URL_SCHEME: scheme,
                sc.HTTP_ROUTE: self.route,
                sc.SESSION_ID: self.session_id,
            }
            if server_address:
                attributes[sc.SERVER_ADDRESS] = server_address
            if server_port:
                attributes[sc.SERVER_PORT] = server_port
            if client_address:
                attributes[sc.CLIENT_ADDRESS] = client_address
            if client_port:
                attributes[sc.CLIENT_PORT] = client_port
            if source:
                attributes[sc.CONTEXT_SOURCE] = source
            if server_span is not None and server_span.get_span_context().is_valid:
                self._adopt(server_span)
                return self
            parent, links = self._apply_trust(remote, otel_context.get_current())
            self._start_handshake(parent, links, attributes, SpanKind.SERVER, start_time)
        except Exception as exc:
            _warn_once("starting the server handshake span", exc)
        return self

    def _extract_handshake(
        self, headers: HeaderSource, query: str, subprotocols: Sequence[str]
    ) -> tuple[Optional[Context], Optional[str]]:
        if self.config.trust == "ignore":
            return None, None
        wanted = propagation.fields()
        for source in self.config.handshake_sources:
            if source == "headers":
                carrier = headers_carrier(headers, wanted)
            elif source == "query":
                carrier = query_carrier(query, wanted)
            else:
                carrier = split_subprotocols(subprotocols)[0]
            if carrier:
                ctx = self._extract(carrier)
                if ctx is not None and propagation.remote_span_context(ctx) is not None:
                    return ctx, source
        return None, None

    def _extract(self, carrier: dict[str, str]) -> Optional[Context]:
        """The context a peer's carrier holds, or ``None`` if the propagator chokes on it.

        Only ``parent`` uses the peer's baggage, so under ``link`` it is not
        even parsed: a hostile peer's baggage costs nothing, and cannot make
        the propagator log a warning per message.
        """
        if self.config.trust != "parent" and "baggage" in carrier:
            carrier = _without_baggage(carrier)
        try:
            return propagation.extract(carrier)
        except Exception as exc:
            # The W3C baggage propagator raises on a lone surrogate (aiohttp decodes
            # obs-text header bytes so): keep the trace context, drop the baggage.
            _warn_once("extracting a peer's context", exc)
        if "baggage" in carrier:
            try:
                return propagation.extract(_without_baggage(carrier))
            except Exception:
                pass
        return None

    def _apply_trust(self, remote: Optional[Context], ambient: Context) -> tuple[Context, Sequence[Link]]:
        """Parent on, link to, or ignore a remote context, per the trust policy."""
        if remote is None:
            return ambient, ()
        if self.config.trust == "parent":
            return remote, ()
        remote_span = propagation.remote_span_context(remote)
        links = (Link(remote_span, {sc.LINK_KIND: "remote"}),) if remote_span is not None else ()
        return ambient, links

    def _adopt(self, span: Span) -> None:
        self._handshake = span
        self._owns_handshake = False
        self._recording = span.is_recording()
        if self._recording:
            span.set_attributes({sc.SESSION_ID: self.session_id, sc.HTTP_ROUTE: self.route})
            self._handshake_link = (Link(span.get_span_context(), {sc.LINK_KIND: "handshake"}),)

    def _start_handshake(
        self,
        parent: Context,
        links: Sequence[Link],
        attributes: dict[str, Any],
        kind: SpanKind,
        start_time: Optional[int] = None,
    ) -> None:
        span = self._tracer.start_span(
            f"GET {self.route}", context=parent, kind=kind, attributes=attributes, links=links, start_time=start_time
        )
        self._handshake = span
        self._recording = span.is_recording()
        if self._recording:
            self._handshake_link = (Link(span.get_span_context(), {sc.LINK_KIND: "handshake"}),)

    def response_headers(self) -> dict[str, str]:
        """Headers a server adds to its 101 response: the envelope answer and session id."""
        headers = {sc.SESSION_HEADER: self.session_id}
        fmt = self._offered if self.config.envelope != "off" else None
        if fmt is not None:
            headers[sc.ENVELOPE_HEADER] = f"{fmt}/{sc.ENVELOPE_VERSION}"
        return headers

    def opened(
        self,
        *,
        response_headers: HeaderSource = (),
        subprotocol: Optional[str] = None,
        status: int = 101,
    ) -> None:
        """The handshake succeeded: end the handshake span and settle the envelope.

        Pass the *final* response headers on both sides: the envelope is in
        force only if the answer made it into the 101 (a server hook may have
        replaced the response), or if it is forced with ``envelope="always"``.
        """
        try:
            answer: Optional[str] = None
            session: Optional[str] = None
            for name, value in _pairs(response_headers):
                if name == sc.ENVELOPE_HEADER:
                    answer = value
                elif name == sc.SESSION_HEADER:
                    session = value
            agreed = _parse_offer(answer)
            if self.config.envelope == "always":
                self.envelope = agreed or self.config.envelope_format
            elif self.config.envelope == "negotiate":
                self.envelope = agreed
            if self.side == "client" and session and _SESSION_ID.match(session):
                self.session_id = session
            self._base_attributes = {
                sc.NETWORK_PROTOCOL_NAME: "websocket",
                sc.SESSION_ID: self.session_id,
            }
            self._typed_attributes = (
                {**self._base_attributes, sc.MESSAGE_TYPE: "binary"},
                {**self._base_attributes, sc.MESSAGE_TYPE: "text"},
            )
            self._opened_ns = time.monotonic_ns()
            self._loop = _running_loop()
            if self._instruments is not None and self._recording:
                attributes = self._metric_attributes()
                self._instruments.handshake_duration.record((self._opened_ns - self._started_ns) / 1e9, attributes)
                self._instruments.active_connections.add(1, attributes)
            span = self._handshake
            if span is None:
                return
            if self._recording:
                span.set_attributes(
                    {
                        sc.HTTP_RESPONSE_STATUS_CODE: status,
                        sc.ENVELOPE: self.envelope or "none",
                        sc.SESSION_ID: self.session_id,
                    }
                )
                if subprotocol:
                    span.set_attribute(sc.SUBPROTOCOL, subprotocol)
            if not self._owns_handshake:
                # An adopted span lasts as long as the connection: it is the
                # connection span too, and its owner ends it.
                if self._recording and self.config.model == "connection":
                    self._connection, self._owns_connection = span, False
                    self._connection_ctx = trace.set_span_in_context(span)
                    self._connection_trace = span.get_span_context().trace_id
                return
            span.end()
            # From now on only its context is needed (links, handshake_context): let the SDK's span go.
            self._handshake = NonRecordingSpan(span.get_span_context())
            if self._recording and self.config.model == "connection":
                self._connection = self._tracer.start_span(
                    self._names.connection,
                    context=trace.set_span_in_context(span),
                    kind=SpanKind.INTERNAL,
                    attributes=self._base_attributes,
                )
                self._connection_ctx = trace.set_span_in_context(self._connection)
                self._connection_trace = self._connection.get_span_context().trace_id
        except Exception as exc:
            _warn_once("recording the opened connection", exc)

    def handshake_failed(self, *, status: Optional[int] = None, error: Optional[BaseException] = None) -> None:
        """The connection never opened: end the handshake span with what is known."""
        self._closed = True
        span = self._handshake
        if span is None:
            return
        try:
            if self._recording:
                if status is not None:
                    span.set_attribute(sc.HTTP_RESPONSE_STATUS_CODE, status)
                # A client that gets no 101 has failed whatever the status; a
                # server's 4xx refusal is the client's fault, not the server's.
                if self.side == "client":
                    failed = error is not None or status is not None
                else:
                    failed = error is not None or (status is not None and status >= 500)
                if error is not None:
                    span.record_exception(error)
                if failed:
                    span.set_attribute(sc.ERROR_TYPE, type(error).__qualname__ if error else str(status))
                    span.set_status(Status(StatusCode.ERROR, str(error) if error else f"HTTP {status}"))
            if self._owns_handshake:
                span.end()
        except Exception as exc:
            _warn_once("recording a failed handshake", exc)

    @property
    def handshake_context(self) -> Context:
        """A context holding the handshake span, to parent work done for the connection."""
        return trace.set_span_in_context(self._handshake) if self._handshake else Context()

    @property
    def connection_context(self) -> Optional[Context]:
        """In the ``connection`` model, a context holding the connection span."""
        return self._connection_ctx

    @property
    def recording(self) -> bool:
        """Whether the handshake was sampled; if not, no message telemetry is made at all."""
        return self._recording

    # Messages ----------------------------------------------------------------

    def send_start(self, payload: Any, *, text: Optional[bool] = None, record: bool = True) -> tuple[Any, SendHandle]:
        """Start tracing an outbound message and return the frame to put on the wire.

        ``payload`` is what the application passed; it is returned unchanged
        unless the envelope is in force. ``text`` is the frame type when the
        library lets the caller choose it (default: ``str`` means text).
        ``record=False``, like ``suppress_instrumentation()``, still applies the envelope.
        When the returned handle is :data:`NOTHING_TO_END`, ``send_end`` may be skipped.
        """
        is_text = isinstance(payload, str) if text is None else text
        handle = NOTHING_TO_END
        original = payload
        try:
            carrier: Optional[dict[str, str]] = None
            if self._recording and not self._closed:
                current = otel_context.get_current()
                if not record or current.get(_SUPPRESS):
                    record = False
                elif self._server_streams:
                    owner: Optional[_Inbound] = current.get(_OWNER)  # type: ignore[assignment]
                    if owner is not None and owner.tracer is self:
                        # Hot path: a chunk of a reply stream, with no span of its own.
                        return self._stream_chunk(owner, payload, is_text)
                if record and self._message_spans:
                    size = _size(payload)
                    self._count(_OUT, is_text, size)
                    handle = SendHandle(self._start_send(payload, is_text, size, current))
                    if self._client_streams:
                        self._track_request(handle.span, payload)  # type: ignore[arg-type]
                    if self.envelope is not None:
                        carrier = propagation.inject(trace.set_span_in_context(handle.span))  # type: ignore[arg-type]
                elif record and self.envelope is not None:
                    # Without message spans the current context still travels.
                    carrier = propagation.inject(current)
            if self.envelope is not None and isinstance(payload, (str, bytes, bytearray, memoryview)):
                payload = self._wrap(payload, is_text, carrier)
        except Exception as exc:
            _warn_once("tracing an outbound message", exc)
            # The peer strips one envelope from every frame: a bare frame that
            # happens to start like one would reach its application changed.
            payload = self._wrap_empty(original, is_text)
        return payload, handle

    def _wrap_empty(self, payload: Any, is_text: bool) -> Any:
        """``payload`` in an envelope with no context if the envelope is in force; never raises."""
        if self.envelope is None or not isinstance(payload, (str, bytes, bytearray, memoryview)):
            return payload
        try:
            return self._wrap(payload, is_text, None)
        except Exception as exc:  # a str with lone surrogates sent as binary: the library refuses it too
            _warn_once("encoding an empty envelope", exc)
            return payload

    def _start_send(self, payload: Any, is_text: bool, size: Optional[int], current: Context) -> Span:
        attributes = self._typed_attributes[1 if is_text else 0].copy()
        self._sent += 1
        attributes[sc.MESSAGE_ORDINAL] = self._sent
        if size is not None:
            attributes[sc.MESSAGING_MESSAGE_BODY_SIZE] = size
        if self._capture:
            attributes.update(self._captured(payload, is_text))
        if self._connection_ctx is not None:
            parent = self._connection_ctx
            # A reply inside a receive span (or any span of this connection's
            # trace) keeps its parent; anything else hangs off the connection.
            if trace.get_current_span(current).get_span_context().trace_id == self._connection_trace:
                parent = current
            links: Sequence[Link] = ()
        else:
            parent = current
            links = self._handshake_link
        return self._tracer.start_span(
            self._names.send, context=parent, kind=SpanKind.PRODUCER, attributes=attributes, links=links
        )

    def _stream_chunk(self, owner: _Inbound, payload: Any, is_text: bool) -> tuple[Any, SendHandle]:
        """Server side: an outbound message sent while ``owner`` is handled joins its reply stream."""
        now = time.monotonic_ns()
        stream = owner.stream
        if stream is not None and not stream.ended and now - stream.stats.last_ns > self._idle_ns:
            stream.end(at_last_chunk=True)  # an idle gap ends a stream; this chunk starts the next
        self._sent += 1
        ordinal = self._sent
        if stream is None or stream.ended:
            span = self._start_stream_span(owner.ctx, payload, is_text, ordinal, now)
            stream = owner.stream = self._new_stream(span, owner.start_ns, "outbound", is_text)
            owner.carrier = owner.text_prefix = owner.binary_prefix = None
        size = _size(payload)
        stream.chunk(size or 0, now)
        handle = NOTHING_TO_END
        if self._stream_end is not None and _safe_predicate(self._stream_end, payload):
            handle = SendHandle(None)
            handle.stream, handle.ends_stream = stream, True
        if self._chunk_spans:
            chunk = self._start_chunk_span(
                self._names.send, SpanKind.PRODUCER, stream.span, payload, is_text, size, ordinal
            )
            if handle is NOTHING_TO_END:
                handle = SendHandle(None)
            handle.span = chunk
            if self.envelope is not None:
                payload = self._wrap(payload, is_text, propagation.inject(trace.set_span_in_context(chunk)))
            return payload, handle
        if self.envelope is not None:
            payload = self._wrap_in_stream(owner, stream, payload, is_text)
        return payload, handle

    def _wrap_in_stream(self, owner: _Inbound, stream: Stream, payload: Any, is_text: bool) -> Any:
        """Envelope a chunk with its stream's context, encoded once per stream."""
        if self.envelope != "frame" or not isinstance(payload, (str, bytes, bytearray, memoryview)):
            carrier = propagation.inject(trace.set_span_in_context(stream.span))
            return self._wrap(payload, is_text, carrier) if isinstance(payload, (str, bytes)) else payload
        stream_carrier = owner.carrier
        if stream_carrier is None:
            stream_carrier = owner.carrier = propagation.inject(trace.set_span_in_context(stream.span))
        if is_text:
            prefix = owner.text_prefix
            if prefix is None:
                prefix = owner.text_prefix = self._prefix(codec.text_prefix, stream_carrier)
            if isinstance(payload, str):
                return prefix + payload
            return prefix.encode("ascii") + bytes(payload)
        prefix_b = owner.binary_prefix
        if prefix_b is None:
            prefix_b = owner.binary_prefix = self._prefix(codec.binary_prefix, stream_carrier)
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        return prefix_b + bytes(payload)

    def _prefix(self, encode: Callable[..., _P], carrier: dict[str, str]) -> _P:
        """A stream's envelope prefix; an empty envelope if the carrier is over the cap."""
        try:
            return encode(carrier, max_header=self._max_envelope)
        except EnvelopeEncodeError as exc:
            _warn_once("encoding the envelope (carrier over the cap)", exc)
            return encode(None)

    def _wrap(self, payload: Any, is_text: bool, carrier: Optional[dict[str, str]]) -> Any:
        cap = self._max_envelope
        try:
            if self.envelope == "json":
                if isinstance(payload, (bytearray, memoryview)):
                    payload = bytes(payload)
                return codec.encode_json_field(payload, carrier, field=self.config.json_field, max_header=cap)
            return codec.encode(payload, carrier, text=is_text, max_header=cap)
        except EnvelopeEncodeError as exc:
            # Too much baggage: send the frame with an empty envelope, never drop it.
            _warn_once("encoding the envelope (carrier over the cap)", exc)
            if self.envelope == "json":
                return codec.encode_json_field(payload, None, field=self.config.json_field, max_header=cap)
            return codec.encode(payload, None, text=is_text, max_header=cap)

    def _captured(self, payload: Any, is_text: bool) -> dict[str, Any]:
        """The body attributes of a message span (``capture_payload``); empty if there is nothing to record."""
        redact = self.config.redact
        if redact is not None:
            if isinstance(payload, (bytearray, memoryview)):
                payload = bytes(payload)  # a copy: the hook must not be able to change what is sent
            try:
                payload = redact(payload)
            except Exception as exc:
                _warn_once("the redact hook", exc)  # nothing recorded: better than an unredacted body
                return {}
            if payload is None:
                return {}
        body = _body(payload, is_text, self.config.capture_payload_bytes)
        if body is None:
            _warn_once("the redact hook", TypeError(f"it returned a {type(payload).__name__}, not str or bytes"))
            return {}
        return {sc.MESSAGE_BODY: body[0], sc.MESSAGE_BODY_TRUNCATED: body[1]}

    def send_end(self, handle: SendHandle, error: Optional[BaseException] = None) -> None:
        """The outbound message was handed to the transport, or failed with ``error``."""
        span, stream = handle.span, handle.stream
        if span is None and stream is None:
            return
        try:
            if span is not None:
                if error is not None:
                    span.record_exception(error)
                    span.set_attribute(sc.ERROR_TYPE, type(error).__qualname__)
                    span.set_status(Status(StatusCode.ERROR, str(error)))
                span.end()
            if stream is not None and (error is not None or handle.ends_stream):
                stream.end(error)
        except Exception as exc:
            _warn_once("ending a send span", exc)

    def receive_done(self, error: Optional[BaseException] = None) -> None:
        """The application finished handling the last message (it asks for the next one).

        ``error`` is an exception the application's handler raised, recorded on the span.
        """
        span, ctx, token = self._recv_span, self._recv_ctx, self._recv_token
        ending = self._recv_ends_stream
        if span is None and token is None and ending is None:
            return
        self._recv_span = self._recv_ends_stream = None
        try:
            # Detach only if nothing was attached after us: resetting a stale
            # token would roll back whatever the application attached since.
            # Called from another thread or task, the token is kept for the
            # owner's own next call.
            if token is not None and otel_context.get_current() is ctx:
                self._recv_ctx = self._recv_token = None
                otel_context.detach(token)  # type: ignore[arg-type]
            if span is not None and span.is_recording():
                if error is not None:
                    span.record_exception(error)
                    span.set_attribute(sc.ERROR_TYPE, type(error).__qualname__)
                    span.set_status(Status(StatusCode.ERROR, str(error)))
                span.end()
            if ending is not None:
                ending.end(error)
        except Exception as exc:
            _warn_once("ending a receive span", exc)
        # The last reference to the message's context, usually: its reply stream is complete, and is
        # ended right here (no loop callback needed).
        self._flush_pending = True
        ctx = token = None
        self._flush_pending = False
        if self._orphans:
            self._end_orphans()

    def received(self, wire: Any, *, text: Optional[bool] = None, record: bool = True) -> Any:
        """A message arrived: strip the envelope, start its span and make it current.

        Returns the application's payload. Call :meth:`receive_done` when the
        application is done with it. ``text`` is the frame type, for libraries
        that hand text frames over as bytes (default: ``str`` means text).
        Inside ``suppress_instrumentation()`` (or with ``record=False``) the
        envelope is still stripped but nothing is recorded.
        """
        payload = wire
        carrier: Optional[dict[str, str]] = None
        if self._orphans:
            self._end_orphans()
        try:
            if self.envelope is not None and isinstance(wire, (str, bytes)):
                if self.envelope == "json":
                    decoded = codec.decode_json_field(wire, field=self.config.json_field, max_header=self._max_envelope)
                    payload, carrier = decoded.payload, decoded.carrier
                else:
                    payload, carrier = codec._decode_parts(wire, self._max_envelope)
            if record and self._recording and self._message_spans and not self._closed:
                self._start_receive(payload, carrier, isinstance(payload, str) if text is None else text)
        except Exception as exc:
            _warn_once("tracing an inbound message", exc)
        return payload

    def _remote(self, carrier: Optional[dict[str, str]]) -> tuple[Optional[Context], Optional[trace.SpanContext]]:
        remote = self._extract(carrier) if carrier and self._trust != "ignore" else None
        return remote, propagation.remote_span_context(remote) if remote is not None else None

    def _start_receive(self, payload: Any, carrier: Optional[dict[str, str]], is_text: bool) -> None:
        ambient = otel_context.get_current()
        if ambient.get(_SUPPRESS):
            return  # suppress_instrumentation(): the envelope is stripped, nothing is recorded
        now = time.monotonic_ns()
        size = _size(payload)
        request = self._request_for(payload, now) if self._client_streams else None
        if request is not None:
            span, base = self._client_stream_chunk(request, payload, carrier, is_text, size, now, ambient)
        else:
            self._count(_IN, is_text, size)  # stream chunks are counted when their stream ends
            span, base = self._start_receive_span(payload, carrier, is_text, size, ambient)
        ctx = trace.set_span_in_context(span, base)
        if self._server_streams:
            ctx = otel_context.set_value(_OWNER, _Inbound(self, ctx, now), ctx)
        self._recv_span = span if request is None or self._chunk_spans else None
        self._recv_ctx = ctx
        self._recv_token = otel_context.attach(ctx)

    def _start_receive_span(
        self, payload: Any, carrier: Optional[dict[str, str]], is_text: bool, size: Optional[int], ambient: Context
    ) -> tuple[Span, Context]:
        remote, remote_span = self._remote(carrier)
        attributes = self._typed_attributes[1 if is_text else 0].copy()
        self._received += 1
        attributes[sc.MESSAGE_ORDINAL] = self._received
        if size is not None:
            attributes[sc.MESSAGING_MESSAGE_BODY_SIZE] = size
        if self._capture:
            attributes.update(self._captured(payload, is_text))
        parent, base, links = self._receive_parent(remote, remote_span, ambient, None)
        span = self._tracer.start_span(
            self._names.receive, context=parent, kind=SpanKind.CONSUMER, attributes=attributes, links=links
        )
        return span, base

    def _receive_parent(
        self,
        remote: Optional[Context],
        remote_span: Optional[trace.SpanContext],
        ambient: Context,
        fallback: Optional[Context],
    ) -> tuple[Context, Context, Sequence[Link]]:
        """Parent, attach base and links of an inbound span, per model and trust policy."""
        if self._connection_ctx is not None:
            # Connection model: the connection span is the parent; the sender's
            # context, if any, is a link (messaging conventions, ambient parent).
            if remote_span is not None:
                return self._connection_ctx, ambient, (Link(remote_span, {sc.LINK_KIND: "creation"}),)
            return self._connection_ctx, ambient, ()
        if remote is not None and remote_span is not None and self._trust == "parent":
            return remote, remote, self._handshake_link  # the remote context carries the sender's baggage
        if remote_span is not None:
            links = (*self._handshake_link, Link(remote_span, {sc.LINK_KIND: "remote"}))
            return (fallback if fallback is not None else _NO_CONTEXT), ambient, links
        return (fallback if fallback is not None else _NO_CONTEXT), ambient, self._handshake_link

    # Streams -----------------------------------------------------------------

    def _end_orphans(self) -> None:
        self._flush_pending = False
        orphans, self._orphans = self._orphans, []
        try:
            for stream in orphans:
                stream.end(at_last_chunk=True)
        except Exception as exc:
            _warn_once("ending a reply stream", exc)

    def _new_stream(self, span: Span, start_ns: int, direction: str, is_text: bool) -> Stream:
        message_direction = _OUT if direction == "outbound" else _IN

        def tally(stats: StreamStats) -> None:
            self._streams.pop(stats, None)
            # Chunks are counted once per stream, under the first chunk's type.
            self._count(message_direction, is_text, stats.size, stats.count)

        stats = StreamStats(start_ns, self.config.stall_threshold)
        stream = Stream(
            span,
            stats,
            instruments=self._instruments,
            metric_attributes=self._names.stream_attributes[direction],
            body_size=True,
            on_end=tally,
            brief_single=True,
        )
        self._streams[stats] = stream
        if len(self._streams) > self._sweep_at:
            self._sweep_streams(time.monotonic_ns())
        return stream

    def _sweep_streams(self, now: int) -> None:
        """End idle streams at their last chunk, cap the open ones, forget the ended.

        A server's reply stream otherwise ends only when its owner sends again
        after an idle gap, or at close: on a long-lived connection every reply
        would stay an open span in memory. Amortised: the next sweep waits
        until the list has doubled.
        """
        idle = self._idle_ns
        for stream in list(self._streams.values()):
            if now - stream.stats.last_ns > idle and stream.stats.count:
                stream.end(at_last_chunk=True)  # leaves self._streams
        excess = len(self._streams) - _MAX_OPEN_STREAMS
        if excess > 0:
            for stream in list(self._streams.values())[:excess]:  # oldest first
                stream.end(at_last_chunk=True)
        self._sweep_at = max(_SWEEP_FLOOR, 2 * len(self._streams))

    def _start_stream_span(self, parent: Context, payload: Any, is_text: bool, ordinal: int, now: int) -> Span:
        """The span of a server's reply stream: it starts with its first chunk."""
        attributes = self._typed_attributes[1 if is_text else 0].copy()
        attributes[sc.MESSAGE_ORDINAL] = ordinal
        if self._capture:
            attributes.update(self._captured(payload, is_text))
        return self._tracer.start_span(
            self._names.send,
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes=attributes,
            links=() if self._connection_ctx is not None else self._handshake_link,
            start_time=wall_ns(now),
        )

    def _start_chunk_span(
        self,
        name: str,
        kind: SpanKind,
        stream_span: Span,
        payload: Any,
        is_text: bool,
        size: Optional[int],
        ordinal: int,
        sender: Optional[trace.SpanContext] = None,
    ) -> Span:
        """A span for one chunk, under its stream's span (``chunk_spans``); linked to the sender's chunk."""
        attributes = dict(self._base_attributes)
        attributes[sc.MESSAGE_TYPE] = "text" if is_text else "binary"
        attributes[sc.MESSAGE_ORDINAL] = ordinal
        if size is not None:
            attributes[sc.MESSAGING_MESSAGE_BODY_SIZE] = size
        if self._capture:
            attributes.update(self._captured(payload, is_text))
        links = (Link(sender, {sc.LINK_KIND: "creation"}),) if sender is not None else ()
        return self._tracer.start_span(
            name, context=trace.set_span_in_context(stream_span), kind=kind, attributes=attributes, links=links
        )

    def _track_request(self, span: Span, payload: Any) -> None:
        """Client side: a request was sent; the messages that answer it form its reply stream."""
        request = _Request(trace.set_span_in_context(span), time.monotonic_ns())
        key_of = self.config.stream_key
        if key_of is None:
            previous = self._last_request
            if previous is not None and previous.stream is not None:
                previous.stream.end(at_last_chunk=True)  # "up to the next send"
            self._last_request = request
            return
        key = _safe_key(key_of, payload)
        if key is None:
            return
        requests = self._requests
        if requests is None:
            requests = self._requests = OrderedDict()
        old = requests.pop(key, None)
        if old is not None and old.stream is not None:
            old.stream.end(at_last_chunk=True)
        requests[key] = request
        if len(requests) > _MAX_PENDING_REQUESTS:
            _, evicted = requests.popitem(last=False)
            if evicted.stream is not None:
                evicted.stream.end(at_last_chunk=True)

    def _request_for(self, payload: Any, now: int) -> Optional[_Request]:
        """Client side: the request an inbound message answers, if it is still streaming."""
        key_of = self.config.stream_key
        if key_of is None:
            request = self._last_request
        else:
            key = _safe_key(key_of, payload)
            request = self._requests.get(key) if key is not None and self._requests is not None else None
        if request is None or request.done:
            return None
        stream = request.stream
        if stream is not None and (stream.ended or now - stream.stats.last_ns > self._idle_ns):
            stream.end(at_last_chunk=True)
            request.done = True
            return None
        return request

    def _client_stream_chunk(
        self,
        request: _Request,
        payload: Any,
        carrier: Optional[dict[str, str]],
        is_text: bool,
        size: Optional[int],
        now: int,
        ambient: Context,
    ) -> tuple[Span, Context]:
        self._received += 1
        ordinal = self._received
        stream = request.stream
        if stream is None:
            remote, remote_span = self._remote(carrier)
            # Without the server's context, the reply still belongs to the request.
            parent, base, links = self._receive_parent(remote, remote_span, ambient, request.ctx)
            attributes = {
                **self._base_attributes,
                sc.MESSAGE_TYPE: "text" if is_text else "binary",
                sc.MESSAGE_ORDINAL: ordinal,
            }
            if self._capture:
                attributes.update(self._captured(payload, is_text))
            span = self._tracer.start_span(
                self._names.receive,
                context=parent,
                kind=SpanKind.CONSUMER,
                attributes=attributes,
                links=links,
                start_time=wall_ns(now),
            )
            stream = request.stream = self._new_stream(span, request.start_ns, "inbound", is_text)
            request.base = base
        stream.chunk(size or 0, now)
        if self.config.stream_end is not None and _safe_predicate(self.config.stream_end, payload):
            request.done = True
            self._recv_ends_stream = stream
        if self.config.chunk_spans:
            sender = self._remote(carrier)[1]
            chunk = self._start_chunk_span(
                self._names.receive, SpanKind.CONSUMER, stream.span, payload, is_text, size, ordinal, sender
            )
            return chunk, request.base or ambient
        return stream.span, request.base or ambient

    # Metrics -----------------------------------------------------------------

    def _metric_attributes(self) -> dict[str, Any]:
        return {sc.HTTP_ROUTE: self.route, sc.SIDE: self.side}

    def _record_close(self, code: Optional[int]) -> None:
        instruments = self._instruments
        if instruments is None:
            return
        self._flush_counts()
        attributes = self._metric_attributes()
        if self._opened_ns:
            instruments.active_connections.add(-1, attributes)
            # The same code as the close span: none when this end dropped the connection on purpose.
            closing = {**attributes, sc.CLOSE_CODE: code} if code is not None else attributes
            instruments.connection_duration.record((time.monotonic_ns() - self._opened_ns) / 1e9, closing)
            instruments.closes.add(1, closing)

    def _count(self, direction: str, is_text: bool, size: Optional[int], messages: int = 1) -> None:
        """Count messages locally; counters are flushed in batches (an SDK add costs ~5 µs)."""
        if self._instruments is None:
            return
        slot = (2 if direction == _IN else 0) + (1 if is_text else 0)
        counts = self._counts
        counts[slot] += messages
        if size:
            counts[slot + 4] += size
        self._unflushed += messages
        if self._unflushed >= _FLUSH_EVERY:
            self._flush_counts()

    def _flush_counts(self) -> None:
        instruments = self._instruments
        self._unflushed = 0
        if instruments is None:
            return
        counts = self._counts
        for slot, attributes in enumerate(self._names.message_attributes):
            if counts[slot]:
                instruments.messages.add(counts[slot], attributes)
            if counts[slot + 4]:
                instruments.message_bytes.add(counts[slot + 4], attributes)
        self._counts = [0] * 8

    # Close -------------------------------------------------------------------

    def close_sent(self, code: Optional[int] = None, reason: str = "") -> None:
        """This end sent a close frame (``code`` ``None``: a frame without a status code)."""
        self._closing.sent(code, reason)

    def close_received(self, code: Optional[int] = None, reason: str = "") -> None:
        """The peer's close frame arrived. Report frames in the order they went by: the first one's
        sender is the close's initiator."""
        self._closing.received(code, reason)

    def closed(
        self,
        *,
        error: Optional[BaseException] = None,
        local_end: bool = False,
        code: Optional[int] = None,
        reason: str = "",
        initiator: Optional[Initiator] = None,
    ) -> None:
        """The connection ended. Idempotent.

        Report the close frames first (:meth:`close_sent`, :meth:`close_received`);
        the rules in ``docs/semantic-conventions.md`` turn them into the close's
        code, initiator and status. ``error`` is what ended the connection.
        ``local_end`` says that this end dropped the connection on purpose without
        a closing handshake (an ASGI application that returned without closing).

        A library that tells only at the end may pass ``code``, ``reason`` and
        ``initiator`` instead: who sent the first close frame of a completed
        closing handshake; ``initiator=None`` means the TCP connection dropped.
        Every open span is ended; an abnormal close marks them as errors.
        """
        if self._closed:
            return
        self._closed = True
        try:
            closing = self._closing
            if not closing.reported and initiator == "local" and code is None:
                local_end = True  # no frame either way: this end dropped the connection
            elif not closing.reported and initiator is not None and code != _close.ABNORMAL:
                if initiator == "local":
                    closing.sent(code, reason)
                    closing.received(code, reason)
                else:
                    closing.received(code, reason)
            elif not closing.reported and initiator == "local":
                closing.sent(None, reason)  # the peer never answered: 1006
            end = _close.outcome(closing, error=error, local_end=local_end)
            code, reason, abnormal = end.code, end.reason, end.abnormal
            message = f"WebSocket closed with code {code}" + (f": {reason}" if reason else "")
            open_recv = self._recv_span
            if open_recv is not None and open_recv.is_recording():
                if abnormal:
                    if error is not None:  # what ended the connection ended the message's handling too
                        open_recv.record_exception(error)
                        open_recv.set_attribute(sc.ERROR_TYPE, type(error).__qualname__)
                    open_recv.set_status(Status(StatusCode.ERROR, message))
                open_recv.end()
            self._recv_span = None  # the token stays: only the owning context may detach it
            self._recv_ends_stream = None
            # Streams still open end here; an abnormal close fails them, with their partial metrics.
            for stream in list(self._streams.values()):
                if not stream.ended:
                    stream.end(f"close {code}" if abnormal else None, at_last_chunk=not abnormal)
            self._streams.clear()
            self._orphans = []
            if not self._recording:
                return
            self._record_close(code)
            attributes: dict[str, Any] = dict(self._base_attributes)
            attributes[sc.CLOSE_INITIATOR] = end.initiator or "none"
            if code is not None:
                attributes[sc.CLOSE_CODE] = code
            if reason:
                attributes[sc.CLOSE_REASON] = reason
            if self._connection is not None:
                span = self._connection
            else:
                span = self._tracer.start_span(
                    self._names.close,
                    context=Context(),
                    kind=SpanKind.INTERNAL,
                    attributes=attributes,
                    links=self._handshake_link,
                )
            span.set_attributes(attributes)
            if error is not None:
                span.record_exception(error)
            if abnormal:
                span.set_attribute(sc.ERROR_TYPE, type(error).__qualname__ if error else str(code))
                span.set_status(Status(StatusCode.ERROR, message))
            if span is not self._connection or self._owns_connection:
                span.end()
        except Exception as exc:
            _warn_once("recording the close", exc)


def _pairs(headers: HeaderSource) -> list[tuple[str, str]]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    raw = getattr(headers, "raw_items", None)
    if callable(raw):
        items = raw()
    return [
        (
            (k if isinstance(k, str) else k.decode("latin-1")).lower(),
            v if isinstance(v, str) else v.decode("latin-1"),
        )
        for k, v in items
    ]


def _without_baggage(carrier: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in carrier.items() if k != "baggage"}


def _running_loop() -> Optional[asyncio.AbstractEventLoop]:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # a thread-based library (websockets sync, websocket-client)
        return None


def _size(payload: Any) -> Optional[int]:
    if isinstance(payload, str):
        # Counting UTF-8 bytes without encoding: ASCII is the common case.
        return len(payload) if payload.isascii() else len(payload.encode("utf-8", "surrogatepass"))
    if isinstance(payload, (bytes, bytearray)):
        return len(payload)
    if isinstance(payload, memoryview):
        return payload.nbytes
    return None


def _strip_query(url: str) -> str:
    """Drop the query and credentials from a URL before recording it."""
    head, _, _ = url.partition("?")
    scheme, sep, rest = head.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        rest = rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"
