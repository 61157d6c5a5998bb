"""A websockets peer for tests, run in its own process.

Un-instrumented unless started under ``opentelemetry-instrument``. Every line
it prints for the test starts with ``PEER `` and holds one JSON object, so
that exporter output on the same stream can be told apart.

    python bare.py server                 # prints {"port": N}, then one line per message
    python bare.py client URL JSON_LIST   # sends each item, prints each reply
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve


def emit(**fields: Any) -> None:
    print("PEER " + json.dumps(fields), flush=True)


def describe(message: str | bytes) -> dict[str, str]:
    if isinstance(message, str):
        return {"type": "text", "data": message}
    return {"type": "binary", "data": base64.b64encode(message).decode()}


def restore(item: dict[str, str]) -> str | bytes:
    return item["data"] if item["type"] == "text" else base64.b64decode(item["data"])


async def handler(ws: ServerConnection) -> None:
    emit(event="open", traceparent=ws.request.headers.get("traceparent") if ws.request else None)
    async for message in ws:
        emit(event="message", **describe(message))
        if message == "push":
            await ws.send("pushed by peer")
        await ws.send(message)


async def run_server() -> None:
    async with serve(handler, "127.0.0.1", 0) as server:
        emit(event="listening", port=server.sockets[0].getsockname()[1])
        await asyncio.sleep(60)  # the test ends the process long before this


async def run_client(url: str, items: list[dict[str, str]]) -> None:
    async with connect(url) as ws:
        for item in items:
            await ws.send(restore(item))
            emit(event="reply", **describe(await ws.recv()))


if __name__ == "__main__":
    if sys.argv[1] == "server":
        asyncio.run(run_server())
    else:
        asyncio.run(run_client(sys.argv[2], json.loads(sys.argv[3])))
