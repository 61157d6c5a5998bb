"""A hand-written minimal instrumentation: the spans wstrace makes on a server, with the raw OpenTelemetry API.

It is the yardstick for wstrace's own cost: the same spans (names, kinds, parents, links and attributes) as
wstrace's ``message`` and ``connection`` models on the server side, and the same envelope on the wire, with
nothing else (no metrics, no stream bookkeeping, no error handling, no configuration). Whatever a wstrace
variant costs on top of this one, in the same run, is wstrace's own cost.

Used by the ``minimal`` server variants (``benchmarks/server.py``) and by ``benchmarks/micro.py``. It imports
nothing from wstrace: the envelope codec below is written out by hand.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Optional
from urllib.parse import quote, unquote

from opentelemetry import context as otel_context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind


__all__ = ["MinimalConnection"]

_TEXT_MAGIC = "\x1ewt1"
_SEP = "\x1e"
_BINARY_MAGIC = b"\x1ewt\x01"
_OFFSET_NS = time.time_ns() - time.monotonic_ns()


def _encode_header(carrier: dict[str, str]) -> str:
    return "&".join(f"{key}={quote(value, safe='')}" for key, value in carrier.items())


def _decode(wire: Any) -> tuple[Any, Optional[dict[str, str]]]:
    """Strip a text or binary envelope; anything else comes back unchanged."""
    payload: Any
    if isinstance(wire, str):
        if not wire.startswith(_TEXT_MAGIC):
            return wire, None
        end = wire.find(_SEP, 4)
        if end < 0:
            return wire, None
        header, payload = wire[4:end], wire[end + 1 :]
    elif isinstance(wire, bytes) and wire.startswith(_BINARY_MAGIC) and len(wire) >= 6:
        size = int.from_bytes(wire[4:6], "big")
        header, payload = wire[6 : 6 + size].decode("ascii"), wire[6 + size :]
    else:
        return wire, None
    carrier = {}
    for item in header.split("&") if header else ():
        key, _, value = item.partition("=")
        carrier[key] = unquote(value)
    return payload, carrier


def _encode(payload: Any, carrier: dict[str, str]) -> Any:
    header = _encode_header(carrier)
    if isinstance(payload, str):
        return f"{_TEXT_MAGIC}{header}{_SEP}{payload}"
    raw = header.encode("ascii")
    return b"".join((_BINARY_MAGIC, len(raw).to_bytes(2, "big"), raw, payload))


class MinimalConnection:
    """One server connection's spans, as wstrace would make them.

    ``received(wire)`` starts the ``receive`` CONSUMER span (parent: the sender's context from the envelope,
    or a new trace; in the ``connection`` model the connection span) and makes it current until
    ``receive_done()``. ``send_start(payload)`` starts the ``send`` PRODUCER span, a child of the current
    context, and returns the frame to put on the wire; ``send_end`` ends the span with the one-chunk stream
    summary wstrace records on a reply.
    """

    __slots__ = (
        "_base",
        "_connection_ctx",
        "_handshake",
        "_links",
        "_receive_name",
        "_received",
        "_recv",
        "_send_name",
        "_sent",
        "envelope",
        "tracer",
    )

    def __init__(self, tracer: trace.Tracer, route: str, *, model: str = "message", envelope: bool = False) -> None:
        self.tracer = tracer
        self.envelope = envelope
        session = uuid.uuid4().hex
        self._handshake = tracer.start_span(
            f"GET {route}",
            kind=SpanKind.SERVER,
            attributes={"http.request.method": "GET", "url.path": route, "http.route": route},
        )
        self._handshake.end()
        self._base = {"network.protocol.name": "websocket", "websocket.session.id": session}
        self._links = [Link(self._handshake.get_span_context(), {"wstrace.link.kind": "handshake"})]
        self._connection_ctx: Optional[Context] = None
        if model == "connection":
            connection = tracer.start_span(
                f"websocket {route}",
                context=trace.set_span_in_context(self._handshake),
                kind=SpanKind.INTERNAL,
                attributes=self._base,
            )
            self._connection_ctx = trace.set_span_in_context(connection)
            self._links = []
        self._send_name = f"send {route}"
        self._receive_name = f"receive {route}"
        self._sent = 0
        self._received = 0
        self._recv: Optional[tuple[Span, object, int]] = None

    def received(self, wire: Any) -> Any:
        payload, carrier = _decode(wire) if self.envelope else (wire, None)
        self._received += 1
        parent = propagate.extract(carrier, context=Context()) if carrier else Context()
        links = self._links
        if self._connection_ctx is not None:
            if carrier:
                remote = trace.get_current_span(parent).get_span_context()
                links = [Link(remote, {"wstrace.link.kind": "creation"})]
            parent = self._connection_ctx
        is_text = isinstance(payload, str)
        span = self.tracer.start_span(
            self._receive_name,
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                **self._base,
                "websocket.message.type": "text" if is_text else "binary",
                "websocket.message.ordinal": self._received,
                "messaging.message.body.size": len(payload),
            },
            links=links,
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent if carrier else None))
        self._recv = (span, token, time.monotonic_ns())
        return payload

    def receive_done(self) -> None:
        recv, self._recv = self._recv, None
        if recv is not None:
            otel_context.detach(recv[1])  # type: ignore[arg-type]
            recv[0].end()

    def send_start(self, payload: Any) -> tuple[Any, Span]:
        self._sent += 1
        is_text = isinstance(payload, str)
        span = self.tracer.start_span(
            self._send_name,
            kind=SpanKind.PRODUCER,
            attributes={
                **self._base,
                "websocket.message.type": "text" if is_text else "binary",
                "websocket.message.ordinal": self._sent,
            },
            links=self._links if self._connection_ctx is None else (),
        )
        if self.envelope:
            carrier: dict[str, str] = {}
            propagate.inject(carrier, context=trace.set_span_in_context(span))
            payload = _encode(payload, carrier)
        return payload, span

    def send_end(self, span: Span, size: int) -> None:
        now = time.monotonic_ns()
        start = self._recv[2] if self._recv is not None else now
        ttfc = (now - start) / 1e9
        span.set_attributes(
            {
                "wstrace.stream.chunk_count": 1,
                "wstrace.stream.size": size,
                "wstrace.stream.time_to_first_chunk": ttfc,
                "wstrace.stream.time_to_last_chunk": ttfc,
                "wstrace.stream.stalls": 0,
                "messaging.message.body.size": size,
            }
        )
        span.end(end_time=now + _OFFSET_NS)

    def send_span(self, payload: Any) -> tuple[Any, Span]:
        """A send span of its own, with the message size (wstrace with ``streams=off``)."""
        self._sent += 1
        is_text = isinstance(payload, str)
        span = self.tracer.start_span(
            self._send_name,
            kind=SpanKind.PRODUCER,
            attributes={
                **self._base,
                "websocket.message.type": "text" if is_text else "binary",
                "websocket.message.ordinal": self._sent,
                "messaging.message.body.size": len(payload),
            },
            links=self._links if self._connection_ctx is None else (),
            context=self._connection_ctx,
        )
        if self.envelope:
            carrier: dict[str, str] = {}
            propagate.inject(carrier, context=trace.set_span_in_context(span))
            payload = _encode(payload, carrier)
        return payload, span
