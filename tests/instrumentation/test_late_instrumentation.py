"""Instrumenting after a server has started, or a client has connected: the connections that follow are traced.

Each adapter patches its library's classes, whose methods are looked up per
connection and per call, so a server started before ``instrument()`` traces the
connections it accepts afterwards, and a connection already open passes through
untraced (it has no handshake to hang its spans on) and keeps working.
Starlette and FastAPI, which build their stack once, are covered in
``test_starlette.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import aiohttp
import pytest
import websocket
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.trace import SpanKind
from tornado.websocket import websocket_connect
from websockets.asyncio.server import ServerConnection

from tests.conftest import Telemetry
from tests.instrumentation import aiohttp_app, contract, tornado_app
from tests.instrumentation.thread_server import ws_server
from wstrace.instrumentation.aiohttp import AiohttpInstrumentor
from wstrace.instrumentation.tornado import TornadoInstrumentor
from wstrace.instrumentation.websocket_client import WebsocketClientInstrumentor


@pytest.fixture
def late(telemetry: Telemetry) -> Iterator[Callable[[BaseInstrumentor], None]]:
    """Instrument with the test's provider, whenever the test says; uninstrument at the end."""
    used: list[BaseInstrumentor] = []

    def do(instrumentor: BaseInstrumentor) -> None:
        instrumentor.instrument(tracer_provider=telemetry.provider)
        used.append(instrumentor)

    yield do
    for instrumentor in used:
        instrumentor.uninstrument()


def traced_connections(telemetry: Telemetry, kind: SpanKind) -> int:
    return len([s for s in telemetry.spans if s.kind is kind and s.name.startswith("GET")])


def test_aiohttp_server_started_and_client_connected_before(
    telemetry: Telemetry, late: Callable[[BaseInstrumentor], None]
) -> None:
    async def scenario() -> None:
        async with aiohttp_app.server(aiohttp_app.echo) as url, aiohttp.ClientSession() as session:
            async with session.ws_connect(url) as early:
                await early.send_str("a")
                assert (await early.receive()).data == "a"
                late(AiohttpInstrumentor())
                await early.send_str("b")
                assert (await early.receive()).data == "b"
                async with session.ws_connect(url) as ws:
                    await ws.send_str("c")
                    assert (await ws.receive()).data == "c"
        await asyncio.sleep(0.05)  # connection_lost callbacks

    asyncio.run(scenario())
    assert traced_connections(telemetry, SpanKind.SERVER) == 1
    assert traced_connections(telemetry, SpanKind.CLIENT) == 1
    assert len(telemetry.named("receive /chat")) == 2, "one message each way, on the late connection only"
    contract.no_open_spans(telemetry)


def test_tornado_server_started_and_client_connected_before(
    telemetry: Telemetry, late: Callable[[BaseInstrumentor], None]
) -> None:
    async def scenario() -> None:
        async with tornado_app.server(tornado_app.Echo) as url:
            early = await websocket_connect(url)
            await early.write_message("a")
            assert await early.read_message() == "a"
            late(TornadoInstrumentor())
            await early.write_message("b")
            assert await early.read_message() == "b"
            assert await tornado_app.exchange(url, ["c"]) == ["c"]
            await tornado_app.until_closed(early)
            await asyncio.sleep(0.05)

    asyncio.run(scenario())
    assert traced_connections(telemetry, SpanKind.SERVER) == 1
    assert traced_connections(telemetry, SpanKind.CLIENT) == 1
    assert len(telemetry.named("receive /chat")) == 2
    contract.no_open_spans(telemetry)


def test_websocket_client_connected_before(telemetry: Telemetry, late: Callable[[BaseInstrumentor], None]) -> None:
    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    with ws_server(echo) as url:
        early = websocket.create_connection(url)
        early.send("a")
        assert early.recv() == "a"
        late(WebsocketClientInstrumentor())
        early.send("b")
        assert early.recv() == "b"
        ws = websocket.create_connection(url)
        ws.send("c")
        assert ws.recv() == "c"
        ws.close()
        early.close()
    assert traced_connections(telemetry, SpanKind.CLIENT) == 1
    assert len(telemetry.named("send /chat")) == 1
    assert len(telemetry.named("receive /chat")) == 1
    contract.no_open_spans(telemetry)
