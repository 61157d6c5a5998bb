"""The application's message-size limit holds for its payloads, not for payload plus envelope.

Each library's receive limit (websockets' ``max_size``, aiohttp's ``max_msg_size``, tornado's
``websocket_max_message_size`` / ``max_message_size``) is set to ``LIMIT`` on one end, and payloads around it
are sent to that end over real loopback connections: once with nothing instrumented, then with every adapter
instrumented and the envelope in force. The application on each end must see exactly what it saw bare: the
same payloads delivered, the same close code and reason for the ones refused.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application
from tornado.websocket import WebSocketHandler, websocket_connect
from websockets.asyncio.client import connect as async_connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as sync_connect
from websockets.sync.server import serve as sync_serve

from tests.conftest import Telemetry
from tests.instrumentation import aiohttp_app
from tests.instrumentation.peers import INSTRUMENTORS
from wstrace import envelope as codec
from wstrace.instrumentation.websockets import server_options


LIMIT = 1024
FAR = LIMIT + 9000
"""Over the limit by more than the envelope's overhead: refused by the library itself, with the same code."""
SIZES = (LIMIT - 1, LIMIT, LIMIT + 1, FAR)
ROUTE = "/limits"

Outcome = tuple[Any, ...]


def payload(kind: str, n: int) -> str | bytes:
    """``n`` bytes of payload: text, binary, or a JSON object (text) for the ``json`` format."""
    if kind == "binary":
        return b"\x01" * n
    if kind == "json":
        return '{"k":"' + "a" * (n - 8) + '"}'
    return "a" * n


def comparable(outcomes: list[Outcome]) -> list[Outcome]:
    """Far over the limit, the library refuses the frame before wstrace sees it: only the code must match."""
    return [o[:2] if o[0] == FAR else o for o in outcomes]


@contextmanager
def instrumented(telemetry: Telemetry, fmt: str) -> Iterator[None]:
    instrumentors = [cls() for cls in INSTRUMENTORS]
    for instrumentor in instrumentors:
        instrumentor.instrument(tracer_provider=telemetry.provider, envelope_format=fmt)
    try:
        yield
    finally:
        for instrumentor in instrumentors:
            instrumentor.uninstrument()


def bare_and_instrumented(
    telemetry: Telemetry, fmt: str, run: Callable[[], Awaitable[list[Outcome]]]
) -> tuple[list[Outcome], list[Outcome]]:
    bare = asyncio.run(run())
    with instrumented(telemetry, fmt):
        traced = asyncio.run(run())
    handshakes = [s for s in telemetry.spans if s.name.startswith("handshake")] or [
        s for s in telemetry.spans if "websocket.envelope" in (s.attributes or {})
    ]
    assert handshakes, [s.name for s in telemetry.spans]
    envelopes = {(s.attributes or {}).get("websocket.envelope") for s in handshakes}
    assert envelopes == {fmt}, f"the envelope was not in force on every connection: {envelopes}"
    return comparable(bare), comparable(traced)


def kinds(fmt: str) -> list[str]:
    return ["json"] if fmt == "json" else ["text", "binary"]


# The receiving end is the server: an instrumented websockets client sends, the server echoes. --------------


async def send_one(url: str, message: str | bytes) -> tuple[Any, ...]:
    """What the sending client sees: its message echoed, or the server's close."""
    async with async_connect(url, max_size=None) as ws:
        await ws.send(message)
        try:
            reply = await asyncio.wait_for(ws.recv(), 10)
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            return ("closed", rcvd.code, rcvd.reason) if rcvd is not None else ("dropped",)
        return ("echoed", reply == message)


@asynccontextmanager
async def websockets_asyncio_server(**options: Any) -> AsyncIterator[str]:
    async def echo(ws: Any) -> None:
        try:
            async for message in ws:
                await ws.send(message)
        except ConnectionClosed:
            pass  # refused a message over the limit

    async with serve(echo, "127.0.0.1", 0, max_size=LIMIT, **options) as srv:
        yield f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}{ROUTE}"


@asynccontextmanager
async def websockets_sync_server() -> AsyncIterator[str]:
    def echo(ws: Any) -> None:
        try:
            for message in ws:
                ws.send(message)
        except ConnectionClosed:
            pass

    with sync_serve(echo, "127.0.0.1", 0, max_size=LIMIT) as srv:
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"ws://127.0.0.1:{srv.socket.getsockname()[1]}{ROUTE}"
        finally:
            srv.shutdown()
            thread.join(10)


@asynccontextmanager
async def aiohttp_server() -> AsyncIterator[str]:
    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=LIMIT)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    async with aiohttp_app.server(echo, ROUTE) as url:
        yield url


class TornadoEcho(WebSocketHandler):
    def on_message(self, message: str | bytes) -> None:
        self.write_message(message, binary=isinstance(message, bytes))


@asynccontextmanager
async def tornado_server() -> AsyncIterator[str]:
    sockets = bind_sockets(0, "127.0.0.1")
    srv = HTTPServer(Application([(ROUTE, TornadoEcho)], websocket_max_message_size=LIMIT))
    srv.add_sockets(sockets)
    try:
        yield f"ws://127.0.0.1:{sockets[0].getsockname()[1]}{ROUTE}"
    finally:
        srv.stop()


LIMITED_SERVERS: dict[str, Callable[[], Any]] = {
    "websockets-asyncio": websockets_asyncio_server,
    # Uncompressed, websockets names the frame's size in the close reason (compressed, it cannot).
    "websockets-asyncio-uncompressed": lambda: websockets_asyncio_server(compression=None),
    "websockets-sync": websockets_sync_server,
    "aiohttp": aiohttp_server,
    "tornado": tornado_server,
}


@pytest.mark.parametrize("fmt", ["frame", "json"])
@pytest.mark.parametrize("server", sorted(LIMITED_SERVERS))
def test_server_limit_applies_to_the_payload(telemetry: Telemetry, server: str, fmt: str) -> None:
    async def run() -> list[Outcome]:
        outcomes = []
        async with LIMITED_SERVERS[server]() as url:
            for kind in kinds(fmt):
                for n in SIZES:
                    outcomes.append((n, *await send_one(url, payload(kind, n)), kind))
        return outcomes

    bare, traced = bare_and_instrumented(telemetry, fmt, run)
    assert traced == bare
    # The limit is the library's, whatever it is: at least the payload under it always gets through.
    assert all(o[1] == "echoed" and o[2] for o in traced if o[0] == LIMIT - 1)


# The receiving end is the client: an instrumented websockets server sends what the client asks for. --------


class Sender:
    """A websockets server that answers ``<kind>:<n>`` with that payload, and notes each close it received."""

    def __init__(self) -> None:
        self.closes: list[tuple[Any, Any]] = []

    async def handler(self, ws: Any) -> None:
        try:
            kind, _, n = (await ws.recv()).partition(":")
            await ws.send(payload(kind, int(n)))
            await ws.wait_closed()
        except ConnectionClosed:
            pass
        self.closes.append((ws.close_code, ws.close_reason))


async def websockets_asyncio_client(url: str, kind: str, n: int) -> tuple[Any, ...]:
    async with async_connect(url, max_size=LIMIT) as ws:
        await ws.send(f"{kind}:{n}")
        try:
            return ("delivered", await ws.recv() == payload(kind, n))
        except ConnectionClosed as exc:
            sent = exc.sent
            return ("failed", sent.code, sent.reason) if sent is not None else ("dropped",)


async def websockets_sync_client(url: str, kind: str, n: int) -> tuple[Any, ...]:
    def run() -> tuple[Any, ...]:
        with sync_connect(url, max_size=LIMIT) as ws:
            ws.send(f"{kind}:{n}")
            try:
                return ("delivered", ws.recv(10) == payload(kind, n))
            except ConnectionClosed as exc:
                sent = exc.sent
                return ("failed", sent.code, sent.reason) if sent is not None else ("dropped",)

    return await asyncio.to_thread(run)


async def aiohttp_client(url: str, kind: str, n: int) -> tuple[Any, ...]:
    async with aiohttp.ClientSession() as session, session.ws_connect(url, max_msg_size=LIMIT) as ws:
        await ws.send_str(f"{kind}:{n}")
        msg = await ws.receive(timeout=10)
        if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            return ("delivered", msg.data == payload(kind, n))
        return (msg.type.name, str(msg.data), ws.close_code)


async def tornado_client(url: str, kind: str, n: int) -> tuple[Any, ...]:
    conn = await websocket_connect(url, max_message_size=LIMIT)
    await conn.write_message(f"{kind}:{n}")
    message = await asyncio.wait_for(conn.read_message(), 10)
    if message is None:  # the connection ended (tornado hands over None once)
        conn.close()  # lets go of the protocol, as an application would
        return ("closed", conn.close_code, conn.close_reason)
    conn.close()
    while await conn.read_message() is not None:
        pass
    return ("delivered", message == payload(kind, n))


LIMITED_CLIENTS: dict[str, Callable[[str, str, int], Awaitable[tuple[Any, ...]]]] = {
    "websockets-asyncio": websockets_asyncio_client,
    "websockets-sync": websockets_sync_client,
    "aiohttp": aiohttp_client,
    "tornado": tornado_client,
}


@pytest.mark.parametrize("fmt", ["frame", "json"])
@pytest.mark.parametrize("client", sorted(LIMITED_CLIENTS))
def test_client_limit_applies_to_the_payload(telemetry: Telemetry, client: str, fmt: str) -> None:
    async def run() -> list[Outcome]:
        sender = Sender()
        outcomes = []
        async with serve(sender.handler, "127.0.0.1", 0, max_size=None) as srv:
            url = f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}{ROUTE}"
            for kind in kinds(fmt):
                for n in SIZES:
                    got = await LIMITED_CLIENTS[client](url, kind, n)
                    for _ in range(1000):  # the server notes the close a moment after the client is done
                        if len(sender.closes) > len(outcomes):
                            break
                        await asyncio.sleep(0.01)
                    outcomes.append((n, *got, kind, *sender.closes[len(outcomes)]))
        return outcomes

    bare, traced = bare_and_instrumented(telemetry, fmt, run)
    assert traced == bare
    assert all(o[1] == "delivered" and o[2] for o in traced if o[0] == LIMIT - 1)


# Fragmented messages: the envelope is at the start of the first fragment. --------------------------------


def test_fragmented_message_limit_counts_payload_only(telemetry: Telemetry) -> None:
    """A websockets client with ``envelope="always"`` receives fragmented messages whose first fragment starts
    with an envelope, written by hand by a server that envelopes nothing (``envelope="off"``): the limits hold
    for the payload, as they do bare for the same fragments without the envelope."""
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    def fragments(n: int, enveloped: bool) -> list[str]:
        body = "a" * n
        head = codec.encode_text("", {"traceparent": traceparent}) if enveloped else ""
        return [head + body[:300], body[300:700], body[700:]]

    async def run(enveloped: bool) -> list[Outcome]:
        async def handler(ws: Any) -> None:
            asked = await ws.recv()  # the client's own envelope, if any, is left on: the number ends it
            await ws.send(fragments(int(asked.rpartition("\x1e")[2]), enveloped))
            try:
                await ws.wait_closed()
            except ConnectionClosed:
                pass

        outcomes: list[Outcome] = []
        async with serve(handler, "127.0.0.1", 0, max_size=None, process_request=server_options(envelope="off")) as srv:
            url = f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}{ROUTE}"
            for n in SIZES:
                async with async_connect(url, max_size=(LIMIT, 600), compression=None) as ws:
                    await ws.send(str(n))
                    try:
                        outcomes.append((n, "delivered", await ws.recv() == "a" * n))
                    except ConnectionClosed as exc:
                        sent = exc.sent
                        outcomes.append((n, "failed", *((sent.code, sent.reason) if sent else ())))
        return outcomes

    bare = asyncio.run(run(False))
    instrumentors = [cls() for cls in INSTRUMENTORS]
    for instrumentor in instrumentors:
        instrumentor.instrument(tracer_provider=telemetry.provider, envelope="always")
    try:
        traced = asyncio.run(run(True))
    finally:
        for instrumentor in instrumentors:
            instrumentor.uninstrument()
    assert comparable(traced) == comparable(bare)
    assert traced[0] == (LIMIT - 1, "delivered", True)


def test_raising_the_limit_adds_no_attribute_to_the_protocol(telemetry: Telemetry) -> None:
    """The raised limit rides in websockets' own attribute: a new attribute on each connection's protocol would
    give its ``__dict__`` keys of its own, about 1.3 KB per connection (docs/performance.md, idle memory)."""
    seen: list[Any] = []

    async def keep(ws: Any) -> None:
        seen.append(ws.protocol)
        async for message in ws:
            await ws.send(message)

    async def one() -> None:
        async with serve(keep, "127.0.0.1", 0, max_size=LIMIT) as srv:
            async with async_connect(f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}{ROUTE}") as ws:
                await ws.send("x" * (LIMIT - 1))
                assert await ws.recv() == "x" * (LIMIT - 1)

    asyncio.run(one())
    with instrumented(telemetry, "frame"):
        asyncio.run(one())
    bare, traced = seen
    assert type(traced.max_message_size) is not int, "the limit was raised (the envelope is in force)"
    assert traced.max_message_size > bare.max_message_size == LIMIT
    assert set(vars(traced)) == set(vars(bare))
