"""Every instrumented Socket.IO client against every instrumented Socket.IO server, on loopback.

The servers are one ``socketio.AsyncServer`` attached to aiohttp and one mounted as an ASGI app under uvicorn; the
clients are ``socketio.AsyncClient`` over the WebSocket transport, over long-polling only, and long-polling
upgraded to WebSocket (``peers.SOCKETIO_SERVERS``, ``peers.SOCKETIO_CLIENTS``). Every adapter is instrumented, as
in an application that uses several: the WebSocket-level adapters must stand down on engine.io's connections.

Each pair must show the same event-span shape in one trace: the server's handshake continues the client's; each
emit is a PRODUCER span whose handler, on the other end, is its CONSUMER child; an ack runs in an ``ack`` span in
the emit's trace; what a handler emits or calls is a child of the handler; and the events and acks arrive
unchanged, without the carrier.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from tests.conftest import Telemetry
from tests.instrumentation import contract
from tests.instrumentation.peers import INSTRUMENTORS, SOCKETIO_ANSWER, SOCKETIO_CLIENTS, SOCKETIO_SERVERS
from tests.instrumentation.socketio_app import check_server_addresses


ROUTE = "/socket.io/"
"""engine.io's path, a route of the suite's ``WSTRACE_ROUTES`` (tests/routes.py)."""


@pytest.fixture
def instrumented(telemetry: Telemetry) -> Iterator[Telemetry]:
    instrumentors = [cls() for cls in INSTRUMENTORS]
    for instrumentor in instrumentors:
        instrumentor.instrument(tracer_provider=telemetry.provider)
    yield telemetry
    for instrumentor in instrumentors:
        instrumentor.uninstrument()


def exchange(telemetry: Telemetry, client: str, server: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The client's script against the server, inside a ``job`` span; what the client got, what the handlers
    recorded."""
    tracer = telemetry.provider.get_tracer("test")

    async def scenario() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        async with SOCKETIO_SERVERS[server]() as (url, records):
            with tracer.start_as_current_span("job"):
                got = await SOCKETIO_CLIENTS[client](url)
            for _ in range(150):  # the server records the disconnect a moment later
                if not telemetry.open_spans.names():
                    break
                await asyncio.sleep(0.02)
        return got, records

    return asyncio.run(scenario())


def one(telemetry: Telemetry, name: str, kind: SpanKind) -> ReadableSpan:
    spans = [s for s in telemetry.named(name) if s.kind is kind]
    assert len(spans) == 1, f"expected one {kind.name} {name!r}, got {sorted(s.name for s in telemetry.spans)}"
    return spans[0]


def child(parent: ReadableSpan, span: ReadableSpan) -> None:
    assert contract.parent_id(span) == contract.span_id(parent), f"{span.name} is not a child of {parent.name}"


@pytest.mark.parametrize("server", sorted(SOCKETIO_SERVERS))
@pytest.mark.parametrize("client", sorted(SOCKETIO_CLIENTS))
def test_pair(instrumented: Telemetry, client: str, server: str) -> None:
    """One trace from the client's job through every emit, handler and ack, both ways; events and acks
    unchanged; one session id; no WebSocket-level span on engine.io's connection."""
    telemetry = instrumented
    got, records = exchange(telemetry, client, server)
    assert got["acks"] == [({"a": 1}, "two"), SOCKETIO_ANSWER]
    assert got["received"] == [("echoed", [{"a": 1}, "two"]), ("question", ["why?"])]
    assert got["transport"] == ("polling" if client == "async-polling" else "websocket")
    assert [(r["event"], r.get("args", r.get("answer"))) for r in records if r["event"] != "connect"] == [
        ("echo", [{"a": 1}, "two"]),
        ("ask", SOCKETIO_ANSWER),
    ]

    job = telemetry.one("job")
    client_hs = one(telemetry, f"GET {ROUTE}", SpanKind.CLIENT)
    server_hs = one(telemetry, f"GET {ROUTE}", SpanKind.SERVER)
    child(job, client_hs)
    child(client_hs, server_hs)
    session = client_hs.attributes["websocket.session.id"]
    assert contract.SESSION_ID.match(str(session)) and server_hs.attributes["websocket.session.id"] == session
    # A connection that starts with a polling request (the default) answers it 200; over WebSocket, 101.
    status = 101 if client == "async-websocket" else 200
    assert server_hs.attributes["url.path"] == ROUTE and server_hs.attributes["http.response.status_code"] == status
    assert server_hs.attributes["client.address"] == "127.0.0.1"

    # Client → server: echo, acked; the handler's emit reaches the client's handler.
    send_echo = one(telemetry, "send echo /", SpanKind.PRODUCER)
    process_echo = one(telemetry, "process echo /", SpanKind.CONSUMER)
    ack_echo = one(telemetry, "ack echo /", SpanKind.CONSUMER)
    send_echoed = one(telemetry, "send echoed /", SpanKind.PRODUCER)
    process_echoed = one(telemetry, "process echoed /", SpanKind.CONSUMER)
    child(job, send_echo)
    child(send_echo, process_echo)
    child(send_echo, ack_echo)  # the reply belongs to the request's trace
    child(process_echo, send_echoed)
    child(send_echoed, process_echoed)
    assert [r["span_id"] for r in records if r["event"] == "echo"] == [contract.span_id(process_echo)]
    assert send_echoed.attributes["wstrace.socketio.recipients"] == 1

    # Client → server: ask; its handler calls the client (question), whose answer is acked on the server.
    send_ask = one(telemetry, "send ask /", SpanKind.PRODUCER)
    process_ask = one(telemetry, "process ask /", SpanKind.CONSUMER)
    send_question = one(telemetry, "send question /", SpanKind.PRODUCER)
    process_question = one(telemetry, "process question /", SpanKind.CONSUMER)
    ack_question = one(telemetry, "ack question /", SpanKind.CONSUMER)
    ack_ask = one(telemetry, "ack ask /", SpanKind.CONSUMER)
    child(job, send_ask)
    child(send_ask, process_ask)
    child(process_ask, send_question)
    child(send_question, process_question)
    child(send_question, ack_question)
    child(send_ask, ack_ask)
    assert [r["span_id"] for r in records if r["event"] == "ask"] == [contract.span_id(process_ask)]

    events = [s for s in telemetry.spans if (s.attributes or {}).get("messaging.system") == "socket.io"]
    assert len(events) == 11
    for span in events:
        attributes = span.attributes or {}
        assert attributes["messaging.socket.io.namespace"] == "/"
        assert span.name.split()[1] == attributes["messaging.socket.io.event_name"]
    # Handlers and the client's emits and acks carry the session id (docs/adapters/socketio.md, Attributes).
    for span in (process_echo, process_echoed, process_ask, process_question, send_echo, send_ask, ack_echo, ack_ask):
        assert (span.attributes or {})["websocket.session.id"] == session, span.name
    assert {contract.trace_id(s) for s in telemetry.spans if s.name != f"close {ROUTE}"} == {contract.trace_id(job)}

    closes = telemetry.named(f"close {ROUTE}")
    assert sorted(str((s.attributes or {})["websocket.close.initiator"]) for s in closes) == ["local", "remote"]
    assert {(s.attributes or {})["websocket.close.code"] for s in closes} == {1000}
    # The WebSocket adapters (aiohttp, ASGI) stood down: no frame-level span, no envelope.
    assert not [s.name for s in telemetry.spans if "websocket.message.type" in (s.attributes or {})]
    assert {(s.attributes or {})["websocket.envelope"] for s in (client_hs, server_hs)} == {"none"}
    contract.no_open_spans(telemetry)


@pytest.mark.parametrize("server", sorted(SOCKETIO_SERVERS))
def test_server_handshake_names_the_server(instrumented: Telemetry, server: str) -> None:
    """The server's handshake span has the address and port the client connected to, and the client's port."""
    exchange(instrumented, "async-websocket", server)
    check_server_addresses(instrumented)
