"""Loopback exchanges and redact hooks for ``test_capture.py``; ``failing_redact`` runs in a fresh process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from tests.conftest import Telemetry
from wstrace.instrumentation.websockets import WebsocketsInstrumentor


def echo_server(received: list[Any]) -> Callable[[ServerConnection], Any]:
    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            received.append(message)
            await ws.send(message)

    return echo


def exchange(payloads: list[Any]) -> tuple[list[Any], list[Any]]:
    """Each payload to a websockets echo server and back: what the server's application got, and the replies."""
    received: list[Any] = []

    async def scenario() -> list[Any]:
        async with serve(echo_server(received), "127.0.0.1", 0) as srv:
            async with connect(f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}/chat") as ws:
                replies = []
                for payload in payloads:
                    await ws.send(payload)
                    replies.append(await ws.recv())
                return replies

    return received, asyncio.run(scenario())


def bodies(telemetry: Telemetry, name: str) -> list[tuple[Any, Any]]:
    spans = sorted(telemetry.named(name), key=lambda s: s.start_time or 0)
    return [
        (
            (s.attributes or {}).get("websocket.message.body"),
            (s.attributes or {}).get("websocket.message.body_truncated"),
        )
        for s in spans
    ]


def redact_raises(payload: Any) -> Any:
    """A redact hook that raises."""
    return 1 / 0


def redact_wrong_type(payload: Any) -> Any:
    """A redact hook that returns neither str, bytes nor None."""
    return 42


def failing_redact(hook: Callable[[Any], Any]) -> dict[str, Any]:
    """Capture on with a failing ``hook``, 31 messages through a websockets echo: what arrived, and the bodies."""
    telemetry = Telemetry()
    instrumentor = WebsocketsInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider, capture_payload=True, redact=hook)
    payloads: list[Any] = [f"secret {i}" for i in range(30)] + [b"bin"]
    try:
        received, replies = exchange(payloads)
    finally:
        instrumentor.uninstrument()
    return {
        "payloads": payloads,
        "received": received,
        "replies": replies,
        "bodies": bodies(telemetry, "send /chat") + bodies(telemetry, "receive /chat"),
    }
