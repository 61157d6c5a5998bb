"""A connection's opening handshake, seen from one side: the base of :class:`~wstrace.connection.ConnectionTracer`.

What every connection has from its upgrade request on: the handshake span (ended at the 101, only its context
kept), the envelope offer and answer and the format in force, the session id, and the times and totals that
its connection metrics need. The events here are the handshake's (``client``/``server``, ``opened``,
``handshake_failed``); the facade adds the messages and the close. The rules are in ``_handshake``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal, Optional, Sequence, TypeVar, Union

from opentelemetry import context as otel_context, trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind

from wstrace import _handshake as hs, semconv as sc
from wstrace._log import warn_once
from wstrace._spans import ConnectionSpans, excluded, mapped_route, route as route_names
from wstrace._wire import Wire, wire_for
from wstrace.carriers import HeaderSource
from wstrace.config import Config, EnvelopeFormat
from wstrace.metrics import Instruments


__all__ = ["Opening", "Side"]

Side = Literal["client", "server"]
_Self = TypeVar("_Self", bound="Opening")


class Opening:
    """The handshake half of a connection's telemetry; :class:`~wstrace.connection.ConnectionTracer` is the whole."""

    # Slots, and no copies of options: thousands of connections may be open, each with one of these.
    # No ``__weakref__``: compiled (docs/architecture.md, "The compiled core") a native class cannot have one, so
    # nothing may take a weak reference to a tracer (the leak tests count live tracers instead).
    __slots__ = (
        "_answer",
        "_closed",
        "_counts",
        "_handshake",
        "_instruments",
        "_offered",
        "_opened_ns",
        "_recording",
        "_spans",
        "_started_ns",
        "_wire",
        "config",
        "excluded",
        "route",
        "side",
    )

    def __init__(
        self,
        side: Side,
        tracer: trace.Tracer,
        config: Config,
        *,
        route: Optional[str],
        session_id: Optional[str] = None,
        instruments: Optional[Instruments] = None,
    ) -> None:
        self.side: Side = side
        self.config = config
        self.route = route
        """The endpoint's route template (``/chat/{id}``), used in span names and ``http.route``;
        ``None`` where neither a framework nor the ``routes`` option names one."""
        self._spans = ConnectionSpans(tracer, config, route_names(route), session_id or uuid.uuid4().hex)
        self._instruments = instruments
        self._counts = instruments.totals.counts(route) if instruments is not None else None
        self._started_ns = time.monotonic_ns()
        self._opened_ns = 0
        self._handshake: Union[Span, SpanContext, None] = None
        """The handshake span until it ends, then only its span context."""
        self._recording = False
        self._offered: Optional[EnvelopeFormat] = None
        self._answer = False
        self._wire: Optional[Wire] = None
        self._closed = False
        self.excluded = False
        """Whether ``excluded_urls`` leaves this connection alone (adapters with traffic of their own to trace,
        such as Socket.IO's events, leave it alone too)."""

    @property
    def session_id(self) -> str:
        """Value of ``websocket.session.id``, shared by both ends when both are instrumented."""
        return self._spans.session_id

    # Handshake ---------------------------------------------------------------

    @classmethod
    def client(
        cls: type[_Self],
        tracer: trace.Tracer,
        config: Config,
        *,
        url: str,
        scheme: str,
        host: Optional[str],
        port: Optional[int],
        path: str,
        instruments: Optional[Instruments] = None,
    ) -> _Self:
        """Start the client's handshake span as a child of the current context."""
        if excluded(config, hs.strip_query(url)):
            return cls._untraced("client", tracer, config)
        self = cls("client", tracer, config, route=mapped_route(config, path), instruments=instruments)
        try:
            attributes = hs.client_attributes(url, scheme, host, port, self.session_id)
            self._handshake = self._spans.start_handshake(otel_context.get_current(), (), attributes, SpanKind.CLIENT)
            self._recording = self._handshake.is_recording()
        except Exception as exc:  # pragma: no cover - defensive
            warn_once("starting the client handshake span", exc)
        return self

    @classmethod
    def _untraced(cls: type[_Self], side: Side, tracer: trace.Tracer, config: Config) -> _Self:
        """A connection the ``excluded_urls`` option leaves alone: closed from the start, so nothing is recorded,
        counted, offered or enveloped."""
        self = cls(side, tracer, config, route=None, session_id="-")
        self._closed = True
        self.excluded = True
        return self

    def request_headers(self) -> dict[str, str]:
        """Headers a client adds to its upgrade request: context, envelope offer, session id."""
        if self._closed:
            return {}
        handshake = self._handshake if isinstance(self._handshake, Span) else None
        headers = hs.request_headers(self.config, handshake, self.session_id)
        if handshake is not None and self._recording and self.config.request_hook is not None:
            self._spans.requested(handshake, list(headers.items()), capture=False)
        return headers

    @classmethod
    def server(
        cls: type[_Self],
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
        instruments: Optional[Instruments] = None,
        start_time: Optional[int] = None,
        nested_in: Optional[SpanContext] = None,
    ) -> _Self:
        """Start the server's handshake span from an upgrade request.

        Context is looked for in the configured handshake sources, in order, and used as the trust
        policy says. ``start_time`` (ns since the epoch) backdates the span, for adapters that learn
        the route late. ``nested_in`` is another instrumentation's SERVER span for this request
        (current at the call): wstrace never writes on it, and its own handshake span is ``INTERNAL``.
        """
        if config.excluded_urls is not None:
            host = f"{server_address}:{server_port}" if server_address and server_port else server_address
            if excluded(config, f"{scheme}://{host}{path}" if host else path):
                return cls._untraced("server", tracer, config)
        self = cls("server", tracer, config, route=route or mapped_route(config, path), instruments=instruments)
        try:
            start = hs.server_start(config, headers, query, subprotocols, nested_in)
            self._offered, self._answer = start.request.offer, start.request.instrumented
            if start.session_id is not None:
                self._spans.session_id = start.session_id
            addresses = (
                (sc.SERVER_ADDRESS, server_address),
                (sc.SERVER_PORT, server_port),
                (sc.CLIENT_ADDRESS, client_address),
                (sc.CLIENT_PORT, client_port),
            )
            attributes = hs.server_attributes(
                method, path, scheme, self.route, self.session_id, start.request.source, addresses
            )
            self._handshake = span = self._spans.start_handshake(
                start.parent, start.links, attributes, start.kind, start_time
            )
            self._recording = span.is_recording()
            if self._recording and (config.request_hook or config.capture_request_headers):
                self._spans.requested(span, hs.header_pairs(headers), capture=True)
        except Exception as exc:
            warn_once("starting the server handshake span", exc)
        return self

    def response_headers(self) -> dict[str, str]:
        """Headers a server adds to its 101 response: the envelope answer and session id, to a client that
        sent a wstrace header; nothing to any other client (an un-instrumented peer sees nothing of wstrace)."""
        if not self._answer:
            return {}
        headers = {sc.SESSION_HEADER: self.session_id}
        if self._offered is not None and self.config.envelope != "off":
            headers[sc.ENVELOPE_HEADER] = hs.offer_header(self._offered)
        return headers

    def opened(
        self, *, response_headers: HeaderSource = (), subprotocol: Optional[str] = None, status: int = 101
    ) -> None:
        """The handshake succeeded: end the handshake span and settle the envelope.

        Pass the *final* response headers on both sides: the envelope is in
        force only if the answer made it into the 101 (a server hook may have
        replaced the response), or if it is forced with ``envelope="always"``.
        """
        if self._closed:  # excluded, or reported failed already
            return
        try:
            config = self.config
            fmt, session = hs.read_response(config, response_headers)
            self._wire = wire_for(config, fmt) if fmt is not None else None
            if self.side == "client" and session is not None:
                self._spans.session_id = session
            self._opened_ns = time.monotonic_ns()
            if self._instruments is not None:  # sampled or not: metrics count every connection
                seconds = (self._opened_ns - self._started_ns) / 1e9
                self._instruments.connection_opened(self._metric_attributes(), seconds)
            self._started_ns = 0  # not needed any more: an idle connection keeps no int for it
            span = self._handshake
            if isinstance(span, Span) and self._recording:
                # From now on only its context is needed (links, handshake_context): let the SDK's span go.
                wanted = config.response_hook or config.capture_response_headers
                pairs = hs.header_pairs(response_headers) if wanted else ()
                self._handshake = self._spans.opened(span, status, fmt, subprotocol, pairs)
        except Exception as exc:
            warn_once("recording the opened connection", exc)

    def handshake_failed(self, *, status: Optional[int] = None, error: Optional[BaseException] = None) -> None:
        """The connection never opened: end the handshake span with what is known."""
        self._closed = True
        span = self._handshake
        if not isinstance(span, Span):
            return
        try:
            if self._recording:
                self._spans.failed(span, self.side == "client", status, error)
            else:
                span.end()
        except Exception as exc:
            warn_once("recording a failed handshake", exc)

    @property
    def envelope(self) -> Optional[EnvelopeFormat]:
        """The envelope format in force once open, or ``None`` for plain frames."""
        return self._wire.format if self._wire is not None else None

    @property
    def handshake_context(self) -> Context:
        """A context holding the handshake span, to parent work done for the connection."""
        handshake = self._handshake
        if handshake is None:
            return Context()
        if isinstance(handshake, SpanContext):
            handshake = NonRecordingSpan(handshake)
        return trace.set_span_in_context(handshake)

    @property
    def handshake_span_context(self) -> Optional[SpanContext]:
        """The handshake span's context, to link to; ``None`` before the handshake (or if it was excluded)."""
        handshake = self._handshake
        if handshake is None or isinstance(handshake, SpanContext):
            return handshake
        return handshake.get_span_context()

    @property
    def connection_context(self) -> Optional[Context]:
        """In the ``connection`` model, a context holding the connection span."""
        return self._spans.connection_ctx

    @property
    def recording(self) -> bool:
        """Whether the handshake was sampled; if not, no spans are made (metrics still count)."""
        return self._recording

    def _metric_attributes(self) -> dict[str, Any]:
        if self.route is None:
            return {sc.SIDE: self.side}
        return {sc.HTTP_ROUTE: self.route, sc.SIDE: self.side}
