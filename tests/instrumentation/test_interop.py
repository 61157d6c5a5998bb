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
from tests.instrumentation.peers import CLIENTS, INSTRUMENTORS, ROUTE, SERVER_ROUTES, SERVERS
from tests.reliability.rawws import RawClient, RawServer
from wstrace import envelope as codec


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
    server_route = SERVER_ROUTES.get(server, ROUTE)

    async def scenario() -> list[Any]:
        async with SERVERS[server]() as url:
            replies = await CLIENTS[client](url, PAYLOADS)
        await asyncio.sleep(0.1)  # both ends record their close
        return replies

    assert asyncio.run(scenario()) == PAYLOADS
    _wait_for_closes(telemetry)
    client_hs = contract.handshake(telemetry, ROUTE, SpanKind.CLIENT)
    server_hs = contract.handshake(telemetry, server_route, SpanKind.SERVER, path=ROUTE)
    assert contract.parent_id(server_hs) == contract.span_id(client_hs), "handshake context was not carried"
    assert client_hs.attributes["websocket.envelope"] == server_hs.attributes["websocket.envelope"] == "frame"
    assert client_hs.attributes["websocket.session.id"] == server_hs.attributes["websocket.session.id"]
    assert server_hs.attributes["client.address"] == "127.0.0.1"
    assert isinstance(server_hs.attributes["server.port"], int)
    assert client_hs.attributes["server.address"] == "127.0.0.1"
    client_sends = contract.messages(telemetry, ROUTE, "send", client_hs, TYPES)
    server_receives = contract.messages(telemetry, server_route, "receive", server_hs, TYPES)
    server_sends = contract.messages(telemetry, server_route, "send", server_hs, TYPES)
    client_receives = contract.messages(telemetry, ROUTE, "receive", client_hs, TYPES)
    contract.continued(client_sends, server_receives)
    contract.continued(server_sends, client_receives)
    contract.no_open_spans(telemetry)
    contract.metrics(meter, ROUTE, len(PAYLOADS), server_route)


def _wait_for_closes(telemetry: Telemetry) -> None:
    """Threaded clients and servers record their close a moment after the payloads are back."""
    for _ in range(100):
        if not telemetry.open_spans.names():
            return
        threading.Event().wait(0.02)


# The frame type decides the envelope layout (docs/protocol.md, sections 5 and 8) ------------------

TP = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
TEXT_LAYOUT = b"\x1ewt1traceparent=" + TP.encode() + b"\x1ebin"  # the text layout, sent in a binary frame
BINARY_LAYOUT = b"\x1ewt\x01\x00\x00bin"  # the binary layout: an envelope, stripped


def _no_span_continues_the_forged_context(telemetry: Telemetry) -> None:
    for span in (s for s in telemetry.spans if s.name.startswith("receive ")):  # a server's route may differ
        assert span.get_span_context().trace_id != int("ab" * 16, 16), span.attributes
        assert not any(link.context.trace_id == int("ab" * 16, 16) for link in span.links)


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_every_server_delivers_a_binary_frame_in_the_text_layout_unchanged(
    instrumented: Telemetry, server: str
) -> None:
    """Each server adapter tells binary from text: its application echoes the text layout as it came."""

    async def scenario() -> list[Any]:
        async with SERVERS[server]() as url:
            client = await RawClient.connect(url, [(b"wstrace-envelope", b"frame/1")])
            try:
                assert client.header("wstrace-envelope") == "frame/1"
                echoes = []
                for payload in (TEXT_LAYOUT, BINARY_LAYOUT):
                    await client.send(payload)  # a binary frame, bare
                    echoes.append(codec.decode(await client.recv(), text=False))  # the server envelopes its echo
                return echoes
            finally:
                await client.close_cleanly()

    echoes = asyncio.run(scenario())
    assert [echo.payload for echo in echoes] == [TEXT_LAYOUT, b"bin"]
    assert all(echo.carrier is not None for echo in echoes), "the echoes are enveloped: the envelope is on"
    _no_span_continues_the_forged_context(instrumented)


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_every_client_delivers_a_binary_frame_in_the_text_layout_unchanged(
    instrumented: Telemetry, client: str
) -> None:
    """Each client adapter tells binary from text: a server's binary frame in the text layout arrives as it is."""

    async def scenario() -> list[Any]:
        async with RawServer(replies=[TEXT_LAYOUT, BINARY_LAYOUT]) as url:
            return await CLIENTS[client](url + ROUTE, ["0", "1"])

    assert asyncio.run(scenario()) == [TEXT_LAYOUT, b"bin"]
    _no_span_continues_the_forged_context(instrumented)
