"""A FastAPI chat whose answers come from a worker task fed by a plain ``asyncio.Queue``.

The WebSocket handler only puts each prompt on the queue; a worker started at startup takes prompts one at a
time and streams the answer back to the prompt's connection, word by word, then ``{"done": true}``. The
worker runs outside any message's context (a plain queue carries none), so wstrace makes each answer one
**run**: a ``send`` stream span that is the root of a trace of its own, linked to the prompt it follows
(``wstrace.link.kind = inbound``), not a span per token. Run it and connect::

    python examples/queue_worker.py          # serves ws://127.0.0.1:8000/chat
    python -m websockets ws://127.0.0.1:8000/chat

Spans are printed to the console. ``tests/examples/test_queue_worker.py`` runs it over loopback and checks the
trace shape.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from wstrace.instrumentation.starlette import StarletteInstrumentor


def is_done(payload: Any) -> bool:
    """The end marker: an answer's last message is ``{"done": true}``."""
    try:
        return bool(json.loads(payload).get("done"))
    except (ValueError, AttributeError):
        return False


async def worker(queue: asyncio.Queue[tuple[WebSocket, str]]) -> None:
    """Answers prompts one at a time, word by word."""
    while True:
        websocket, prompt = await queue.get()
        try:
            for word in f"you said: {prompt}".split():
                await asyncio.sleep(0.005)  # the model thinking
                await websocket.send_text(json.dumps({"token": word}))
            await websocket.send_text(json.dumps({"done": True}))
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client left before its answer
        finally:
            queue.task_done()


def make_app(provider: trace.TracerProvider) -> FastAPI:
    """The chat app; ``provider`` serves wstrace."""
    queue: asyncio.Queue[tuple[WebSocket, str]] = asyncio.Queue()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        StarletteInstrumentor().instrument(tracer_provider=provider, stream_end=is_done)
        task = asyncio.create_task(worker(queue))
        try:
            yield
        finally:
            task.cancel()
            StarletteInstrumentor().uninstrument()

    app = FastAPI(lifespan=lifespan)

    @app.websocket("/chat")
    async def chat(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                await queue.put((websocket, await websocket.receive_text()))
        except WebSocketDisconnect:
            pass

    return app


def main() -> None:
    import uvicorn  # noqa: PLC0415 - only needed to serve

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    uvicorn.run(make_app(provider), host="127.0.0.1", port=8000)


if __name__ == "__main__":
    main()
