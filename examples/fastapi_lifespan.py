"""A FastAPI chat endpoint with FastAPI's built-in telemetry on and wstrace instrumented inside ``lifespan``.

FastAPI (0.165 and later) makes a ``WS /chat/{room}`` SERVER span for each
connection once a tracer provider is set. wstrace, instrumented in
``lifespan`` (after Starlette has built the app's middleware stack for the
lifespan call), adds its handshake span as a child of that span and traces
every message; it writes nothing on FastAPI's span. Run it and connect::

    python examples/fastapi_lifespan.py          # serves ws://127.0.0.1:8000/chat/{room}
    python -m websockets ws://127.0.0.1:8000/chat/lobby

Spans are printed to the console. ``tests/examples/test_fastapi_lifespan.py``
runs it over loopback and checks the trace shape.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from wstrace.instrumentation.starlette import StarletteInstrumentor


def make_app(provider: trace.TracerProvider) -> FastAPI:
    """The chat app; ``provider`` serves FastAPI's telemetry and wstrace alike."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Late on purpose: the stack is built already; wstrace rebuilds it at the next call.
        StarletteInstrumentor().instrument(tracer_provider=provider, model="message")
        try:
            yield
        finally:
            StarletteInstrumentor().uninstrument()

    # Metrics and logs are FastAPI's too; this example shows traces only.
    app = FastAPI(lifespan=lifespan, telemetry={"tracer_provider": provider, "metrics": False, "logs": False})

    @app.websocket("/chat/{room}")
    async def chat(websocket: WebSocket, room: str) -> None:
        await websocket.accept()
        try:
            while True:
                text = await websocket.receive_text()
                await websocket.send_text(f"{room}: {text}")
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
