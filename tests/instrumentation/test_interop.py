"""Every instrumented client against every instrumented server, on loopback.

Each pair must show the same thing: the server's handshake continues the client's, a client send continues on
the server's receive and the server's reply continues on the client's receive (the envelope, both ways), text
and binary payloads arrive byte for byte, and both sides record the same span names and attributes (checked by
the one shared contract).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.trace import SpanKind

from tests.conftest import Telemetry
from tests.instrumentation import contract
from tests.instrumentation.peers import CLIENTS, INSTRUMENTORS, ROUTE, SERVERS


PAYLOADS: list[str | bytes] = ["hello", b"\x00\x01binary\xff", "\x1ewt1\x1elook-alike", '{"json": [1, 2]}']
TYPES = ["binary" if isinstance(p, bytes) else "text" for p in PAYLOADS]


@pytest.fixture
def meter() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def instrumented(telemetry: Telemetry, meter: InMemoryMetricReader) -> Iterator[Telemetry]:
    meter_provider = MeterProvider(metric_readers=[meter])
    instrumentors = [cls() for cls in INSTRUMENTORS]
    for instrumentor in instrumentors:
        instrumentor.instrument(tracer_provider=telemetry.provider, meter_provider=meter_provider)
    yield telemetry
    for instrumentor in instrumentors:
        instrumentor.uninstrument()


@pytest.mark.parametrize("server", sorted(SERVERS))
@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_pair(instrumented: Telemetry, meter: InMemoryMetricReader, client: str, server: str) -> None:
    """Handshake propagation, envelope both ways, identical text and binary payloads, one shared contract,
    and the same metrics from both ends."""
    telemetry = instrumented

    async def scenario() -> list[Any]:
        async with SERVERS[server]() as url:
            replies = await CLIENTS[client](url, PAYLOADS)
        await asyncio.sleep(0.1)  # both ends record their close
        return replies

    assert asyncio.run(scenario()) == PAYLOADS
    _wait_for_closes(telemetry)
    client_hs = contract.handshake(telemetry, ROUTE, SpanKind.CLIENT)
    server_hs = contract.handshake(telemetry, ROUTE, SpanKind.SERVER)
    assert contract.parent_id(server_hs) == contract.span_id(client_hs), "handshake context was not carried"
    assert client_hs.attributes["websocket.envelope"] == server_hs.attributes["websocket.envelope"] == "frame"
    assert client_hs.attributes["websocket.session.id"] == server_hs.attributes["websocket.session.id"]
    assert server_hs.attributes["client.address"] == "127.0.0.1"
    assert isinstance(server_hs.attributes["server.port"], int)
    assert client_hs.attributes["server.address"] == "127.0.0.1"
    client_sends = contract.messages(telemetry, ROUTE, "send", client_hs, TYPES)
    server_receives = contract.messages(telemetry, ROUTE, "receive", server_hs, TYPES)
    server_sends = contract.messages(telemetry, ROUTE, "send", server_hs, TYPES)
    client_receives = contract.messages(telemetry, ROUTE, "receive", client_hs, TYPES)
    contract.continued(client_sends, server_receives)
    contract.continued(server_sends, client_receives)
    contract.no_open_spans(telemetry)
    contract.metrics(meter, ROUTE, len(PAYLOADS))


def _wait_for_closes(telemetry: Telemetry) -> None:
    """Threaded clients and servers record their close a moment after the payloads are back."""
    for _ in range(100):
        if not telemetry.open_spans.names():
            return
        threading.Event().wait(0.02)
