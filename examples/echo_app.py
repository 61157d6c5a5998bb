"""A plain websockets echo client and server on loopback, with no tracing code.

Run it under ``opentelemetry-instrument`` to see wstrace trace it unchanged::

    OTEL_TRACES_EXPORTER=console opentelemetry-instrument python examples/echo_app.py
"""

from __future__ import annotations

import asyncio

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send("echo: " + (message if isinstance(message, str) else message.hex()))


async def main() -> None:
    async with serve(echo, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/echo") as ws:
            for text in ("hello", "world"):
                await ws.send(text)
                print(await ws.recv())


if __name__ == "__main__":
    asyncio.run(main())
