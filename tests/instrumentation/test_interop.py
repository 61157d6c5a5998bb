"""Every instrumented client against every instrumented server, on loopback.

Each pair must show the same thing: the server's handshake continues the client's, a client send continues on
the server's receive and the server's reply continues on the client's receive (the envelope, both ways), text
and binary payloads arrive byte for byte, and both sides record the same span names and attributes (checked by
the one shared contract).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
import websocket
from fastapi import FastAPI, WebSocket
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.trace import SpanKind
from websockets.asyncio.client import connect as async_connect
from websockets.asyncio.server import serve
from websockets.sync.client import connect as sync_connect

from tests.conftest import Telemetry
from tests.instrumentation import aiohttp_app, contract, tornado_app, uvicorn_server
from wstrace.instrumentation.aiohttp import AiohttpInstrumentor
from wstrace.instrumentation.starlette import StarletteInstrumentor
from wstrace.instrumentation.tornado import TornadoInstrumentor
from wstrace.instrumentation.websocket_client import WebsocketClientInstrumentor
from wstrace.instrumentation.websockets import WebsocketsInstrumentor


PAYLOADS: list[str | bytes] = ["hello", b"\x00\x01binary\xff", "\x1ewt1\x1elook-alike", '{"json": [1, 2]}']
TYPES = ["binary" if isinstance(p, bytes) else "text" for p in PAYLOADS]
ROUTE = "/matrix"

Server = Callable[[], "asynccontextmanager[str]"]
Client = Callable[[str, list[str | bytes]], Awaitable[list[Any]]]


# Servers: each echoes every message back, on ROUTE, and yields its URL. ---------------------------


@asynccontextmanager
async def websockets_server() -> AsyncIterator[str]:
    async def echo(ws: Any) -> None:
        async for message in ws:
            await ws.send(message)

    async with serve(echo, "127.0.0.1", 0) as srv:
        yield f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}{ROUTE}"


@asynccontextmanager
async def aiohttp_server() -> AsyncIterator[str]:
    async with aiohttp_app.server(aiohttp_app.echo, ROUTE) as url:
        yield url


@asynccontextmanager
async def starlette_server() -> AsyncIterator[str]:
    with uvicorn_server.serve(uvicorn_server.starlette_app([(ROUTE, uvicorn_server.echo)])) as base:
        yield base + ROUTE


@asynccontextmanager
async def fastapi_server() -> AsyncIterator[str]:
    app = FastAPI()

    @app.websocket(ROUTE)
    async def matrix(ws: WebSocket) -> None:
        await uvicorn_server.echo(ws)

    with uvicorn_server.serve(app) as base:
        yield base + ROUTE


@asynccontextmanager
async def tornado_server() -> AsyncIterator[str]:
    async with tornado_app.server(tornado_app.Echo, ROUTE) as url:
        yield url


SERVERS: dict[str, Callable[[], Any]] = {
    "websockets": websockets_server,
    "aiohttp": aiohttp_server,
    "starlette-uvicorn": starlette_server,
    "fastapi-uvicorn": fastapi_server,
    "tornado": tornado_server,
}


# Clients: each sends the payloads one by one and returns the replies. ----------------------------


async def websockets_async_client(url: str, payloads: list[str | bytes]) -> list[Any]:
    async with async_connect(url) as ws:
        replies = []
        for payload in payloads:
            await ws.send(payload)
            replies.append(await ws.recv())
        return replies


async def websockets_sync_client(url: str, payloads: list[str | bytes]) -> list[Any]:
    def run() -> list[Any]:
        with sync_connect(url) as ws:
            replies = []
            for payload in payloads:
                ws.send(payload)
                replies.append(ws.recv())
            return replies

    return await asyncio.to_thread(run)


async def aiohttp_client(url: str, payloads: list[str | bytes]) -> list[Any]:
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        replies = []
        for payload in payloads:
            if isinstance(payload, str):
                await ws.send_str(payload)
            else:
                await ws.send_bytes(payload)
            replies.append((await ws.receive()).data)
        return replies


async def websocket_client_client(url: str, payloads: list[str | bytes]) -> list[Any]:
    def run() -> list[Any]:
        ws = websocket.create_connection(url)
        try:
            replies = []
            for payload in payloads:
                if isinstance(payload, str):
                    ws.send(payload)
                else:
                    ws.send_binary(payload)
                replies.append(ws.recv())
            return replies
        finally:
            ws.close()

    return await asyncio.to_thread(run)


CLIENTS: dict[str, Client] = {
    "tornado": tornado_app.exchange,
    "websockets-asyncio": websockets_async_client,
    "websockets-sync": websockets_sync_client,
    "aiohttp": aiohttp_client,
    "websocket-client": websocket_client_client,
}


@pytest.fixture
def meter() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def instrumented(telemetry: Telemetry, meter: InMemoryMetricReader) -> Iterator[Telemetry]:
    meter_provider = MeterProvider(metric_readers=[meter])
    instrumentors = [
        WebsocketsInstrumentor(),
        AiohttpInstrumentor(),
        WebsocketClientInstrumentor(),
        StarletteInstrumentor(),
        TornadoInstrumentor(),
    ]
    for instrumentor in instrumentors:
        instrumentor.instrument(tracer_provider=telemetry.provider, meter_provider=meter_provider)
    yield telemetry
    for instrumentor in instrumentors:
        instrumentor.uninstrument()


@pytest.mark.parametrize("server", sorted(SERVERS))
@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_pair(instrumented: Telemetry, meter: InMemoryMetricReader, client: str, server: str) -> None:
    """Handshake propagation, envelope both ways, identical text and binary payloads, one shared contract,
    and the same metrics from both ends."""
    telemetry = instrumented

    async def scenario() -> list[Any]:
        async with SERVERS[server]() as url:
            replies = await CLIENTS[client](url, PAYLOADS)
        await asyncio.sleep(0.1)  # both ends record their close
        return replies

    assert asyncio.run(scenario()) == PAYLOADS
    _wait_for_closes(telemetry)
    client_hs = contract.handshake(telemetry, ROUTE, SpanKind.CLIENT)
    server_hs = contract.handshake(telemetry, ROUTE, SpanKind.SERVER)
    assert contract.parent_id(server_hs) == contract.span_id(client_hs), "handshake context was not carried"
    assert client_hs.attributes["websocket.envelope"] == server_hs.attributes["websocket.envelope"] == "frame"
    assert client_hs.attributes["websocket.session.id"] == server_hs.attributes["websocket.session.id"]
    assert server_hs.attributes["client.address"] == "127.0.0.1"
    assert isinstance(server_hs.attributes["server.port"], int)
    assert client_hs.attributes["server.address"] == "127.0.0.1"
    client_sends = contract.messages(telemetry, ROUTE, "send", client_hs, TYPES)
    server_receives = contract.messages(telemetry, ROUTE, "receive", server_hs, TYPES)
    server_sends = contract.messages(telemetry, ROUTE, "send", server_hs, TYPES)
    client_receives = contract.messages(telemetry, ROUTE, "receive", client_hs, TYPES)
    contract.continued(client_sends, server_receives)
    contract.continued(server_sends, client_receives)
    contract.no_open_spans(telemetry)
    contract.metrics(meter, ROUTE, len(PAYLOADS))


def _wait_for_closes(telemetry: Telemetry) -> None:
    """Threaded clients and servers record their close a moment after the payloads are back."""
    for _ in range(100):
        if not telemetry.open_spans.names():
            return
        threading.Event().wait(0.02)
