"""The trust policy through real connections: what a peer's context and baggage can and cannot do.

An attacker (a raw socket: it can send anything) sends trace context and baggage in the upgrade
request (headers, query string or subprotocol token) and in every message envelope. ``parent`` lets
it choose the trace and hand its baggage to the handler; ``link`` only records a link; ``ignore``
reads nothing, not even the session id. Under every policy, no baggage entry becomes a span
attribute: wstrace copies no baggage onto spans at all.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from opentelemetry import baggage, trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind
from websockets.asyncio.server import ServerConnection, serve

from tests.conftest import Telemetry
from tests.instrumentation.peers import SERVERS
from tests.reliability.rawws import RawClient
from wstrace import envelope as codec
from wstrace.instrumentation.aiohttp import AiohttpInstrumentor
from wstrace.instrumentation.starlette import StarletteInstrumentor
from wstrace.instrumentation.tornado import TornadoInstrumentor
from wstrace.instrumentation.websockets import WebsocketsInstrumentor


TRACE = "0af7651916cd43dd8448eb211c80319c"
HANDSHAKE_SPAN = "b7ad6b7169203331"
MESSAGE_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
MESSAGE_SPAN = "00f067aa0ba902b7"
TP = f"00-{TRACE}-{HANDSHAKE_SPAN}-01"
MESSAGE_TP = f"00-{MESSAGE_TRACE}-{MESSAGE_SPAN}-01"
SESSION = "deadbeef" * 4
# Every word an attacker puts in tracestate or baggage: none may appear in any span.
SECRETS = ("mallory", "admin", "evilvendor", "hs-secret", "msg-secret")
HANDSHAKE_BAGGAGE = "user=mallory,role=admin,note=hs-secret"
MESSAGE_BAGGAGE = "user=mallory,note=msg-secret"


def attacker_request(source: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and request target carrying the attacker's handshake context through ``source``."""
    headers = [(b"wstrace-envelope", b"frame/1"), (b"wstrace-session", SESSION.encode())]
    target = b"/chat"
    if source == "headers":
        headers += [
            (b"traceparent", TP.encode()),
            (b"tracestate", b"evilvendor=mallory"),
            (b"baggage", HANDSHAKE_BAGGAGE.encode()),
        ]
    elif source == "query":
        target += (
            f"?traceparent={TP}&tracestate=evilvendor%3Dmallory&baggage=user%3Dmallory%2Cnote%3Dhs-secret".encode()
        )
    else:
        headers.append((b"Sec-WebSocket-Protocol", f"wstrace.tp.{TP}".encode()))
    return headers, target


def attacker_message(text: str) -> str:
    return codec.encode(
        text, {"traceparent": MESSAGE_TP, "tracestate": "evilvendor=mallory", "baggage": MESSAGE_BAGGAGE}
    )


@pytest.fixture
def instrument(telemetry: Telemetry) -> Iterator[Callable[..., None]]:
    instrumentors: list[Any] = []

    def do(*classes: type, **options: Any) -> None:
        for cls in classes or (WebsocketsInstrumentor,):
            instrumentor = cls()
            instrumentor.instrument(tracer_provider=telemetry.provider, **options)
            instrumentors.append(instrumentor)

    yield do
    for instrumentor in instrumentors:
        instrumentor.uninstrument()


async def reveal(ws: ServerConnection) -> None:
    """Answers each message with what its handler sees: the baggage and the current trace."""
    async for message in ws:
        context = trace.get_current_span().get_span_context()
        await ws.send(
            json.dumps({"echo": message, "baggage": dict(baggage.get_all()), "trace": f"{context.trace_id:032x}"})
        )


@asynccontextmanager
async def revealing_server() -> AsyncIterator[str]:
    async with serve(reveal, "127.0.0.1", 0) as srv:
        yield f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}"


def linked(span: ReadableSpan, span_id: str, kind: str) -> bool:
    return any(
        f"{link.context.span_id:016x}" == span_id and (link.attributes or {}).get("wstrace.link.kind") == kind
        for link in span.links
    )


def assert_no_secret_in_spans(telemetry: Telemetry) -> None:
    for span in telemetry.spans:
        values = [span.name, str(span.status.description or "")]
        for attributes in [
            span.attributes,
            *(e.attributes for e in span.events),
            *(link.attributes for link in span.links),
        ]:
            for key, value in (attributes or {}).items():
                values += [key, str(value)]
        for secret in SECRETS:
            assert not any(secret in v for v in values), f"{secret!r} reached span {span.name}: {values}"


@pytest.mark.parametrize("source", ["headers", "query", "subprotocol"])
@pytest.mark.parametrize("trust", ["parent", "link", "ignore"])
def test_trust_policy_through_a_real_connection(
    telemetry: Telemetry, instrument: Callable[..., None], trust: str, source: str
) -> None:
    """parent adopts the attacker's trace and baggage, link only links, ignore reads nothing; no baggage in spans."""
    instrument(trust=trust, handshake_sources=source)
    headers, target = attacker_request(source)

    async def attack() -> dict[str, Any]:
        async with revealing_server() as url:
            client = await RawClient.connect(url, headers, target=target)
            assert client.status == 101
            assert client.header("wstrace-envelope") == "frame/1"
            session = client.header("wstrace-session")
            await client.send(attacker_message("hello"))
            reply = json.loads(codec.decode(await client.recv()).payload)
            await client.close_cleanly()
            return {**reply, "session": session}

    seen = asyncio.run(attack())
    assert seen["echo"] == "hello", "the payload is delivered stripped of the envelope under every policy"
    handshake = next(s for s in telemetry.named("GET /chat") if s.kind is SpanKind.SERVER)
    receive = telemetry.one("receive /chat")
    handshake_trace = f"{handshake.context.trace_id:032x}"
    if trust == "parent":
        assert handshake.parent is not None and f"{handshake.parent.span_id:016x}" == HANDSHAKE_SPAN
        assert handshake_trace == TRACE
        assert receive.parent is not None and f"{receive.parent.span_id:016x}" == MESSAGE_SPAN
        assert seen["trace"] == MESSAGE_TRACE
        assert seen["baggage"] == {"user": "mallory", "note": "msg-secret"}, "parent hands the handler the baggage"
    else:
        assert handshake_trace != TRACE and handshake.parent is None
        assert receive.parent is None and seen["trace"] not in (TRACE, MESSAGE_TRACE)
        assert seen["baggage"] == {}, f"{trust}: the peer's baggage never reaches the handler"
    assert linked(handshake, HANDSHAKE_SPAN, "remote") is (trust == "link")
    assert linked(receive, MESSAGE_SPAN, "remote") is (trust == "link")
    assert (handshake.attributes or {}).get("wstrace.context.source") == (None if trust == "ignore" else source)
    adopted = (handshake.attributes or {})["websocket.session.id"] == SESSION
    assert adopted is (trust != "ignore"), "ignore does not adopt the session id the client offers"
    assert seen["session"] == (handshake.attributes or {})["websocket.session.id"]
    assert_no_secret_in_spans(telemetry)


@pytest.mark.parametrize("trust", ["parent", "link", "ignore"])
@pytest.mark.parametrize("server", ["aiohttp", "starlette-uvicorn", "tornado"])
def test_trust_policy_on_every_server_adapter(
    telemetry: Telemetry, instrument: Callable[..., None], server: str, trust: str
) -> None:
    """The same policy holds whichever adapter reads the headers and envelopes."""
    instrument(WebsocketsInstrumentor, AiohttpInstrumentor, StarletteInstrumentor, TornadoInstrumentor, trust=trust)
    headers, _ = attacker_request("headers")

    async def attack() -> Any:
        async with SERVERS[server]() as url:
            client = await RawClient.connect(url, headers)
            assert client.status == 101
            await client.send(attacker_message("hello"))
            echo = codec.decode(await client.recv()).payload
            await client.close_cleanly()
            return echo

    assert asyncio.run(attack()) == b"hello"
    handshake = next(s for s in telemetry.named("GET /matrix") if s.kind is SpanKind.SERVER)
    receive = next(iter(telemetry.named("receive /matrix")))
    assert (f"{handshake.context.trace_id:032x}" == TRACE) is (trust == "parent")
    assert (receive.parent is not None and f"{receive.parent.span_id:016x}" == MESSAGE_SPAN) is (trust == "parent")
    assert linked(handshake, HANDSHAKE_SPAN, "remote") is (trust == "link")
    assert linked(receive, MESSAGE_SPAN, "remote") is (trust == "link")
    assert_no_secret_in_spans(telemetry)


def test_link_does_not_even_parse_hostile_baggage(
    telemetry: Telemetry, instrument: Callable[..., None], caplog: pytest.LogCaptureFixture
) -> None:
    """Under link a peer's baggage is never handed to the propagator: 100 malformed entries per message log nothing.

    Under parent the W3C propagator logs a warning per malformed entry, an attacker-driven log flood:
    one more reason for public endpoints not to use parent.
    """
    instrument(trust="link")
    junk = ",".join(["bad entry"] * 100)

    async def attack() -> None:
        async with revealing_server() as url:
            client = await RawClient.connect(
                url + "/chat", [(b"wstrace-envelope", b"frame/1"), (b"baggage", junk.encode())]
            )
            for i in range(20):
                await client.send(codec.encode(str(i), {"traceparent": MESSAGE_TP, "baggage": junk}))
                assert json.loads(codec.decode(await client.recv()).payload)["echo"] == str(i)
            await client.close_cleanly()

    with caplog.at_level(logging.DEBUG):
        asyncio.run(attack())
    baggage_logs = [r for r in caplog.records if r.name.startswith("opentelemetry.baggage")]
    assert baggage_logs == []
    # Twenty messages with one sender context: the first on its own span, then one receive stream of all twenty.
    receives = telemetry.named("receive /chat")
    assert len(receives) == 2
    (stream,) = [s for s in receives if "wstrace.stream.chunk_count" in s.attributes]
    assert stream.attributes["wstrace.stream.chunk_count"] == 20
