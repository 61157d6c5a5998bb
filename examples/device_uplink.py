"""A voice device on plain websockets: it streams its microphone as binary frames under a span of its own.

The device ("voice turn", a span the application starts) sends 50 frames of 640 bytes (20 ms of 16 kHz
16-bit audio each), then ``{"end": true}``; the server answers after that marker with a few audio chunks and
its own ``{"end": true}``. wstrace makes the uplink one **run** (a ``send`` stream span under "voice turn",
51 chunks), the server's side a receive span for the first frame plus one receive stream of all 51, and the
server's answer a reply stream under that receive stream, timed from the end of the user's speech. Run it::

    python examples/device_uplink.py

Spans are printed to the console. ``tests/examples/test_device_uplink.py`` runs it over loopback and checks the
trace shape.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

from wstrace.instrumentation.websockets import WebsocketsInstrumentor


FRAMES = 50
FRAME = b"\x00" * 640  # 20 ms of silence, 16 kHz 16-bit mono
REPLY_CHUNKS = 4
END = json.dumps({"end": True})


def is_end(payload: Any) -> bool:
    """The end marker of a turn, either way: ``{"end": true}`` (audio frames are binary)."""
    return isinstance(payload, str) and bool(json.loads(payload).get("end"))


async def assistant(ws: ServerConnection) -> None:
    """The server: listens to a turn's frames, answers after its end marker."""
    heard = 0
    async for message in ws:
        if not is_end(message):
            heard += len(message)
            continue
        for _ in range(REPLY_CHUNKS):
            await asyncio.sleep(0.005)  # text to speech
            await ws.send(b"\x01" * 640)
        await ws.send(json.dumps({"end": True, "heard": heard}))
        heard = 0


async def voice_turn(ws: ClientConnection, tracer: trace.Tracer) -> int:
    """The device: one turn, the microphone streamed under "voice turn", then the answer played."""
    with tracer.start_as_current_span("voice turn"):
        for _ in range(FRAMES):
            await ws.send(FRAME)
            await asyncio.sleep(0.001)  # the next 20 ms of audio (shortened)
        await ws.send(END)
        played = 0
        while not is_end(message := await ws.recv()):
            played += len(message)
        return played


async def main(provider: trace.TracerProvider) -> int:
    """Serve on a free loopback port, run one voice turn through it, return the bytes of audio played."""
    instrumentor = WebsocketsInstrumentor()
    instrumentor.instrument(tracer_provider=provider, stream_end=is_end)
    try:
        async with serve(assistant, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}/voice") as ws:
                played = await voice_turn(ws, provider.get_tracer("device"))
            await asyncio.sleep(0.05)  # the server's end sees the close
        return played
    finally:
        instrumentor.uninstrument()


if __name__ == "__main__":
    console = TracerProvider()
    console.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    print("played", asyncio.run(main(console)), "bytes")
