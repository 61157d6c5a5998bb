"""Bounded memory: connections and their tracers are collected, per-connection state stays bounded."""

from __future__ import annotations

import asyncio
import gc
import json
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.conftest import Telemetry
from tests.instrumentation.peers import CLIENTS, INSTRUMENTORS, PAIRS, SERVERS
from tests.reliability.apps import assert_released, live, settle
from wstrace._replies import _MAX_OPEN_STREAMS, _MAX_PENDING_REQUESTS
from wstrace.connection import ConnectionTracer
from wstrace.instrumentation.aiohttp import _common as aiohttp_common
from wstrace.instrumentation.websockets import WebsocketsInstrumentor


@pytest.fixture
def instrument(telemetry: Telemetry) -> Iterator[Any]:
    instrumentors: list[Any] = []

    def do(*classes: type, **options: Any) -> None:
        for cls in classes or INSTRUMENTORS:
            instrumentor = cls()
            instrumentor.instrument(tracer_provider=telemetry.provider, **options)
            instrumentors.append(instrumentor)

    yield do
    for instrumentor in instrumentors:
        instrumentor.uninstrument()


@pytest.mark.parametrize("ending", ["close", "abort"])
def test_connection_and_tracer_are_collected(telemetry: Telemetry, instrument: Any, ending: str) -> None:
    """Weak references to both connections are dead after close and a collection, and no ConnectionTracer is alive
    (counted: a tracer takes no weak reference, as the compiled core's native class could not)."""
    instrument(WebsocketsInstrumentor)
    before = live(ConnectionTracer)
    refs: list[weakref.ref[Any]] = []
    tracers: list[bool] = []

    async def handler(ws: ServerConnection) -> None:
        refs.append(weakref.ref(ws))
        tracers.append(type(ws._wstrace) is ConnectionTracer)  # type: ignore[attr-defined]
        try:
            async for message in ws:
                await ws.send(message)
        except ConnectionClosed:
            pass

    async def scenario() -> None:
        async with serve(handler, "127.0.0.1", 0) as srv:
            ws = await connect(f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}/chat")
            refs.append(weakref.ref(ws))
            tracers.append(type(ws._wstrace) is ConnectionTracer)  # type: ignore[attr-defined]
            for i in range(50):
                await ws.send(f"m{i}")
                await ws.recv()
            if ending == "close":
                await ws.close()
            else:
                ws.transport.abort()
            del ws
            await asyncio.sleep(0.1)

    asyncio.run(scenario())
    settle(telemetry)
    gc.collect()
    assert len(refs) == 2 and tracers == [True, True]
    assert [ref() for ref in refs] == [None] * 2, "a connection outlived itself"
    assert live(ConnectionTracer) == before, "a tracer outlived its connection"
    assert telemetry.open_spans.names() == []


@pytest.mark.parametrize(("client", "server"), PAIRS)
def test_no_tracer_outlives_its_connections(telemetry: Telemetry, instrument: Any, client: str, server: str) -> None:
    """Twenty connections through every adapter: none of their ConnectionTracers stays alive, nor aiohttp's registry."""
    before = live(ConnectionTracer)
    instrument()

    async def scenario() -> None:
        async with SERVERS[server]() as url:
            for _ in range(20):
                assert await CLIENTS[client](url, ["x", b"y"]) == ["x", b"y"]
        await asyncio.sleep(0.1)

    asyncio.run(scenario())
    settle(telemetry)
    assert telemetry.open_spans.names() == []
    assert aiohttp_common._serving == {}, "aiohttp's server registry forgot every connection"
    assert_released(before)


def test_state_stays_bounded_across_many_messages(telemetry: Telemetry, instrument: Any) -> None:
    """Thousands of messages on one connection: stream lists, pending requests and open spans stay bounded.

    Regression: a server's reply stream used to end only when its owner sent again after an idle gap,
    or at close, so every reply of a long-lived connection stayed an open span (and a Stream) in memory.
    """
    messages = 3000
    instrument(WebsocketsInstrumentor, stream_key=lambda payload: json.loads(payload)["id"])
    sizes: dict[str, list[int]] = {"server_streams": [], "client_streams": [], "requests": [], "open": []}
    server_tracer: list[ConnectionTracer] = []

    async def handler(ws: ServerConnection) -> None:
        server_tracer.append(ws._wstrace)  # type: ignore[attr-defined]
        async for message in ws:
            await ws.send(message)

    async def scenario() -> None:
        async with serve(handler, "127.0.0.1", 0) as srv:
            async with connect(f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}/chat") as ws:
                client_tracer: ConnectionTracer = ws._wstrace  # type: ignore[attr-defined]
                for i in range(messages):
                    await ws.send(json.dumps({"id": i}))  # a new request key every time
                    await ws.recv()
                    if i % 100 == 99:
                        sizes["server_streams"].append(len(_streams(server_tracer[0])))
                        sizes["client_streams"].append(len(_streams(client_tracer)))
                        sizes["requests"].append(len(_requests(client_tracer)))
                        sizes["open"].append(len(telemetry.open_spans.open))

    asyncio.run(scenario())
    bound = 2 * _MAX_OPEN_STREAMS + 1  # the list may double before a sweep trims it to the cap
    assert max(sizes["server_streams"]) <= bound, sizes["server_streams"]
    assert max(sizes["client_streams"]) <= bound, sizes["client_streams"]
    assert max(sizes["requests"]) <= _MAX_PENDING_REQUESTS
    assert max(sizes["open"]) <= 2 * bound + 4, f"open spans grew with the message count: {sizes['open']}"
    settle(telemetry)
    assert telemetry.open_spans.names() == []
    assert len(telemetry.named("receive /chat")) == 2 * messages


def test_idle_reply_streams_end_before_the_connection_does(telemetry: Telemetry, instrument: Any) -> None:
    """With a short stream_idle, earlier replies are exported while the connection is still open."""
    instrument(WebsocketsInstrumentor, stream_idle=0.01)
    exported_while_open: list[int] = []

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async def scenario() -> None:
        async with serve(handler, "127.0.0.1", 0) as srv:
            async with connect(f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}/chat") as ws:
                for i in range(200):
                    await ws.send(f"m{i}")
                    await ws.recv()
                    if i % 50 == 49:
                        await asyncio.sleep(0.02)  # longer than stream_idle
                exported_while_open.append(len([s for s in telemetry.named("send /chat") if s.kind.name == "PRODUCER"]))

    asyncio.run(scenario())
    # 200 client sends, and most of the 200 server reply streams: only those since the last sweep are open.
    assert exported_while_open[0] >= 200 + 100, exported_while_open


def _streams(ct: ConnectionTracer) -> dict[Any, Any]:
    return ct._replies.streams if ct._replies is not None else {}


def _requests(ct: ConnectionTracer) -> dict[Any, Any]:
    return (ct._replies.requests if ct._replies is not None else None) or {}
