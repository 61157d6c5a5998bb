"""A real uvicorn server on a free loopback port, and the Starlette apps the ASGI tests serve.

Shared by ``test_asgi.py`` and ``test_starlette.py``; it holds no fixture.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from opentelemetry import trace
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from tests.conftest import Telemetry


@contextmanager
def serve(app: Any, ws: str = "auto", *, scheme: str = "ws", lifespan: str = "auto") -> Iterator[str]:
    """Run ``app`` under uvicorn in a thread of its own; yields ``ws://127.0.0.1:<port>`` (or ``scheme``)."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, ws=ws, log_level="warning", log_config=None, lifespan=lifespan
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "uvicorn did not start"
        assert time.monotonic() < deadline, "uvicorn did not start in time"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"{scheme}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def settle(telemetry: Telemetry, timeout: float = 3.0) -> None:
    """Wait until the server thread has ended its spans (it records the close a moment after the client)."""
    deadline = time.monotonic() + timeout
    while telemetry.open_spans.names() and time.monotonic() < deadline:
        time.sleep(0.01)


def current_span_id() -> int:
    return trace.get_current_span().get_span_context().span_id


async def echo(ws: WebSocket) -> None:
    """Echo every message with its frame type until the peer closes."""
    await ws.accept()
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await ws.send_text(message["text"])
        else:
            await ws.send_bytes(message["bytes"])


def starlette_app(routes: list[tuple[str, Callable[[WebSocket], Any]]] | None = None, **kwargs: Any) -> Starlette:
    """A Starlette app with an echo at ``/chat`` and the given routes."""
    table = [WebSocketRoute("/chat", echo), *(WebSocketRoute(path, endpoint) for path, endpoint in routes or ())]
    return Starlette(routes=table, **kwargs)
