"""A tornado echo server and client on loopback, shared by the tornado and interop tests; no fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application
from tornado.websocket import WebSocketClientConnection, WebSocketHandler, websocket_connect


def binary(message: Any) -> bool:
    return isinstance(message, bytes)


class Echo(WebSocketHandler):
    """Sends every message back with its frame type."""

    def on_message(self, message: str | bytes) -> None:
        self.write_message(message, binary=binary(message))


@asynccontextmanager
async def server(handler: type[WebSocketHandler], path: str = "/chat") -> AsyncIterator[str]:
    """A tornado application on a free loopback port, in the running event loop."""
    sockets = bind_sockets(0, "127.0.0.1")
    srv = HTTPServer(Application([(path, handler)]))
    srv.add_sockets(sockets)
    try:
        yield f"ws://127.0.0.1:{sockets[0].getsockname()[1]}{path}"
    finally:
        srv.stop()


async def until_closed(conn: WebSocketClientConnection) -> None:
    """Close (if still open) and wait until tornado reports the end (read_message returns None)."""
    conn.close()
    while await conn.read_message() is not None:
        pass


async def exchange(url: str, payloads: list[str | bytes]) -> list[Any]:
    """Send each payload with its frame type and collect the reply to it."""
    conn = await websocket_connect(url)
    try:
        replies = []
        for payload in payloads:
            await conn.write_message(payload, binary=binary(payload))
            replies.append(await conn.read_message())
        return replies
    finally:
        await until_closed(conn)
