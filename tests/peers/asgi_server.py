"""A Starlette app instrumented by wstrace, served by one ASGI server, in a process of its own.

    python asgi_server.py daphne|uvicorn|hypercorn

Listens on a free loopback port; prints (``PEER `` + one JSON object per line) the port, each message the app
receives, and the end of each connection. Every span is printed by the SDK's console exporter on the same
stream as it ends. The app on ``/chat`` sends ``welcome`` as soon as it accepts, then echoes every message.
daphne runs on Twisted's reactor, which can start only once per process: hence a process per server.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from tests.peers.bare import describe, emit
from wstrace.instrumentation.starlette import StarletteInstrumentor


WELCOME = "welcome"


async def chat(ws: WebSocket) -> None:
    await ws.accept()
    await ws.send_text(WELCOME)
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            emit(event="closed")
            return
        if message.get("text") is not None:
            emit(event="message", **describe(message["text"]))
            await ws.send_text(message["text"])
        else:
            emit(event="message", **describe(message["bytes"]))
            await ws.send_bytes(message["bytes"])


def make_app() -> Any:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(formatter=lambda span: span.to_json() + "\n")))
    StarletteInstrumentor().instrument(tracer_provider=provider)
    return Starlette(routes=[WebSocketRoute("/chat", chat)])


def run_daphne(app: Any) -> None:
    from daphne.server import Server  # noqa: PLC0415 - installs Twisted's asyncio reactor on import

    class Announcing(Server):  # type: ignore[misc]
        def listen_success(self, port: Any) -> None:
            super().listen_success(port)
            emit(event="listening", port=port.getHost().port)

    Announcing(app, endpoints=["tcp:port=0:interface=127.0.0.1"], verbosity=0).run()


def run_uvicorn(app: Any) -> None:
    import uvicorn  # noqa: PLC0415

    sock = socket.create_server(("127.0.0.1", 0))
    emit(event="listening", port=sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", log_config=None))
    server.run(sockets=[sock])


def run_hypercorn(app: Any) -> None:
    from hypercorn.asyncio import serve  # noqa: PLC0415
    from hypercorn.config import Config  # noqa: PLC0415

    sock = socket.create_server(("127.0.0.1", 0))
    sock.set_inheritable(True)
    emit(event="listening", port=sock.getsockname()[1])
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.loglevel = "WARNING"
    asyncio.run(serve(app, config))


if __name__ == "__main__":
    runners = {"daphne": run_daphne, "uvicorn": run_uvicorn, "hypercorn": run_hypercorn}
    try:
        runners[sys.argv[1]](make_app())
    except KeyboardInterrupt:
        pass
