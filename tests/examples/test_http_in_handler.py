"""``examples/http_in_handler.py`` over loopback: a WebSocket handler calls an HTTP API (httpx, uvicorn) per message."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import ModuleType
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from tests.conftest import Telemetry
from tests.examples import shapes
from tests.examples.shapes import tree
from tests.instrumentation import contract


HTTPX = "opentelemetry.instrumentation.httpx"
ASGI = "opentelemetry.instrumentation.asgi"


def load_example() -> ModuleType:
    return shapes.load_example("http_in_handler")


def link_kinds(span: ReadableSpan) -> list[str]:
    return sorted(str((lk.attributes or {}).get("wstrace.link.kind")) for lk in span.links)


def http(span: ReadableSpan, stable: str, old: str) -> Any:
    """An HTTP attribute under the stable semantic conventions' name, or the older one (the default in 0.x)."""
    attributes = span.attributes or {}
    return attributes.get(stable, attributes.get(old))


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return sorted((s for s in spans if contract.parent_id(s) == contract.span_id(parent)), key=lambda s: s.name)


def test_the_http_call_is_in_the_message_trace(telemetry: Telemetry) -> None:
    """Two questions, each one trace: the client's ``send``, the server's ``receive`` and, under it, the HTTP
    ``GET`` the handler made (httpx's ``CLIENT`` span, with the API's ``SERVER`` span under it) and the reply
    ``send``, then the client's ``receive`` of the reply. The HTTP spans are in no other trace."""
    example = load_example()
    forecasts = asyncio.run(example.main(telemetry.provider))
    assert forecasts == [example.FORECASTS[c] for c in example.CITIES]
    contract.no_open_spans(telemetry)

    traces: dict[int, list[ReadableSpan]] = defaultdict(list)
    for span in telemetry.spans:
        traces[contract.trace_id(span)].append(span)
    # The handshake and each end's close are traces of their own; one trace per question besides.
    questions = sorted(
        (spans for spans in traces.values() if any(s.name == "send /weather" for s in spans)),
        key=lambda spans: min(s.start_time or 0 for s in spans),
    )
    assert len(traces) == 1 + 2 + len(example.CITIES), [sorted(s.name for s in t) for t in traces.values()]
    assert len(questions) == len(example.CITIES)
    (handshake,) = [spans for spans in traces.values() if any(s.name == "GET /weather" for s in spans)]
    assert tree(handshake) == ("wstrace", "CLIENT", "GET /weather", (("wstrace", "SERVER", "GET /weather", ()),))

    previous_reply: ReadableSpan | None = None
    for city, spans in zip(example.CITIES, questions, strict=True):
        assert tree(spans) == (
            "wstrace",
            "PRODUCER",
            "send /weather",
            (
                (
                    "wstrace",
                    "CONSUMER",
                    "receive /weather",
                    (
                        (HTTPX, "CLIENT", "GET", ((ASGI, "SERVER", f"GET /weather/{city}", ()),)),
                        ("wstrace", "PRODUCER", "send /weather", (("wstrace", "CONSUMER", "receive /weather", ()),)),
                    ),
                ),
            ),
        )
        (asked,) = [s for s in spans if s.parent is None]
        (received,) = children(spans, asked)
        call, reply = children(spans, received)
        (api,) = children(spans, call)
        (read,) = children(spans, reply)
        # The HTTP call: a CLIENT span under the server's receive span, within the handling of the message,
        # before the reply (the handler waited for the API's answer).
        assert call.kind is SpanKind.CLIENT and contract.parent_id(call) == contract.span_id(received)
        assert (received.start_time or 0) <= (call.start_time or 0)
        assert (call.end_time or 0) <= (reply.start_time or 0) <= (received.end_time or 0)
        assert http(call, "http.request.method", "http.method") == "GET"
        assert str(http(call, "url.full", "http.url")).endswith(f"/weather/{city}")
        assert http(call, "http.response.status_code", "http.status_code") == 200
        # The API's SERVER span continues the call (httpx injected the context, the ASGI middleware read it).
        assert api.kind is SpanKind.SERVER and contract.parent_id(api) == contract.span_id(call)
        assert http(api, "http.response.status_code", "http.status_code") == 200
        # wstrace writes nothing on the HTTP spans.
        for span in (call, api):
            assert not [k for k in span.attributes or {} if k.startswith(("websocket.", "wstrace."))], span.name
        # The reply: one message, a stream of one, timed from the question's arrival (the HTTP call included).
        assert reply.attributes["wstrace.stream.chunk_count"] == 1
        call_seconds = ((call.end_time or 0) - (call.start_time or 0)) / 1e9
        assert reply.attributes["wstrace.stream.time_to_first_chunk"] >= call_seconds
        assert read.attributes["wstrace.stream.chunk_count"] == 1
        # Each question is a trace of its own, linked to the answer before it.
        if previous_reply is None:
            assert link_kinds(asked) == ["handshake"]
        else:
            assert link_kinds(asked) == ["handshake", "previous"]
            assert contract.linked_to(asked, previous_reply)
        previous_reply = read

    # Every HTTP span is in a question's trace: one call and one API request per question.
    http_spans = [s for s in telemetry.spans if s.instrumentation_scope.name in (HTTPX, ASGI)]
    assert len(http_spans) == 2 * len(example.CITIES)
    assert {contract.trace_id(s) for s in http_spans} == {contract.trace_id(spans[0]) for spans in questions}
