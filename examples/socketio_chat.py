"""A python-socketio chat: the server streams each answer back word by word, then says ``done``.

The server is an ``AsyncServer`` served as an ASGI app; its ``chat`` handler emits one ``token`` event per word to
the asking client, then one ``done`` event. The client has no spans of its own: it emits ``chat`` and collects the
tokens until ``done``. With wstrace on both ends, each question is **one trace**: the client's ``send chat /``, the
server's ``process chat /`` under it, one ``send token /`` stream span for all the words (with the stream
attributes: chunk count, time to first and last chunk), the client's one ``process token /`` receive stream under
it (every word's handler runs in it; its time to first and last chunk start at the client's emit), and ``send done
/`` with the client's ``process done /``. Run it::

    python examples/socketio_chat.py serve    # http://127.0.0.1:8000
    python examples/socketio_chat.py ask      # three questions, in another terminal

Spans are printed to the console. ``tests/examples/test_socketio_chat.py`` runs both over loopback and checks the
trace shape.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import socketio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from wstrace.instrumentation.socketio import SocketioInstrumentor


PROMPTS = ("hello", "what is a websocket", "thanks")


def answer(prompt: str) -> list[str]:
    """The words of the answer to ``prompt`` (the model, here)."""
    return f"you said: {prompt}".split()


def make_app() -> Any:
    """The chat server, as an ASGI app."""
    sio = socketio.AsyncServer(async_mode="asgi")

    @sio.on("chat")
    async def chat(sid: str, prompt: str) -> None:
        for word in answer(prompt):
            await asyncio.sleep(0.005)  # the model thinking
            await sio.emit("token", word, to=sid)
        await sio.emit("done", to=sid)

    return socketio.ASGIApp(sio)


async def ask(url: str, prompts: tuple[str, ...] = PROMPTS) -> list[str]:
    """Ask each prompt in turn over one connection; returns the answers."""
    client = socketio.AsyncClient()
    words: list[str] = []
    answers: asyncio.Queue[str] = asyncio.Queue()

    @client.on("token")
    async def token(word: str) -> None:
        words.append(word)

    @client.on("done")
    async def done() -> None:
        answers.put_nowait(" ".join(words))
        words.clear()

    await client.connect(url, transports=["websocket"])
    try:
        return [await _asked(client, prompt, answers) for prompt in prompts]
    finally:
        await client.disconnect()


async def _asked(client: socketio.AsyncClient, prompt: str, answers: asyncio.Queue[str]) -> str:
    await client.emit("chat", prompt)
    return await asyncio.wait_for(answers.get(), 10)


def instrument(provider: trace.TracerProvider) -> None:
    """wstrace for every python-socketio server and client of this process (zero-code does the same)."""
    SocketioInstrumentor().instrument(tracer_provider=provider)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", choices=("serve", "ask"))
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    args = parser.parse_args()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    instrument(provider)
    if args.role == "serve":
        import uvicorn  # noqa: PLC0415 - only needed to serve

        uvicorn.run(make_app(), host="127.0.0.1", port=8000)
    else:
        for prompt, reply in zip(PROMPTS, asyncio.run(ask(args.url)), strict=True):
            print(f"{prompt!r} -> {reply!r}")


if __name__ == "__main__":
    main()
