"""Servers and clients for the connection-fault and leak tests, one per adapter, and the release checks.

Each *streaming* server answers every message with ``CHUNKS`` chunks a few milliseconds apart,
so that a peer can vanish while the reply stream is open; each *crashing* server raises from its
handler on the first message. Handlers catch the library's connection errors, as a real
application does: whatever else escapes is a failure.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from tornado.websocket import WebSocketClosedError, WebSocketHandler
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.conftest import Telemetry
from tests.instrumentation import aiohttp_app, tornado_app, uvicorn_server
from wstrace.connection import ConnectionTracer


ROUTE = "/fault"
CHUNKS = 200
GAP = 0.003
escaped: list[BaseException] = []
"""Exceptions that reached a handler's end other than the library's own connection errors."""


class Crash(RuntimeError):
    """What a crashing handler raises."""


def chunk(i: int) -> str:
    return f"chunk {i}"


# websockets ----------------------------------------------------------------------------------------


def websockets_handler(crash: bool) -> Callable[[ServerConnection], Any]:
    async def handler(ws: ServerConnection) -> None:
        try:
            async for _message in ws:
                if crash:
                    raise Crash("handler crashed")
                for i in range(CHUNKS):
                    await ws.send(chunk(i))
                    await asyncio.sleep(GAP)
        except ConnectionClosed:
            pass

    return handler


@asynccontextmanager
async def websockets_server(crash: bool = False, **options: Any) -> AsyncIterator[str]:
    async with serve(websockets_handler(crash), "127.0.0.1", 0, **options) as srv:
        yield f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}{ROUTE}"


# aiohttp ---------------------------------------------------------------------------------------------


@asynccontextmanager
async def aiohttp_server(crash: bool = False) -> AsyncIterator[str]:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                if crash:
                    raise Crash("handler crashed")
                for i in range(CHUNKS):
                    await ws.send_str(chunk(i))
                    await asyncio.sleep(GAP)
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            pass
        return ws

    async with aiohttp_app.server(handler, ROUTE) as url:
        yield url


# Starlette under uvicorn -------------------------------------------------------------------------------


def starlette_endpoint(crash: bool) -> Callable[[WebSocket], Any]:
    async def endpoint(ws: WebSocket) -> None:
        await ws.accept()
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if crash:
                    raise Crash("handler crashed")
                for i in range(CHUNKS):
                    await ws.send_text(chunk(i))
                    await asyncio.sleep(GAP)
        except Crash:
            raise
        except Exception as exc:  # uvicorn's ClientDisconnected, starlette's WebSocketDisconnect
            if type(exc).__name__ not in ("ClientDisconnected", "WebSocketDisconnect"):
                escaped.append(exc)

    return endpoint


@asynccontextmanager
async def starlette_server(crash: bool = False) -> AsyncIterator[str]:
    app = Starlette(routes=[WebSocketRoute(ROUTE, starlette_endpoint(crash))])
    with uvicorn_server.serve(app) as base:
        yield base + ROUTE


# tornado -----------------------------------------------------------------------------------------------


def tornado_handler(crash: bool) -> type[WebSocketHandler]:
    class Streamer(WebSocketHandler):
        async def on_message(self, message: str | bytes) -> None:
            if crash:
                raise Crash("handler crashed")
            try:
                for i in range(CHUNKS):
                    await self.write_message(chunk(i))
                    await asyncio.sleep(GAP)
            except WebSocketClosedError:
                pass

    return Streamer


@asynccontextmanager
async def tornado_server(crash: bool = False) -> AsyncIterator[str]:
    async with tornado_app.server(tornado_handler(crash), ROUTE) as url:
        yield url


SERVERS: dict[str, Callable[..., Any]] = {
    "websockets": websockets_server,
    "aiohttp": aiohttp_server,
    "starlette-uvicorn": starlette_server,
    "tornado": tornado_server,
}


# Release checks ----------------------------------------------------------------------------------------


def live(kind: type) -> int:
    """How many objects of ``kind`` are alive after a full collection."""
    gc.collect()
    return len(_live_objects(kind))


def _live_objects(kind: type) -> list[object]:
    # type(), not isinstance(): isinstance() reads __class__, which a lazy proxy such as Django's unconfigured
    # settings (imported by the Channels instrumentor) answers by raising.
    return [obj for obj in gc.get_objects() if issubclass(type(obj), kind)]


def settle(telemetry: Telemetry, timeout: float = 5.0) -> None:
    """Wait until every started span has ended (threaded servers record their end a moment later)."""
    deadline = time.monotonic() + timeout
    while telemetry.open_spans.names() and time.monotonic() < deadline:
        time.sleep(0.01)


def assert_released(before: int) -> None:
    """No ConnectionTracer outlives its connection (``before``: how many were alive before the test)."""
    for _ in range(50):
        if live(ConnectionTracer) <= before:
            return
        time.sleep(0.02)  # a server thread may still hold its last frame
    holders = _live_objects(ConnectionTracer)
    referrers = [type(r).__name__ for h in holders for r in gc.get_referrers(h)]
    raise AssertionError(f"{len(holders) - before} ConnectionTracer(s) leaked, held by {referrers}")
