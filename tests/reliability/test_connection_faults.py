"""Connections that end badly: every span ends with the right status, and the ConnectionTracer is released.

A peer that vanishes mid-stream (TCP reset, no close frame), a handler that crashes, a close while a
send waits for the transport, a ping that is never answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
import websocket
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode
from tornado.websocket import websocket_connect
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError
from websockets.sync.client import connect as sync_connect

from tests.conftest import Telemetry
from tests.instrumentation.peers import INSTRUMENTORS
from tests.reliability import apps
from tests.reliability.apps import ROUTE, assert_released, live, settle
from tests.reliability.rawws import RawClient, VanishingServer
from wstrace.connection import ConnectionTracer


@pytest.fixture
def traced(telemetry: Telemetry) -> Iterator[Telemetry]:
    """Every adapter instrumented, and no ConnectionTracer left behind by the test."""
    before = live(ConnectionTracer)
    instrumentors = [cls() for cls in INSTRUMENTORS]
    for instrumentor in instrumentors:
        instrumentor.instrument(tracer_provider=telemetry.provider)
    apps.escaped.clear()
    yield telemetry
    for instrumentor in instrumentors:
        instrumentor.uninstrument()
    assert apps.escaped == [], "an unexpected exception reached a handler"
    assert_released(before)


def side(telemetry: Telemetry, name: str, kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in telemetry.named(name) if s.kind is kind]


def close_span(telemetry: Telemetry, route: str = ROUTE) -> ReadableSpan:
    spans = telemetry.named(f"close {route}")
    assert len(spans) == 1, f"expected one close span, got {[s.name for s in telemetry.spans]}"
    return spans[0]


def attr(span: ReadableSpan, key: str) -> Any:
    return (span.attributes or {}).get(key)


def assert_all_ended(telemetry: Telemetry) -> None:
    settle(telemetry)
    assert telemetry.open_spans.names() == [], f"spans left open: {telemetry.open_spans.names()}"


# A peer vanishes mid-stream --------------------------------------------------------------------


@pytest.mark.parametrize("server", sorted(apps.SERVERS))
def test_client_vanishes_while_the_server_streams(traced: Telemetry, server: str) -> None:
    """The server's reply stream, receive and close spans end as errors (1006, no close frame)."""

    async def scenario() -> list[bytes]:
        async with apps.SERVERS[server]() as url:
            client = await RawClient.connect(url, [(b"wstrace-envelope", b"frame/1")])
            assert client.status == 101
            await client.send("go")
            chunks = [await client.recv() for _ in range(3)]
            client.reset()
            await asyncio.sleep(0.3)  # the server notices at its next write
            return chunks

    chunks = asyncio.run(scenario())
    assert [c.endswith(f"chunk {i}".encode()) for i, c in enumerate(chunks)] == [True] * 3
    assert_all_ended(traced)
    close = close_span(traced)
    assert close.status.status_code is StatusCode.ERROR
    assert attr(close, "websocket.close.code") == 1006
    assert attr(close, "websocket.close.initiator") in ("none", "local")
    (stream,) = side(traced, f"send {ROUTE}", SpanKind.PRODUCER)
    assert stream.status.status_code is StatusCode.ERROR, "a stream cut short by a dropped peer is an error"
    assert attr(stream, "error.type") == "close 1006"
    assert 3 <= attr(stream, "wstrace.stream.chunk_count") < apps.CHUNKS
    (receive,) = traced.named(f"receive {ROUTE}")
    assert receive.end_time is not None


async def websockets_async_reader(url: str) -> list[Any]:
    got: list[Any] = []
    try:
        async with async_connect(url) as ws:
            await ws.send("go")
            async for message in ws:
                got.append(message)
    except ConnectionClosedError:
        pass
    return got


async def websockets_sync_reader(url: str) -> list[Any]:
    def run() -> list[Any]:
        got: list[Any] = []
        try:
            with sync_connect(url) as ws:
                ws.send("go")
                for message in ws:
                    got.append(message)
        except ConnectionClosedError:
            pass
        return got

    return await asyncio.to_thread(run)


async def aiohttp_reader(url: str) -> list[Any]:
    got: list[Any] = []
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        await ws.send_str("go")
        async for msg in ws:
            got.append(msg.data)
    return got


async def websocket_client_reader(url: str) -> list[Any]:
    def run() -> list[Any]:
        got: list[Any] = []
        ws = websocket.create_connection(url)
        try:
            ws.send("go")
            while True:
                got.append(ws.recv())
        except (websocket.WebSocketConnectionClosedException, ConnectionError):
            pass
        finally:
            ws.close()
        return got

    return await asyncio.to_thread(run)


async def tornado_reader(url: str) -> list[Any]:
    conn = await websocket_connect(url)
    await conn.write_message("go")
    got: list[Any] = []
    while (message := await conn.read_message()) is not None:
        got.append(message)
    conn.close()
    return got


READERS: dict[str, Callable[[str], Awaitable[list[Any]]]] = {
    "websockets-asyncio": websockets_async_reader,
    "websockets-sync": websockets_sync_reader,
    "aiohttp": aiohttp_reader,
    "websocket-client": websocket_client_reader,
    "tornado": tornado_reader,
}


@pytest.mark.parametrize("client", sorted(READERS))
def test_server_vanishes_while_the_client_reads_a_stream(traced: Telemetry, client: str) -> None:
    """The client's reply stream and close spans end as errors; the chunks that arrived are intact."""

    async def scenario() -> list[Any]:
        async with VanishingServer(chunks=3) as url:
            return await READERS[client](url + ROUTE)

    assert asyncio.run(scenario()) == ["chunk 0", "chunk 1", "chunk 2"]
    assert_all_ended(traced)
    close = close_span(traced)
    assert close.status.status_code is StatusCode.ERROR
    assert attr(close, "websocket.close.code") == 1006
    (stream,) = side(traced, f"receive {ROUTE}", SpanKind.CONSUMER)
    assert stream.status.status_code is StatusCode.ERROR
    assert attr(stream, "wstrace.stream.chunk_count") == 3
    (send,) = side(traced, f"send {ROUTE}", SpanKind.PRODUCER)
    assert send.status.status_code is StatusCode.UNSET


# A handler crashes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("server", sorted(apps.SERVERS))
def test_server_handler_crashes(traced: Telemetry, server: str, caplog: pytest.LogCaptureFixture) -> None:
    """The crash ends the server's connection as an error; the client sees the close, nothing hangs or leaks."""

    async def scenario() -> Any:
        async with apps.SERVERS[server](crash=True) as url:
            async with async_connect(url) as ws:
                await ws.send("go")
                try:
                    await asyncio.wait_for(ws.recv(), 10)
                except ConnectionClosed as exc:
                    return exc.rcvd.code if exc.rcvd is not None else 1006
        return None

    code = asyncio.run(scenario())
    # The library's own error log holds the crash's traceback, and with it the connection: drop it.
    caplog.clear()
    assert code in (1011, 1006), f"the client saw close code {code}"
    assert_all_ended(traced)
    closes = traced.named(f"close {ROUTE}")
    assert len(closes) == 2, "both sides record the close"
    server_close = next(s for s in closes if attr(s, "websocket.close.initiator") != "remote" or code == 1006)
    assert server_close.status.status_code is StatusCode.ERROR
    client_close = next(s for s in closes if s is not server_close)
    assert client_close.status.status_code is StatusCode.ERROR
    assert attr(client_close, "websocket.close.code") == code
    (receive,) = traced.named(f"receive {ROUTE}")
    assert receive.status.status_code is StatusCode.ERROR, "the message the handler crashed on failed"
    # aiohttp keeps the handler's exception to itself (it logs it and drops the connection): only the drop shows.
    assert attr(receive, "error.type") == ("ConnectionError" if server == "aiohttp" else "Crash")


# Close during a send ---------------------------------------------------------------------------------


def test_peer_resets_while_a_send_waits(traced: Telemetry) -> None:
    """A send blocked on flow control (the peer reads nothing) fails when the peer resets: its span is an error."""

    async def scenario() -> BaseException:
        async with VanishingServer(stall=True, linger=0.3) as url:
            async with async_connect(url + ROUTE, write_limit=1024, close_timeout=0.1) as ws:
                await ws.send("hello")
                sending = asyncio.create_task(ws.send(b"x" * (32 << 20)))
                while ws.transport.get_write_buffer_size() < 1024:
                    await asyncio.sleep(0.01)
                assert not sending.done(), "the send is waiting for the transport"
                try:
                    await sending
                except ConnectionClosed as exc:
                    return exc
        raise AssertionError("the send did not fail")

    assert isinstance(asyncio.run(scenario()), ConnectionClosedError)
    assert_all_ended(traced)
    # Two sends in a row with no context of their own are one run: the connection's drop fails it.
    (run,) = side(traced, f"send {ROUTE}", SpanKind.PRODUCER)
    assert attr(run, "wstrace.stream.chunk_count") == 2
    assert attr(run, "messaging.message.body.size") == 5 + (32 << 20)
    assert run.status.status_code is StatusCode.ERROR
    assert attr(run, "error.type") == "close 1006"
    close = close_span(traced)
    assert close.status.status_code is StatusCode.ERROR and attr(close, "websocket.close.code") == 1006


# Ping timeout ----------------------------------------------------------------------------------------


def test_server_ping_timeout(traced: Telemetry) -> None:
    """A client that never answers pings is dropped by the keepalive: the server's close span is an error."""

    async def scenario() -> None:
        async with apps.websockets_server(ping_interval=0.05, ping_timeout=0.05) as url:
            client = await RawClient.connect(url)
            assert client.status == 101
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                await client.recv(timeout=5)  # skips pings, never answers them, until the server gives up
            await client.close()
            await asyncio.sleep(0.1)

    asyncio.run(scenario())
    assert_all_ended(traced)
    close = close_span(traced)
    assert close.status.status_code is StatusCode.ERROR
    assert attr(close, "websocket.close.code") in (1006, 1011)


def test_client_ping_timeout(traced: Telemetry) -> None:
    """A server that never answers pings: the websockets client's keepalive gives up, its close span is an error."""

    async def scenario() -> type[BaseException]:
        async with VanishingServer(pong=False) as url:
            async with async_connect(url + ROUTE, ping_interval=0.05, ping_timeout=0.05, close_timeout=0.1) as ws:
                try:
                    await asyncio.wait_for(ws.recv(), 5)
                except ConnectionClosed as exc:
                    return type(exc)
        raise AssertionError("the keepalive did not close the connection")

    assert asyncio.run(scenario()) is ConnectionClosedError
    assert_all_ended(traced)
    close = close_span(traced)
    assert close.status.status_code is StatusCode.ERROR
