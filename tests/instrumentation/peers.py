"""The instrumented echo servers and clients that the interop matrix and the reliability tests share.

Each server echoes every message back on ``ROUTE`` and yields its URL; each client sends payloads one by one and
returns the replies. ``INSTRUMENTORS`` instruments every adapter, and ``PAIRS`` names one client per server so
that every adapter, both sides, is covered by a handful of connections. ``SOCKETIO_SERVERS`` and
``SOCKETIO_CLIENTS`` are the Socket.IO matrix's (``test_socketio_interop.py``): events, not messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import aiohttp
import socketio
import websocket
from fastapi import FastAPI, WebSocket
from websockets.asyncio.client import connect as async_connect
from websockets.asyncio.server import serve
from websockets.sync.client import connect as sync_connect

from tests.instrumentation import aiohttp_app, channels_app, socketio_app, tornado_app, uvicorn_server
from wstrace.instrumentation.aiohttp import AiohttpInstrumentor
from wstrace.instrumentation.channels import ChannelsInstrumentor
from wstrace.instrumentation.socketio import SocketioInstrumentor
from wstrace.instrumentation.starlette import StarletteInstrumentor
from wstrace.instrumentation.tornado import TornadoInstrumentor
from wstrace.instrumentation.websocket_client import WebsocketClientInstrumentor
from wstrace.instrumentation.websockets import WebsocketsInstrumentor


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


CHANNELS_ROUTE = ROUTE.lstrip("/")
"""The Channels consumer's Django pattern: Django's routes have no leading ``/``, and neither has the route
its spans are named by (``GET matrix``; the path stays ``/matrix``)."""


@asynccontextmanager
async def channels_server(sync: bool = False) -> AsyncIterator[str]:
    # uvicorn puts websocket.accept's headers on the 101 (daphne drops them), so the envelope can be agreed.
    channels_app.use_layer("memory")
    with uvicorn_server.serve(channels_app.echo_app(CHANNELS_ROUTE, sync=sync)) as base:
        yield base + ROUTE


def channels_sync_server() -> AbstractAsyncContextManager[str]:
    """A synchronous ``WebsocketConsumer``: its handler runs in a thread, its receive span handed to it."""
    return channels_server(sync=True)


SERVERS: dict[str, Callable[[], Any]] = {
    "websockets": websockets_server,
    "aiohttp": aiohttp_server,
    "starlette-uvicorn": starlette_server,
    "fastapi-uvicorn": fastapi_server,
    "tornado": tornado_server,
    "channels-uvicorn": channels_server,
    "channels-sync-uvicorn": channels_sync_server,
}

SERVER_ROUTES: dict[str, str] = {"channels-uvicorn": CHANNELS_ROUTE, "channels-sync-uvicorn": CHANNELS_ROUTE}
"""The route a server names its spans by, where it is not ``ROUTE``."""


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


INSTRUMENTORS = (
    WebsocketsInstrumentor,
    AiohttpInstrumentor,
    WebsocketClientInstrumentor,
    StarletteInstrumentor,
    TornadoInstrumentor,
    ChannelsInstrumentor,
    SocketioInstrumentor,
)
"""Every adapter's instrumentor."""

# Each client adapter against a different server adapter: every adapter, both sides, is covered.
PAIRS = [
    ("websockets-asyncio", "aiohttp"),
    ("websockets-sync", "websockets"),
    ("aiohttp", "tornado"),
    ("tornado", "starlette-uvicorn"),
    ("websocket-client", "fastapi-uvicorn"),
    ("aiohttp", "channels-uvicorn"),
]


# Socket.IO: servers yield their http:// URL and the list their handlers record into (socketio_app.make_server);
# clients run one script (SOCKETIO_SCRIPT) and return what they got. ----------------------------------------------


SOCKETIO_PINGS = {"ping_interval": 1, "ping_timeout": 2}
"""A long-polling client's disconnect waits for its pending poll, which the server answers within a ping
interval and timeout (25 s and 20 s by default)."""


@asynccontextmanager
async def socketio_aiohttp_server() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    records: list[dict[str, Any]] = []
    async with socketio_app.aiohttp_server(socketio_app.make_server(records, **SOCKETIO_PINGS)) as url:
        yield url, records


@asynccontextmanager
async def socketio_asgi_server() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    records: list[dict[str, Any]] = []
    sio = socketio_app.make_server(records, async_mode="asgi", **SOCKETIO_PINGS)
    with socketio_app.asgi_server(socketio.ASGIApp(sio)) as url:  # uvicorn, in a thread of its own
        yield url, records


SOCKETIO_SERVERS: dict[str, Callable[[], Any]] = {
    "aiohttp": socketio_aiohttp_server,
    "asgi-uvicorn": socketio_asgi_server,
}

SOCKETIO_ANSWER = "because"
"""What every client answers the server's ``question`` with."""


def socketio_async_client(transports: list[str]) -> Callable[[str], Awaitable[dict[str, Any]]]:
    """An ``AsyncClient`` over ``transports`` running the script: ``echo`` with two arguments (an ack, and the
    server emits ``echoed``), then ``ask`` (the server calls ``question`` on the client, which answers)."""

    async def run(url: str) -> dict[str, Any]:
        received: list[tuple[str, list[Any]]] = []
        client = socketio_app.make_client(received, answer=SOCKETIO_ANSWER)
        await client.connect(url, transports=transports)
        try:
            acks = [await client.call("echo", ({"a": 1}, "two"), timeout=10)]
            acks.append(await client.call("ask", "why?", timeout=10))
            for _ in range(100):  # the echoed event may come after the ack
                if ("echoed", [{"a": 1}, "two"]) in received:
                    break
                await asyncio.sleep(0.02)
            transport = client.transport()
        finally:
            await client.disconnect()
        return {"acks": acks, "received": received, "transport": transport}

    return run


SOCKETIO_CLIENTS: dict[str, Callable[[str], Awaitable[dict[str, Any]]]] = {
    "async-websocket": socketio_async_client(["websocket"]),
    "async-polling": socketio_async_client(["polling"]),
    "async-upgrade": socketio_async_client(["polling", "websocket"]),  # long-polling first, then the upgrade
}
