"""Every adapter against an un-instrumented websockets peer (``tests/peers/bare.py``, in its own process).

An instrumented client meets a bare server, and a bare client meets an instrumented server, over real loopback
connections. The bare end must get every payload byte for byte, envelope look-alikes included: the instrumented
end falls back to plain frames (``websocket.envelope`` is ``none``) and still records its handshake and message
spans; an instrumented client still sends its handshake ``traceparent``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.trace import SpanKind

from tests.conftest import Telemetry
from tests.instrumentation import aiohttp_app, contract, tornado_app, uvicorn_server
from tests.instrumentation.peers import CLIENTS, websockets_server
from wstrace.instrumentation.aiohttp import AiohttpInstrumentor
from wstrace.instrumentation.asgi import WstraceASGIMiddleware
from wstrace.instrumentation.starlette import StarletteInstrumentor
from wstrace.instrumentation.tornado import TornadoInstrumentor
from wstrace.instrumentation.websocket_client import WebsocketClientInstrumentor
from wstrace.instrumentation.websockets import WebsocketsInstrumentor


ROUTE = "/chat"  # the bare server's path, and the instrumented servers' unless a case says otherwise
PAYLOADS: list[str | bytes] = [
    "hello",
    b"\x00\x01",
    "\x1ewt1\x1e",  # a text envelope look-alike
    b"\x1ewt\x01\x00\x00",  # binary envelope look-alikes
    b"\x1ewt\x01\x00\x00x",
    '{"x":[1,2]}',
    "",
]


def types(payloads: list[str | bytes]) -> list[str]:
    return ["binary" if isinstance(p, bytes) else "text" for p in payloads]


async def settle(telemetry: Telemetry) -> None:
    """Both ends record their close a moment after the replies are back."""
    for _ in range(150):
        if not telemetry.open_spans.names():
            return
        await asyncio.sleep(0.02)


# Instrumented clients against the bare server ----------------------------------------------


CLIENT_CASES: dict[str, tuple[type[BaseInstrumentor], str]] = {  # the instrumentor, and its client in CLIENTS
    "aiohttp": (AiohttpInstrumentor, "aiohttp"),
    "tornado": (TornadoInstrumentor, "tornado"),
    "websockets": (WebsocketsInstrumentor, "websockets-asyncio"),
    "websocket-client": (WebsocketClientInstrumentor, "websocket-client"),
}


@pytest.mark.parametrize("adapter", list(CLIENT_CASES))
def test_instrumented_client_against_bare_server(telemetry: Telemetry, bare_server: Any, adapter: str) -> None:
    """The bare server receives byte-identical payloads and the handshake's traceparent; the client records
    every send and receive, with no envelope."""
    instrumentor_class, client = CLIENT_CASES[adapter]
    instrumentor = instrumentor_class()
    instrumentor.instrument(tracer_provider=telemetry.provider, envelope="negotiate")
    peer = bare_server()
    try:

        async def scenario() -> list[Any]:
            replies = await CLIENTS[client](peer.url, PAYLOADS)
            await settle(telemetry)
            return replies

        assert asyncio.run(scenario()) == PAYLOADS
    finally:
        instrumentor.uninstrument()
    assert peer.received(len(PAYLOADS)) == PAYLOADS
    client_hs = telemetry.one(f"GET {ROUTE}")
    assert client_hs is contract.handshake(telemetry, ROUTE, SpanKind.CLIENT)
    assert client_hs.attributes["websocket.envelope"] == "none"
    _, trace_id, parent_id, _ = peer.opened()["traceparent"].split("-")
    assert trace_id == f"{contract.trace_id(client_hs):032x}"
    assert parent_id == f"{contract.span_id(client_hs):016x}", "the handshake span is the server's parent"
    assert len(telemetry.named(f"send {ROUTE}")) == len(telemetry.named(f"receive {ROUTE}")) == len(PAYLOADS)
    contract.messages(telemetry, ROUTE, "send", client_hs, types(PAYLOADS))
    contract.messages(telemetry, ROUTE, "receive", client_hs, types(PAYLOADS))
    contract.no_open_spans(telemetry)


# The bare client against instrumented servers ----------------------------------------------


Server = Callable[[Telemetry], AbstractAsyncContextManager[str]]
"""Starts an instrumented echo server (``Telemetry``: for a server traced by hand) and yields its URL."""


def in_loop(start: Callable[[], AbstractAsyncContextManager[str]]) -> Server:
    return lambda telemetry: start()


def uvicorn(app: Callable[[Telemetry], Any], path: str) -> Server:
    """``app(telemetry)`` under a real uvicorn, in a thread of its own; yields the URL of ``path``."""

    @asynccontextmanager
    async def server(telemetry: Telemetry) -> AsyncIterator[str]:
        with uvicorn_server.serve(app(telemetry)) as base:
            yield base + path

    return server


def fastapi_app(telemetry: Telemetry) -> FastAPI:
    """A FastAPI app whose ``/items/{item_id}`` answers each JSON object with ``item_id`` added."""
    app = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})  # FastAPI's own spans: off

    @app.websocket("/items/{item_id}")
    async def item(websocket: WebSocket, item_id: int) -> None:
        await websocket.accept()
        try:
            while True:
                await websocket.send_json({"item": item_id, **await websocket.receive_json()})
        except WebSocketDisconnect:
            pass

    return app


@dataclass(frozen=True)
class ServerCase:
    server: Server
    instrumentor: type[BaseInstrumentor] | None
    """None: the server instruments itself (the ASGI middleware)."""
    route: str = ROUTE
    """The route template that names the spans."""
    path: str | None = None
    """The path the client asks for, when not the route."""
    payloads: list[str | bytes] = field(default_factory=lambda: PAYLOADS)
    replies: Callable[[list[Any]], list[Any]] = list
    """The replies the bare client must get, made from what it received (default: the payloads, as sent)."""
    expected: list[Any] | None = None
    """Those replies (default: the payloads)."""


SERVER_CASES = {
    "aiohttp": ServerCase(in_loop(lambda: aiohttp_app.server(aiohttp_app.echo, ROUTE)), AiohttpInstrumentor),
    "tornado": ServerCase(in_loop(lambda: tornado_app.server(tornado_app.Echo, ROUTE)), TornadoInstrumentor),
    "websockets": ServerCase(in_loop(websockets_server), WebsocketsInstrumentor, route="/matrix"),
    "asgi": ServerCase(
        uvicorn(lambda t: WstraceASGIMiddleware(uvicorn_server.starlette_app(), tracer_provider=t.provider), ROUTE),
        None,
    ),
    "starlette": ServerCase(uvicorn(lambda t: uvicorn_server.starlette_app(), ROUTE), StarletteInstrumentor),
    "fastapi": ServerCase(
        uvicorn(fastapi_app, "/items/5"),
        StarletteInstrumentor,
        route="/items/{item_id}",
        path="/items/5",
        payloads=['{"a": "\\u001ewt1\\u001e"}', '{"b": 2}'],  # a look-alike the app's JSON decoding reveals
        replies=lambda replies: [json.loads(r) for r in replies],
        expected=[{"item": 5, "a": "\x1ewt1\x1e"}, {"item": 5, "b": 2}],
    ),
}


@pytest.fixture(params=list(SERVER_CASES))
def server_case(request: pytest.FixtureRequest, telemetry: Telemetry) -> Iterator[ServerCase]:
    case = SERVER_CASES[request.param]
    instrumentor = case.instrumentor() if case.instrumentor else None
    if instrumentor:
        instrumentor.instrument(tracer_provider=telemetry.provider, envelope="negotiate")
    yield case
    if instrumentor:
        instrumentor.uninstrument()


def test_bare_client_against_instrumented_server(
    telemetry: Telemetry, bare_client: Any, server_case: ServerCase
) -> None:
    """The bare client gets byte-identical replies; the server falls back to plain frames, records each receive
    and the client's close."""
    case = server_case

    async def scenario() -> list[Any]:
        async with case.server(telemetry) as url:
            replies = await asyncio.to_thread(bare_client, url, case.payloads)
            await settle(telemetry)
        await settle(telemetry)
        return replies

    assert case.replies(asyncio.run(scenario())) == (case.payloads if case.expected is None else case.expected)
    if case.path is None:
        server_hs = contract.handshake(telemetry, case.route, SpanKind.SERVER)
    else:  # contract.handshake expects the path to be the route
        server_hs = telemetry.one(f"GET {case.route}", **{"url.path": case.path})
        assert server_hs.kind is SpanKind.SERVER
    assert [s.kind for s in telemetry.spans if s.name.startswith("GET ")] == [SpanKind.SERVER]
    assert server_hs.attributes["websocket.envelope"] == "none"
    contract.messages(telemetry, case.route, "receive", server_hs, types(case.payloads))
    contract.messages(telemetry, case.route, "send", server_hs, types(case.payloads))
    close = telemetry.one(f"close {case.route}")
    assert close.attributes["websocket.close.initiator"] == "remote"
    assert close.attributes["websocket.close.code"] == 1000
    contract.no_open_spans(telemetry)
