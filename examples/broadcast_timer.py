"""A websockets server whose background task pushes a timer tick to every connected client.

Three clients connect and listen; a timer task, started outside any connection, sends each of them a tick
every 50 ms, five times, with ``send`` on each connection (``websockets.broadcast()`` writes frames without
``send`` and is not traced). The pushes have no context, so wstrace makes them, per connection, one **run**:
a ``send`` stream span counting the ticks, the root of a trace of its own, not a span per tick. Each client
receives the run as a receive span for the first tick and one receive stream of all of them. Run it::

    python examples/broadcast_timer.py

Spans are printed to the console. ``tests/examples/test_broadcast_timer.py`` runs it over loopback and checks
the trace shape.
"""

from __future__ import annotations

import asyncio
import json

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from wstrace.instrumentation.websockets import WebsocketsInstrumentor


CLIENTS = 3
TICKS = 5
INTERVAL = 0.05


class Timer:
    """The server: connections register, a background task pushes ticks to all of them."""

    def __init__(self, clients: int = CLIENTS) -> None:
        self.connections: set[ServerConnection] = set()
        self.everyone = asyncio.Event()
        self.clients = clients

    async def handler(self, ws: ServerConnection) -> None:
        self.connections.add(ws)
        if len(self.connections) == self.clients:
            self.everyone.set()
        try:
            await ws.wait_closed()
        finally:
            self.connections.discard(ws)

    async def run(self, ticks: int = TICKS) -> None:
        await self.everyone.wait()
        for n in range(1, ticks + 1):
            await asyncio.sleep(INTERVAL)
            for ws in list(self.connections):
                await ws.send(json.dumps({"tick": n}))


async def listen(url: str, ticks: int = TICKS) -> list[int]:
    """A client: reads the ticks, then leaves."""
    async with connect(url) as ws:
        return [json.loads(await ws.recv())["tick"] for _ in range(ticks)]


async def main(provider: trace.TracerProvider | None = None) -> list[list[int]]:
    """Serve on a free loopback port, let three clients hear five ticks each, return what they heard."""
    instrumentor = WebsocketsInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        timer = Timer()
        async with serve(timer.handler, "127.0.0.1", 0) as server:
            ticking = asyncio.create_task(timer.run())
            port = server.sockets[0].getsockname()[1]
            heard = await asyncio.gather(*(listen(f"ws://127.0.0.1:{port}/clock") for _ in range(CLIENTS)))
            await ticking
            await asyncio.sleep(0.05)  # the server's ends see the closes
        return list(heard)
    finally:
        instrumentor.uninstrument()


if __name__ == "__main__":
    console = TracerProvider()
    console.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    for ticks in asyncio.run(main(console)):
        print("heard", ticks)
