"""``examples/fastapi_lifespan.py`` over loopback: uvicorn on a free port, an instrumented websockets client."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind
from websockets.asyncio.client import connect

from tests.conftest import Telemetry
from tests.examples import shapes
from tests.examples.shapes import Node, count, tree
from tests.instrumentation import contract
from tests.instrumentation.uvicorn_server import serve, settle
from wstrace.instrumentation.websockets import WebsocketsInstrumentor


WSTRACE_KEYS = ("websocket.", "wstrace.", "http.response.status_code", "messaging.")


def load_example() -> ModuleType:
    return shapes.load_example("fastapi_lifespan")


@pytest.fixture
def client(telemetry: Telemetry) -> Iterator[None]:
    instrumentor = WebsocketsInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    yield
    instrumentor.uninstrument()


async def chat(url: str, lines: list[str]) -> list[Any]:
    async with connect(url) as ws:
        replies = []
        for line in lines:
            await ws.send(line)
            replies.append(await ws.recv())
        return replies


def test_example_trace_shape(telemetry: Telemetry, client: None) -> None:
    """One connection of two messages: a handshake trace, a trace per message and its reply, a root per close."""
    example = load_example()
    with serve(example.make_app(telemetry.provider)) as base:
        replies = asyncio.run(chat(f"{base}/chat/lobby", ["hi", "bye"]))
        settle(telemetry)
    assert replies == ["lobby: hi", "lobby: bye"]
    traces: dict[int, list[ReadableSpan]] = defaultdict(list)
    for span in telemetry.spans:
        traces[contract.trace_id(span)].append(span)
    shapes = sorted((tree(spans) for spans in traces.values()), key=count, reverse=True)
    assert len(shapes) == 5, shapes
    handshake, first, second, close_a, close_b = shapes
    # The upgrade: the client's span, FastAPI's SERVER span with its own operation spans, and wstrace's
    # handshake span inside it (ended at 101; FastAPI's spans last as long as the connection).
    assert handshake == (
        "wstrace",
        "CLIENT",
        "GET /chat/lobby",
        (
            (
                "fastapi",
                "SERVER",
                "WS /chat/{room}",
                (
                    ("wstrace", "INTERNAL", "GET /chat/{room}", ()),
                    ("fastapi", "INTERNAL", "fastapi.dependencies", ()),
                    ("fastapi", "INTERNAL", "fastapi.endpoint", ()),
                ),
            ),
        ),
    )

    # Each message: sent, received, the reply sent, the reply received, one trace through the envelope. The
    # client sends its second message while the first reply is still current, and it still starts a trace of
    # its own (a new request), linked to the exchange before it.
    def message() -> Node:
        reply = ("wstrace", "CONSUMER", "receive /chat/lobby", ())
        server_reply = ("wstrace", "PRODUCER", "send /chat/{room}", (reply,))
        received = ("wstrace", "CONSUMER", "receive /chat/{room}", (server_reply,))
        return ("wstrace", "PRODUCER", "send /chat/lobby", (received,))

    assert first == second == message()
    prompts = sorted(
        (s for s in telemetry.named("send /chat/lobby") if s.parent is None), key=lambda s: s.start_time or 0
    )
    kinds = [sorted(str((lk.attributes or {}).get("wstrace.link.kind")) for lk in p.links) for p in prompts]
    assert kinds == [["handshake"], ["handshake", "previous"]]
    # Each end's close is a root of its own, linked to its handshake (the message model).
    assert {close_a, close_b} == {
        ("wstrace", "INTERNAL", "close /chat/lobby", ()),
        ("wstrace", "INTERNAL", "close /chat/{room}", ()),
    }
    fastapi_spans = [s for s in telemetry.spans if s.instrumentation_scope.name == "fastapi"]
    for span in fastapi_spans:
        assert not [k for k in (span.attributes or {}) if k.startswith(WSTRACE_KEYS)], (span.name, span.attributes)
    (server,) = [s for s in fastapi_spans if s.kind is SpanKind.SERVER]
    assert server.attributes["http.route"] == "/chat/{room}"  # FastAPI's own
    # wstrace's handshake span carries wstrace's attributes, and ended before the first message arrived.
    (ours,) = [s for s in telemetry.named("GET /chat/{room}")]
    assert ours.attributes["http.response.status_code"] == 101
    assert ours.attributes["websocket.envelope"] == "frame"
    assert ours.end_time < min(s.start_time for s in telemetry.named("receive /chat/{room}"))
    contract.no_open_spans(telemetry)
