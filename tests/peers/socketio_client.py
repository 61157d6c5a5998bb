"""A python-socketio client process, bare unless ``instrumented`` is given, for the Socket.IO tests.

    python socketio_client.py URL [offer]

The same scenario as ``socketio_client.js``: over the WebSocket transport, echo (with an ack, several arguments),
echo (no argument), join, shout, ask (the server calls ``question``; this client answers). Prints one line,
``PEER `` and a JSON object: every event received with its arguments, and every ack's arguments. ``offer``
sends the wstrace offer header as an un-instrumented client that does not strip carriers would.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import socketio


async def main(url: str, offer: bool) -> None:
    received: list[Any] = []
    acks: list[Any] = []
    client = socketio.AsyncClient(reconnection=False)

    @client.on("*")
    async def any_event(event: str, *args: Any) -> None:
        received.append([event, list(args)])

    @client.on("question")
    async def question(*args: Any) -> Any:
        received.append(["question", list(args)])
        return {"answer": args[0] if args else None}

    headers = {"wstrace-socketio": "1"} if offer else {}
    await client.connect(url, headers=headers, transports=["websocket"])
    acks.append(await client.call("echo", ({"a": 1}, "two", [3]), timeout=5))
    acks.append(await client.call("echo", timeout=5))
    acks.append(await client.call("join", timeout=5))
    acks.append(await client.call("shout", "hello", timeout=5))
    acks.append(await client.call("ask", "why?", timeout=5))
    await asyncio.sleep(0.2)
    await client.disconnect()
    print("PEER " + json.dumps({"received": received, "acks": acks}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], len(sys.argv) > 2 and sys.argv[2] == "offer"))
