"""The standard instrumentor contract, held to by every adapter over a real loopback round trip.

Each case drives its library's own client and server (the clients of ``peers.py``, the servers of the
shared helper modules) through: ``uninstrument()`` restores everything, instrumenting twice wraps once, a no-op
tracer provider records nothing, and ``suppress_instrumentation()`` silences the end it surrounds.

websocket-client has no server: its peer is a websockets server instrumented by ``WebsocketsInstrumentor`` (the
case's ``peer``), whose spans show that only the client end is affected. The Starlette instrumentor has no
client: its peer is a bare websockets client.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import websocket
import websockets.asyncio.client
import websockets.asyncio.connection
import websockets.asyncio.server
import websockets.sync.client
import websockets.sync.server
from aiohttp import web
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from tornado import websocket as tornado_websocket

from tests.conftest import Telemetry
from tests.instrumentation import aiohttp_app, contract, tornado_app, uvicorn_server
from tests.instrumentation.peers import CLIENTS
from wstrace.instrumentation.aiohttp import AiohttpInstrumentor
from wstrace.instrumentation.starlette import StarletteInstrumentor
from wstrace.instrumentation.tornado import TornadoInstrumentor
from wstrace.instrumentation.websocket_client import WebsocketClientInstrumentor
from wstrace.instrumentation.websockets import WebsocketsInstrumentor


ROUTE = "/chat"
PAYLOADS: list[str | bytes] = ["ping", b"\x00pong"]
TYPES = ["binary" if isinstance(p, bytes) else "text" for p in PAYLOADS]
WSTRACE_HEADERS = frozenset({"traceparent", "wstrace-envelope", "wstrace-session"})
CLIENT, SERVER = SpanKind.CLIENT, SpanKind.SERVER


@dataclass
class Seen:
    """The handshake header names one server received and answered with (lower case)."""

    request: set[str] = field(default_factory=set)
    response: set[str] = field(default_factory=set)

    def record(self, request: Iterable[str | bytes], response: Iterable[str | bytes]) -> None:
        self.request.update(_name(n) for n in request)
        self.response.update(_name(n) for n in response)


def _name(name: str | bytes) -> str:
    return (name.decode("latin-1") if isinstance(name, bytes) else name).lower()


Server = Callable[[Seen, bool], AbstractAsyncContextManager[str]]
"""Starts an echo server on ROUTE that records into ``Seen``; ``True``: its connections run suppressed."""


def in_loop(start: Callable[[Seen], AbstractAsyncContextManager[str]]) -> Server:
    """A server in the test's event loop: what it accepts runs in the context it was started in."""

    @asynccontextmanager
    async def server(seen: Seen, suppressed: bool) -> AsyncIterator[str]:
        async with AsyncExitStack() as stack:
            with suppress_instrumentation() if suppressed else nullcontext():
                url = await stack.enter_async_context(start(seen))
            yield url

    return server


@in_loop
@asynccontextmanager
async def websockets_server(seen: Seen) -> AsyncIterator[str]:
    async def echo(ws: websockets.asyncio.server.ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    def response(ws: Any, request: Any, response: Any) -> None:
        # The headers as they went over the wire: once open, the adapter drops its own from both.
        seen.record(request.headers, response.headers)

    async with websockets.asyncio.server.serve(echo, "127.0.0.1", 0, process_response=response) as srv:
        yield f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}{ROUTE}"


@in_loop
def aiohttp_server(seen: Seen) -> AbstractAsyncContextManager[str]:
    async def echo(request: web.Request) -> web.StreamResponse:
        ws = await aiohttp_app.echo(request)
        seen.record(request.headers, ws.headers)
        return ws

    return aiohttp_app.server(echo, ROUTE)


@in_loop
def tornado_server(seen: Seen) -> AbstractAsyncContextManager[str]:
    class Echo(tornado_app.Echo):
        def open(self) -> None:
            seen.record(self.request.headers, self._headers)  # the 101's headers, as sent

    return tornado_app.server(Echo, ROUTE)


def uvicorn(app: Callable[[], Any]) -> Server:
    """``app()`` under a real uvicorn (in a thread of its own: suppressed by wrapping the ASGI app)."""

    @asynccontextmanager
    async def server(seen: Seen, suppressed: bool) -> AsyncIterator[str]:
        inner = app()

        async def outer(scope: Any, receive: Any, send: Any) -> None:
            async def sending(message: Any) -> None:
                if message["type"] == "websocket.accept":
                    seen.record((n for n, _ in scope["headers"]), (n for n, _ in message.get("headers", ())))
                await send(message)

            with suppress_instrumentation() if suppressed else nullcontext():
                await inner(scope, receive, sending)

        with uvicorn_server.serve(outer) as base:
            yield base + ROUTE

    return server


def fastapi_app() -> FastAPI:
    app = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})  # FastAPI's own spans: off
    app.add_api_websocket_route(ROUTE, uvicorn_server.echo)
    return app


@dataclass(frozen=True)
class Case:
    instrumentor: type[BaseInstrumentor]
    server: Server
    client: str
    """A key of peers.CLIENTS."""
    traces: tuple[SpanKind, ...]
    """The ends of a connection the instrumentor traces."""
    patched: tuple[tuple[Any, str], ...]
    """Attributes it wraps while instrumented and must restore."""
    peer: type[BaseInstrumentor] | None = None
    """Instruments the other end, a server (websocket-client has none of its own)."""

    @property
    def ends(self) -> tuple[SpanKind, ...]:
        return (*self.traces, SERVER) if self.peer else self.traces


CASES = {
    "websockets": Case(
        WebsocketsInstrumentor,
        websockets_server,
        "websockets-asyncio",
        (CLIENT, SERVER),
        (
            (websockets.asyncio.client.ClientConnection, "handshake"),
            (websockets.asyncio.server.ServerConnection, "handshake"),
            (websockets.sync.client.ClientConnection, "handshake"),
            (websockets.sync.server.ServerConnection, "handshake"),
            (websockets.asyncio.connection.Connection, "send"),
            (websockets.asyncio.connection.Connection, "recv"),
        ),
    ),
    "aiohttp": Case(
        AiohttpInstrumentor,
        aiohttp_server,
        "aiohttp",
        (CLIENT, SERVER),
        (
            (aiohttp.ClientSession, "_ws_connect"),
            (web.WebSocketResponse, "prepare"),
            (aiohttp.ClientWebSocketResponse, "send_str"),
            (web.WebSocketResponse, "receive"),
        ),
    ),
    "tornado": Case(
        TornadoInstrumentor,
        tornado_server,
        "tornado",
        (CLIENT, SERVER),
        (
            (tornado_websocket.WebSocketHandler, "get"),
            (tornado_websocket.WebSocketClientConnection, "__init__"),
            (tornado_websocket.WebSocketProtocol13, "write_message"),
            (tornado_websocket.WebSocketClientConnection, "read_message"),
        ),
    ),
    "websocket-client": Case(
        WebsocketClientInstrumentor,
        websockets_server,
        "websocket-client",
        (CLIENT,),
        (
            *((websocket.WebSocket, n) for n in ("connect", "send_frame", "recv_data_frame", "close", "shutdown")),
            (websocket._app.Dispatcher, "read"),
        ),
        peer=WebsocketsInstrumentor,
    ),
    "starlette": Case(
        StarletteInstrumentor,
        uvicorn(uvicorn_server.starlette_app),
        "websockets-asyncio",
        (SERVER,),
        ((Starlette, "build_middleware_stack"), (FastAPI, "build_middleware_stack")),
    ),
    "fastapi": Case(
        StarletteInstrumentor,
        uvicorn(fastapi_app),
        "websockets-asyncio",
        (SERVER,),
        ((Starlette, "build_middleware_stack"), (FastAPI, "build_middleware_stack")),
    ),
}


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param]


@pytest.fixture
def instrument(case: Case, telemetry: Telemetry) -> Iterator[Callable[..., None]]:
    """Instruments the case's instrumentor (and its peer's) with the same options."""
    instrumentors = [case.instrumentor(), *([case.peer()] if case.peer else [])]

    def do(**options: Any) -> None:
        options.setdefault("tracer_provider", telemetry.provider)
        for instrumentor in instrumentors:
            instrumentor.instrument(**options)

    yield do
    for instrumentor in instrumentors:
        instrumentor.uninstrument()


def roundtrip(case: Case, telemetry: Telemetry, suppressed: Collection[SpanKind] = ()) -> Seen:
    """PAYLOADS from the case's client to its server and back; ``suppressed``: the ends to run suppressed."""
    seen = Seen()

    async def scenario() -> list[Any]:
        async with case.server(seen, SERVER in suppressed) as url:
            with suppress_instrumentation() if CLIENT in suppressed else nullcontext():
                replies = await CLIENTS[case.client](url, PAYLOADS)
            await settle(telemetry)
        await settle(telemetry)
        return replies

    assert asyncio.run(scenario()) == PAYLOADS
    assert "host" in seen.request, "the server saw the handshake"
    return seen


async def settle(telemetry: Telemetry) -> None:
    """Both ends record their close a moment after the replies are back."""
    for _ in range(150):
        await asyncio.sleep(0.02)
        if not telemetry.open_spans.names():
            return


def end(telemetry: Telemetry, kind: SpanKind) -> list[ReadableSpan]:
    """Every span one end recorded (message model): its one handshake, then its messages, each linked to it."""
    handshake = contract.handshake(telemetry, ROUTE, kind)
    contract.messages(telemetry, ROUTE, "send", handshake, TYPES)
    contract.messages(telemetry, ROUTE, "receive", handshake, TYPES)
    own = contract.span_id(handshake)
    return [handshake, *(s for s in telemetry.spans if any(link.context.span_id == own for link in s.links))]


def only(telemetry: Telemetry, kinds: Collection[SpanKind]) -> list[ReadableSpan]:
    """The handshakes of the ``kinds`` ends, checked: those ends, and nothing else, recorded the round trip."""
    spans = [span for kind in kinds for span in end(telemetry, kind)]
    assert sorted(contract.span_id(s) for s in spans) == sorted(contract.span_id(s) for s in telemetry.spans)
    assert len(telemetry.named(f"GET {ROUTE}")) == len(kinds)
    assert len(telemetry.named(f"send {ROUTE}")) == len(kinds) * len(PAYLOADS)
    assert len(telemetry.named(f"receive {ROUTE}")) == len(kinds) * len(PAYLOADS)
    return [s for s in spans if s.name == f"GET {ROUTE}"]


def wrapped(owner: Any, name: str) -> bool:
    return hasattr(getattr(owner, name), "__wrapped__")


def test_uninstrument_restores_everything(case: Case, telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """After uninstrument() the originals are back, no span is made and no header is added."""
    instrument()
    assert [f"{o.__name__}.{n}" for o, n in case.patched if not wrapped(o, n)] == []
    case.instrumentor().uninstrument()
    assert [f"{o.__name__}.{n}" for o, n in case.patched if wrapped(o, n)] == []

    seen = roundtrip(case, telemetry)
    if CLIENT in case.traces:
        assert not WSTRACE_HEADERS & seen.request
    if SERVER in case.traces:
        assert not WSTRACE_HEADERS & seen.response
    # Only the still instrumented peer's spans: its handshake, its receives, its echoes, its close.
    expected = [SERVER, *[SpanKind.CONSUMER, SpanKind.PRODUCER] * len(PAYLOADS), SpanKind.INTERNAL] if case.peer else []
    assert sorted(s.kind.name for s in telemetry.spans) == sorted(k.name for k in expected)


def test_patched_methods_keep_their_kind_and_uninstrument_puts_the_same_objects_back(
    case: Case, instrument: Callable[..., None]
) -> None:
    """A method on the hot path is a plain function rather than a wrapt wrapper (the kit's ``hot`` patches):
    it stays a coroutine function where the library's is one, and uninstrument() restores the very objects."""
    before = {(o, n): vars(o).get(n, "inherited") for o, n in case.patched}
    kinds = {(o, n): inspect.iscoroutinefunction(getattr(o, n)) for o, n in case.patched}
    instrument()
    assert {(o, n): inspect.iscoroutinefunction(getattr(o, n)) for o, n in case.patched} == kinds
    case.instrumentor().uninstrument()
    assert {(o, n): vars(o).get(n, "inherited") for o, n in case.patched} == before


def test_instrument_twice_is_a_noop(case: Case, telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """Instrumenting twice wraps once: one handshake, send and receive span per event and end, not two."""
    instrument()
    instrument()
    seen = roundtrip(case, telemetry)
    only(telemetry, case.ends)
    if CLIENT in case.traces:
        assert {"traceparent", "wstrace-envelope"} <= seen.request
    if SERVER in case.traces and CLIENT in case.ends:
        assert "wstrace-session" in seen.response
    elif SERVER in case.traces:
        assert not {"wstrace-session", "wstrace-envelope"} & seen.response, "a bare client gets no wstrace header"


def test_instrument_again_with_other_options_says_what_it_ignored(
    case: Case, telemetry: Telemetry, instrument: Callable[..., None], caplog: pytest.LogCaptureFixture
) -> None:
    """A second instrument() keeps the first call's options; with options of its own it names them."""
    instrument(model="message")
    with caplog.at_level("WARNING", logger="wstrace.instrumentation._instrumentor"):
        case.instrumentor().instrument(tracer_provider=telemetry.provider, model="message")  # the same: silent
        assert not [r for r in caplog.records if r.name.startswith("wstrace")]
        case.instrumentor().instrument(tracer_provider=telemetry.provider, model="connection", envelope="always")
    (record,) = [r for r in caplog.records if r.name.startswith("wstrace")]
    message = record.getMessage()
    assert type(case.instrumentor()).__name__ in message
    assert "model='connection'" in message and "envelope='always'" in message
    roundtrip(case, telemetry)
    only(telemetry, case.ends)  # still the message model: spans per message, no connection span


@pytest.mark.parametrize("pattern", [rf"{ROUTE}\Z", "127\\.0\\.0\\.1:\\d+/ch"])
def test_excluded_urls_leave_the_connection_alone(
    case: Case, telemetry: Telemetry, instrument: Callable[..., None], pattern: str
) -> None:
    """A matching connection is not traced at all, on either end: no span, no header, no envelope (metrics:
    tests/test_connection.py)."""
    instrument(excluded_urls=pattern, envelope="negotiate")
    seen = roundtrip(case, telemetry)  # the payloads come back unchanged (checked there)
    assert telemetry.spans == [] and not telemetry.open_spans.names()
    assert not WSTRACE_HEADERS & seen.request and not WSTRACE_HEADERS & seen.response


def test_hooks_and_captured_headers(case: Case, telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """Every instrumented end calls the request, response and message hooks on its own spans, records the
    headers asked for (the server its request's, both ends the 101's) and redacts the sanitised ones."""
    calls: list[tuple[str, Any, Any]] = []

    def on_request(span: Any, headers: list[tuple[str, str]]) -> None:
        calls.append(("request", span.kind, dict((k.lower(), v) for k, v in headers)))

    def on_response(span: Any, status: Any, headers: list[tuple[str, str]]) -> None:
        calls.append(("response", span.kind, status))
        span.set_attribute("app.upgraded", any(k.lower() == "upgrade" for k, _ in headers))

    def on_message(span: Any, payload: Any, direction: str) -> None:
        calls.append(("message", span.kind, (payload, direction)))

    instrument(
        request_hook=on_request,
        response_hook=on_response,
        message_hook=on_message,
        capture_request_headers="host,user-agent",
        capture_response_headers="upgrade,sec-websocket-.*",
        sanitize_headers="sec-websocket-accept,user-agent",
    )
    roundtrip(case, telemetry)
    for kind in case.ends:
        (handshake,) = [s for s in telemetry.named(f"GET {ROUTE}") if s.kind is kind]
        attributes = dict(handshake.attributes or {})
        assert ("response", kind, 101) in calls
        if kind is SERVER and case.instrumentor is StarletteInstrumentor:
            # ASGI: the server writes the 101's own headers; the middleware sees only websocket.accept's.
            assert attributes["app.upgraded"] is False
            assert not [key for key in attributes if key.startswith("http.response.header.")]
        else:
            assert attributes["http.response.header.upgrade"] == ("websocket",)
            assert attributes["http.response.header.sec-websocket-accept"] == ("[REDACTED]",)
            assert attributes["app.upgraded"] is True
        if kind is SERVER:
            assert attributes["http.request.header.host"][0].startswith("127.0.0.1")
            assert attributes.get("http.request.header.user-agent", ("[REDACTED]",)) == ("[REDACTED]",)
            (request,) = [headers for what, k, headers in calls if what == "request" and k is SERVER]
            assert request["upgrade"].lower() == "websocket"
        else:
            assert not [key for key in attributes if key.startswith("http.request.header.")]
            (request,) = [headers for what, k, headers in calls if what == "request" and k is CLIENT]
            assert "traceparent" in request  # the client's hook sees the headers wstrace adds
    messages = [(kind, arguments) for what, kind, arguments in calls if what == "message"]
    # One call per message (or stream) span as it starts, with its payload and direction.
    sent = [payload for kind, (payload, direction) in messages if kind is SpanKind.PRODUCER and direction == "sent"]
    heard = [
        payload for kind, (payload, direction) in messages if kind is SpanKind.CONSUMER and direction == "received"
    ]
    assert len(sent) == len(telemetry.named(f"send {ROUTE}")) and len(heard) == len(telemetry.named(f"receive {ROUTE}"))
    assert sent and heard and len(sent) + len(heard) == len(messages)
    as_bytes = {p.encode() if isinstance(p, str) else p for p in PAYLOADS}  # some libraries hand text as bytes
    assert {p.encode() if isinstance(p, str) else bytes(p) for p in sent + heard} <= as_bytes


def test_a_failing_hook_leaves_tracing_whole(case: Case, telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("hook bug")

    instrument(request_hook=broken, response_hook=broken, message_hook=broken)
    roundtrip(case, telemetry)  # the payloads come back unchanged (checked there)
    only(telemetry, case.ends)  # every span, as without hooks (the warning, once per process: test_spans)


class NoOpSpy(trace.NoOpTracerProvider):
    """A no-op tracer provider (every span non-recording) that notes the name and kind of each span started."""

    def __init__(self) -> None:
        self.started: list[tuple[str, SpanKind]] = []

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return _SpyTracer(self.started)


class _SpyTracer(trace.NoOpTracer):
    def __init__(self, started: list[tuple[str, SpanKind]]) -> None:
        self.started = started

    def start_span(self, name: str, *args: Any, kind: SpanKind = SpanKind.INTERNAL, **kwargs: Any) -> trace.Span:
        self.started.append((name, kind))
        return super().start_span(name, *args, kind=kind, **kwargs)

    def start_as_current_span(self, name: str, *args: Any, kind: SpanKind = SpanKind.INTERNAL, **kwargs: Any) -> Any:
        self.started.append((name, kind))
        return super().start_as_current_span(name, *args, kind=kind, **kwargs)


def test_no_op_tracer_provider(case: Case, telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """With a no-op tracer provider nothing is recorded and messages still flow.

    Instrumented first into ``telemetry`` (which records the round trip), then, re-instrumented with a no-op
    provider, not one more span reaches ``telemetry``, and every end starts its spans from the no-op provider.
    """
    instrument()
    roundtrip(case, telemetry)
    assert {s.kind for s in telemetry.named(f"GET {ROUTE}")} == set(case.ends), "telemetry records a traced end"
    for instrumentor in (case.instrumentor, *([case.peer] if case.peer else [])):
        instrumentor().uninstrument()
    telemetry.exporter.clear()

    spy = NoOpSpy()
    instrument(tracer_provider=spy)
    seen = roundtrip(case, telemetry)
    assert telemetry.spans == [], "a span reached the provider of the previous instrument()"
    assert {(f"GET {ROUTE}", kind) for kind in case.ends} <= set(spy.started), "an end ignored the given provider"
    # The protocol still runs; only telemetry is off.
    if CLIENT in case.traces:
        assert {"wstrace-envelope", "wstrace-session"} <= seen.request
    if SERVER in case.traces and CLIENT in case.ends:
        assert "wstrace-session" in seen.response
    elif SERVER in case.traces:
        assert not {"wstrace-session", "wstrace-envelope"} & seen.response, "a bare client gets no wstrace header"


SUPPRESSED = {"client": (CLIENT,), "server": (SERVER,), "both": (CLIENT, SERVER)}


@pytest.mark.parametrize(
    ("case", "where"),
    [
        pytest.param(CASES[name], where, id=f"{name}-{where}")
        for name in CASES
        for where, kinds in SUPPRESSED.items()
        if set(kinds) <= set(CASES[name].traces)
    ],
)
def test_suppressed_instrumentation(
    case: Case, where: str, telemetry: Telemetry, instrument: Callable[..., None]
) -> None:
    """An end inside suppress_instrumentation() makes no span and adds no header; the other end still traces."""
    instrument()
    suppressed = SUPPRESSED[where]
    seen = roundtrip(case, telemetry, suppressed)
    if CLIENT in suppressed:
        assert not WSTRACE_HEADERS & seen.request
    if SERVER in suppressed:
        assert not WSTRACE_HEADERS & seen.response
    for handshake in only(telemetry, [kind for kind in case.ends if kind not in suppressed]):
        assert (handshake.attributes or {})["websocket.envelope"] == "none"
