"""A streamed chat over plain websockets: the server answers each prompt token by token, the client has no spans.

The server sends each answer as ``{"token": ...}`` messages and a final ``{"done": true}``; wstrace is told
so with ``stream_end``. The client sends a prompt, reads the answer up to the end marker, then sends the next
prompt. With no tracing code in either, each prompt and its streamed answer are one trace: the client's send,
the server's receive, the server's reply stream, the client's receive stream; each later prompt links to the
answer before it (``wstrace.link.kind = previous``). Run it::

    python examples/chat_client.py

Spans are printed to the console. ``tests/examples/test_chat_client.py`` runs it over loopback and checks the
trace shape.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from wstrace.instrumentation.websockets import WebsocketsInstrumentor


PROMPTS = ("hello", "what is a websocket", "thanks")


def is_done(payload: Any) -> bool:
    """The end marker: the answer's last message is ``{"done": true}``."""
    return bool(json.loads(payload).get("done"))


async def answer(ws: ServerConnection) -> None:
    """The server: each prompt is answered word by word, then ``done``."""
    async for prompt in ws:
        for word in f"you said: {prompt}".split():
            await asyncio.sleep(0.005)  # the model thinking
            await ws.send(json.dumps({"token": word}))
        await ws.send(json.dumps({"done": True}))


async def ask(url: str, prompts: tuple[str, ...] = PROMPTS) -> list[str]:
    """The client: one prompt at a time, each answer read up to its end marker."""
    answers = []
    async with connect(url) as ws:
        for prompt in prompts:
            await ws.send(prompt)
            words = []
            while not is_done(message := await ws.recv()):
                words.append(json.loads(message)["token"])
            answers.append(" ".join(words))
    return answers


async def main(provider: trace.TracerProvider | None = None, prompts: tuple[str, ...] = PROMPTS) -> list[str]:
    """Serve on a free loopback port, chat through it, return the answers."""
    instrumentor = WebsocketsInstrumentor()
    instrumentor.instrument(tracer_provider=provider, stream_end=is_done)
    try:
        async with serve(answer, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            answers = await ask(f"ws://127.0.0.1:{port}/chat", prompts)
            await asyncio.sleep(0.05)  # the server's end sees the close
        return answers
    finally:
        instrumentor.uninstrument()


if __name__ == "__main__":
    console = TracerProvider()
    console.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    for line in asyncio.run(main(console)):
        print(line)
