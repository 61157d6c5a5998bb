"""The one definition of what every adapter must record for the same traffic.

Adapter tests call these instead of repeating attribute checks, so that all
adapters are held to the same span names, kinds and attributes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from tests.conftest import Telemetry


SESSION_ID = re.compile(r"[0-9a-f]{32}\Z")


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent else None


def span_id(span: ReadableSpan) -> int:
    return span.get_span_context().span_id


def trace_id(span: ReadableSpan) -> int:
    return span.get_span_context().trace_id


def linked_to(span: ReadableSpan, target: ReadableSpan) -> bool:
    """Whether ``span`` has a link to ``target``."""
    return any(link.context.span_id == span_id(target) for link in span.links)


def side(telemetry: Telemetry, kind: SpanKind, route: str = "/chat") -> ReadableSpan:
    """The first handshake span of one end (CLIENT or SERVER) on ``route``."""
    return next(s for s in telemetry.named(f"GET {route}") if s.kind is kind)


def handshake(telemetry: Telemetry, route: str, kind: SpanKind, path: str | None = None) -> ReadableSpan:
    """The one handshake span of ``kind`` (CLIENT or SERVER), checked for the common attributes; a server's
    ``url.path`` is ``path``, by default the route (a Django route has no leading ``/``, its path has)."""
    spans = [s for s in telemetry.named(f"GET {route}") if s.kind is kind]
    assert len(spans) == 1, f"expected one {kind.name} handshake for {route}, got {[s.name for s in telemetry.spans]}"
    span = spans[0]
    attributes = span.attributes or {}
    assert attributes["http.request.method"] == "GET"
    assert attributes["http.response.status_code"] == 101
    assert SESSION_ID.match(str(attributes["websocket.session.id"]))
    assert attributes["websocket.envelope"] in ("frame", "json", "none")
    assert attributes["url.scheme"] in ("ws", "wss", "http", "https")
    if kind is SpanKind.SERVER:
        assert attributes["url.path"] == (path or route)
    else:
        assert str(attributes["url.full"]).endswith(route)
    assert span.end_time is not None
    return span


def messages(
    telemetry: Telemetry, route: str, operation: str, session: ReadableSpan, types: Sequence[str]
) -> list[ReadableSpan]:
    """The ``send``/``receive`` spans of one side of a connection, in order (``message`` model).

    A side's message spans are those linked to its handshake span ``session``.
    Checks kind, the shared attributes, ordinals 1..n and the message types.
    """
    session_id = (session.attributes or {})["websocket.session.id"]
    spans = [
        s
        for s in telemetry.named(f"{operation} {route}")
        if any(link.context.span_id == span_id(session) for link in s.links)
    ]
    spans.sort(key=lambda s: int((s.attributes or {})["websocket.message.ordinal"]))  # type: ignore[call-overload]
    assert len(spans) == len(types), f"expected {len(types)} {operation} spans, got {len(spans)}"
    for n, (span, kind_of_message) in enumerate(zip(spans, types, strict=True), start=1):
        attributes = span.attributes or {}
        assert span.kind is _kind(operation)
        assert attributes["network.protocol.name"] == "websocket"
        assert attributes["websocket.session.id"] == session_id
        assert attributes["websocket.message.ordinal"] == n
        assert attributes["websocket.message.type"] == kind_of_message
        assert isinstance(attributes["messaging.message.body.size"], int)
        assert "http.response.status_code" not in attributes, "message spans never carry an HTTP status"
    return spans


def continued(sent: Sequence[ReadableSpan], received: Sequence[ReadableSpan]) -> None:
    """Each received span continues the sent span of the same ordinal (envelope propagation)."""
    assert len(sent) == len(received)
    for send, receive in zip(sent, received, strict=True):
        assert parent_id(receive) == span_id(send), "the receiver did not continue the sender's span"
        assert (receive.attributes or {})["messaging.message.body.size"] == (send.attributes or {})[
            "messaging.message.body.size"
        ]


def no_open_spans(telemetry: Telemetry) -> None:
    assert telemetry.open_spans.names() == [], f"spans left open: {telemetry.open_spans.names()}"


def _kind(operation: str) -> SpanKind:
    return SpanKind.PRODUCER if operation == "send" else SpanKind.CONSUMER


def metrics(reader: InMemoryMetricReader, route: str, exchanges: int, server_route: str | None = None) -> None:
    """Both ends of one connection that made ``exchanges`` request/reply round trips recorded their metrics
    (the server's under ``server_route`` where its route differs from the client's)."""
    routes = {route, server_route or route}
    points: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(
                    p for p in metric.data.data_points if p.attributes.get("http.route") in routes
                )

    def by(name: str, key: str) -> dict[Any, int]:
        found: dict[Any, int] = {}
        for point in points.get(name, []):
            value = point.count if hasattr(point, "count") else point.value
            found[point.attributes[key]] = found.get(point.attributes[key], 0) + value
        return found

    assert by("wstrace.handshake.duration", "websocket.side") == {"client": 1, "server": 1}
    assert by("wstrace.connection.duration", "websocket.side") == {"client": 1, "server": 1}
    assert by("wstrace.connection.active", "websocket.side") == {"client": 0, "server": 0}
    # Counters carry no side: each end sent and received every payload once.
    assert by("wstrace.message.count", "websocket.message.direction") == {
        "sent": 2 * exchanges,
        "received": 2 * exchanges,
    }
    # The server's replies and the client's received replies: one response time each.
    assert by("wstrace.stream.time_to_first_chunk", "wstrace.stream.direction") == {
        "outbound": exchanges,
        "inbound": exchanges,
    }
