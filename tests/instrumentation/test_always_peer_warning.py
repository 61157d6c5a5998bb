"""``envelope="always"`` against a peer that sends plain messages: one warning per connection, payloads intact."""

from __future__ import annotations

import asyncio
import logging

import pytest
import websocket
from opentelemetry.trace import SpanKind
from websockets.asyncio.server import ServerConnection, serve

from tests.conftest import Telemetry
from wstrace.instrumentation.websockets import WebsocketsInstrumentor, server_options


async def _talk(envelope: str, connections: int) -> list[str]:
    """A bare client (websocket-client, not instrumented here) sends two messages on each connection."""
    got: list[str] = []

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            got.append(str(message))

    async with serve(handler, "127.0.0.1", 0, process_request=server_options(envelope=envelope)) as server:
        port = server.sockets[0].getsockname()[1]

        def client(n: int) -> None:
            ws = websocket.create_connection(f"ws://127.0.0.1:{port}/")
            ws.send(f"plain {n}.1")
            ws.send(f"plain {n}.2")
            ws.close()

        for n in range(connections):
            await asyncio.to_thread(client, n)
        await asyncio.sleep(0.05)
    return got


@pytest.mark.parametrize(("envelope", "warnings"), [("always", 2), ("negotiate", 0)])
def test_a_plain_peer_of_an_always_end_is_warned_about_once_per_connection(
    telemetry: Telemetry, caplog: pytest.LogCaptureFixture, envelope: str, warnings: int
) -> None:
    instrumentor = WebsocketsInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    try:
        with caplog.at_level(logging.WARNING, logger="wstrace"):
            got = asyncio.run(_talk(envelope, 2))
    finally:
        instrumentor.uninstrument()
    assert sorted(got) == ["plain 0.1", "plain 0.2", "plain 1.1", "plain 1.2"]  # delivered as they are
    found = [r.getMessage() for r in caplog.records if "envelope='always'" in r.getMessage()]
    assert len(found) == warnings, found
    sessions = {span.attributes["websocket.session.id"] for span in telemetry.spans if span.kind is SpanKind.SERVER}
    assert len(sessions) == 2
    assert sorted(s for s in sessions for message in found if s in message) == (sorted(sessions) if warnings else [])
