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

import itertools
import logging
import re
import uuid
from typing import Any, Literal, Mapping, Optional, Sequence

from opentelemetry import context as otel_context, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from wstrace import envelope as codec, propagation, semconv as sc
from wstrace.carriers import HeaderSource, headers_carrier, query_carrier, split_subprotocols
from wstrace.config import Config, EnvelopeFormat
from wstrace.exceptions import EnvelopeEncodeError


__all__ = ["ConnectionTracer", "Side"]

_log = logging.getLogger(__name__)

Side = Literal["client", "server"]

_SESSION_ID = re.compile(r"[0-9a-f]{32}\Z")
_NORMAL_CLOSE_CODES = frozenset({1000, 1001, 1005, 1012, 1013})
_ERROR_CLOSE_CODES = frozenset({1002, 1003, 1006, 1007, 1008, 1009, 1010, 1011, 1014, 1015})

_warned: set[str] = set()


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


class _SendHandle:
    """An outbound message in flight, opaque to adapters: pass it back to ``send_end``."""

    __slots__ = ("span",)

    def __init__(self, span: Optional[Span]) -> None:
        self.span = span


class ConnectionTracer:
    """Telemetry for one WebSocket connection, seen from one side.

    Build it with :meth:`client` or :meth:`server`, not directly.
    """

    def __init__(
        self,
        side: Side,
        tracer: trace.Tracer,
        config: Config,
        *,
        route: str,
        session_id: Optional[str] = None,
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
        self._sent = itertools.count(1)
        self._received = itertools.count(1)
        self._recv_span: Optional[Span] = None
        self._recv_ctx: Optional[Context] = None
        self._recv_token: Optional[object] = None
        self._closed = False
        self._offered: Optional[EnvelopeFormat] = None
        self._send_name = f"send {route}"
        self._receive_name = f"receive {route}"
        self._base_attributes: dict[str, Any] = {}

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
    ) -> ConnectionTracer:
        """Start the client's handshake span as a child of the current context."""
        self = cls("client", tracer, config, route=path or "/")
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
            if self.config.envelope != "off":
                headers[sc.ENVELOPE_HEADER] = f"{self.config.envelope_format}/{sc.ENVELOPE_VERSION}"
            headers[sc.SESSION_HEADER] = self.session_id
        except Exception as exc:
            _warn_once("injecting handshake context", exc)
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
    ) -> ConnectionTracer:
        """Start the server's handshake span from an upgrade request.

        Context is looked for in the configured handshake sources, in order,
        and used as the trust policy says.

        ``server_span`` adopts a SERVER span another instrumentation already
        made for this request (OpenTelemetry's ASGI middleware): no second
        handshake span is made, the adopted span gets the WebSocket attributes,
        and its owner, not wstrace, ends it.
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
        self = cls("server", tracer, config, route=route or path or "/", session_id=session_id)
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
            self._start_handshake(parent, links, attributes, SpanKind.SERVER)
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
                ctx = propagation.extract(carrier)
                if propagation.remote_span_context(ctx) is not None:
                    return ctx, source
        return None, None

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
            span.set_attribute(sc.SESSION_ID, self.session_id)
            self._handshake_link = (Link(span.get_span_context(), {sc.LINK_KIND: "handshake"}),)

    def _start_handshake(
        self, parent: Context, links: Sequence[Link], attributes: dict[str, Any], kind: SpanKind
    ) -> None:
        span = self._tracer.start_span(
            f"GET {self.route}", context=parent, kind=kind, attributes=attributes, links=links
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
            if self._recording and self.config.model == "connection":
                self._connection = self._tracer.start_span(
                    f"websocket {self.route}",
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
                failed = error is not None or (status is not None and status >= (500 if self.side == "server" else 400))
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

    def send_start(self, payload: Any, *, text: Optional[bool] = None, record: bool = True) -> tuple[Any, _SendHandle]:
        """Start the send span and return the frame to put on the wire.

        ``payload`` is what the application passed; it is returned unchanged
        unless the envelope is in force. ``text`` is the frame type when the
        library lets the caller choose it (default: ``str`` means text).
        ``record=False`` (instrumentation suppressed) still applies the envelope.
        """
        is_text = isinstance(payload, str) if text is None else text
        span: Optional[Span] = None
        try:
            if record and self._recording and self.config.message_spans and not self._closed:
                span = self._start_send(payload, is_text)
            if self.envelope is not None and isinstance(payload, (str, bytes, bytearray, memoryview)):
                # Without a send span (message spans off), the current context still travels.
                carry = span is not None or (record and self._recording)
                payload = self._wrap(payload, is_text, span, carry)
        except Exception as exc:
            _warn_once("tracing an outbound message", exc)
        return payload, _SendHandle(span)

    def _start_send(self, payload: Any, is_text: bool) -> Span:
        ordinal = next(self._sent)
        attributes = dict(self._base_attributes)
        attributes[sc.MESSAGE_TYPE] = "text" if is_text else "binary"
        attributes[sc.MESSAGE_ORDINAL] = ordinal
        size = _size(payload)
        if size is not None:
            attributes[sc.MESSAGING_MESSAGE_BODY_SIZE] = size
        if self._connection_ctx is not None:
            parent = self._connection_ctx
            # A reply inside a receive span (or any span of this connection's
            # trace) keeps its parent; anything else hangs off the connection.
            if trace.get_current_span().get_span_context().trace_id == self._connection_trace:
                parent = otel_context.get_current()
            links: Sequence[Link] = ()
        else:
            parent = otel_context.get_current()
            links = self._handshake_link
        return self._tracer.start_span(
            self._send_name, context=parent, kind=SpanKind.PRODUCER, attributes=attributes, links=links
        )

    def _wrap(self, payload: Any, is_text: bool, span: Optional[Span], carry: bool) -> Any:
        carrier = None
        if span is not None:
            carrier = propagation.inject(trace.set_span_in_context(span))
        elif carry:
            carrier = propagation.inject()
        cap = self.config.max_envelope_bytes
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

    def send_end(self, handle: _SendHandle, error: Optional[BaseException] = None) -> None:
        """The outbound message was handed to the transport, or failed with ``error``."""
        span = handle.span
        if span is None:
            return
        try:
            if error is not None:
                span.record_exception(error)
                span.set_attribute(sc.ERROR_TYPE, type(error).__qualname__)
                span.set_status(Status(StatusCode.ERROR, str(error)))
            span.end()
        except Exception as exc:
            _warn_once("ending a send span", exc)

    def receive_done(self) -> None:
        """The application finished handling the last message (it asks for the next one)."""
        span, ctx, token = self._recv_span, self._recv_ctx, self._recv_token
        if span is None and token is None:
            return
        self._recv_span = self._recv_ctx = self._recv_token = None
        try:
            # Detach only if nothing was attached after us: resetting a stale
            # token would roll back whatever the application attached since.
            if token is not None and otel_context.get_current() is ctx:
                otel_context.detach(token)  # type: ignore[arg-type]
            if span is not None and span.is_recording():
                span.end()
        except Exception as exc:
            _warn_once("ending a receive span", exc)

    def received(self, wire: Any, *, record: bool = True) -> Any:
        """A message arrived: strip the envelope, start its span and make it current.

        Returns the application's payload. Call :meth:`receive_done` when the
        application is done with it.
        """
        payload = wire
        carrier: Optional[dict[str, str]] = None
        try:
            if self.envelope is not None and isinstance(wire, (str, bytes)):
                cap = self.config.max_envelope_bytes
                if self.envelope == "json":
                    decoded = codec.decode_json_field(wire, field=self.config.json_field, max_header=cap)
                else:
                    decoded = codec.decode(wire, max_header=cap)
                payload, carrier = decoded.payload, decoded.carrier
            if record and self._recording and self.config.message_spans and not self._closed:
                self._start_receive(payload, carrier)
        except Exception as exc:
            _warn_once("tracing an inbound message", exc)
        return payload

    def _start_receive(self, payload: Any, carrier: Optional[dict[str, str]]) -> None:
        remote = propagation.extract(carrier) if carrier and self.config.trust != "ignore" else None
        remote_span = propagation.remote_span_context(remote) if remote is not None else None
        attributes = dict(self._base_attributes)
        attributes[sc.MESSAGE_TYPE] = "text" if isinstance(payload, str) else "binary"
        attributes[sc.MESSAGE_ORDINAL] = next(self._received)
        size = _size(payload)
        if size is not None:
            attributes[sc.MESSAGING_MESSAGE_BODY_SIZE] = size
        ambient = otel_context.get_current()
        links: list[Link] = []
        if self._connection_ctx is not None:
            # Connection model: the connection span is the parent; the sender's
            # context, if any, is a link (messaging conventions, ambient parent).
            parent = self._connection_ctx
            if remote_span is not None:
                links.append(Link(remote_span, {sc.LINK_KIND: "creation"}))
            attach_base = ambient
        else:
            links.extend(self._handshake_link)
            if remote is not None and remote_span is not None and self.config.trust == "parent":
                parent = remote
                attach_base = remote  # carries the sender's baggage
            else:
                if remote_span is not None:
                    links.append(Link(remote_span, {sc.LINK_KIND: "remote"}))
                parent = Context()
                attach_base = ambient
        span = self._tracer.start_span(
            self._receive_name, context=parent, kind=SpanKind.CONSUMER, attributes=attributes, links=links
        )
        ctx = trace.set_span_in_context(span, attach_base)
        self._recv_span = span
        self._recv_ctx = ctx
        self._recv_token = otel_context.attach(ctx)

    # Close -------------------------------------------------------------------

    def closed(
        self,
        *,
        code: Optional[int] = None,
        reason: str = "",
        initiator: Optional[Literal["local", "remote"]] = None,
        error: Optional[BaseException] = None,
    ) -> None:
        """The connection ended. Idempotent.

        ``initiator`` is who sent the first close frame; ``None`` with code
        1006 (or no code) means the TCP connection dropped with no close frame.
        Every open span is ended; an abnormal close marks them as errors.
        """
        if self._closed:
            return
        self._closed = True
        try:
            abnormal = error is not None or initiator is None or code in _ERROR_CLOSE_CODES
            if code is None and initiator is None:
                code = 1006
            message = f"WebSocket closed with code {code}" + (f": {reason}" if reason else "")
            open_recv = self._recv_span
            if open_recv is not None and open_recv.is_recording():
                if abnormal:
                    open_recv.set_status(Status(StatusCode.ERROR, message))
                open_recv.end()
            self._recv_span = None  # the token stays: only the owning context may detach it
            if not self._recording:
                return
            attributes: dict[str, Any] = dict(self._base_attributes)
            attributes[sc.CLOSE_INITIATOR] = initiator or "none"
            if code is not None:
                attributes[sc.CLOSE_CODE] = code
            if reason:
                attributes[sc.CLOSE_REASON] = reason[:123]  # a close reason is at most 123 bytes
            if self._connection is not None:
                span = self._connection
            else:
                span = self._tracer.start_span(
                    f"close {self.route}",
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
