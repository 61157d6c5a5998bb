"""The standard instrumentor contract, held to by every adapter over a real loopback round trip.

Each case drives its library's own client and server (the clients of ``peers.py``, the servers of the
shared helper modules) through: ``uninstrument()`` restores everything, instrumenting twice wraps once, a no-op
tracer provider records nothing, and ``suppress_instrumentation()`` silences the end it surrounds.

websocket-client has no server: its peer is a websockets server instrumented by ``WebsocketsInstrumentor`` (the
case's ``peer``), whose spans show that only the client end is affected. The Starlette and Channels
instrumentors have no client: their peer is a bare websockets client. Every case also gets its instruments from
the ``meter_provider`` given and its options from ``WSTRACE_*`` variables (a keyword wins).

Socket.IO's spans are per event, not per frame: its section at the end holds it to the same contract on a round
trip of its own (an ``AsyncClient`` calling an ``AsyncServer``'s ``echo`` and getting ``echoed`` back).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import channels.consumer
import channels.layers
import channels.routing
import engineio
import pytest
import socketio
import socketio.async_pubsub_manager
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
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from tornado import websocket as tornado_websocket

from tests.conftest import Telemetry
from tests.instrumentation import aiohttp_app, channels_app, contract, socketio_app, tornado_app, uvicorn_server
from tests.instrumentation.peers import CLIENTS
from wstrace.instrumentation.aiohttp import AiohttpInstrumentor
from wstrace.instrumentation.channels import ChannelsInstrumentor
from wstrace.instrumentation.socketio import SocketioInstrumentor
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


CHANNELS_ROUTE = ROUTE.lstrip("/")
"""The Channels consumer's Django pattern, and so its spans' route: Django's routes have no leading ``/``."""


def channels_echo() -> Any:
    channels_app.use_layer("memory")
    return channels_app.echo_app(CHANNELS_ROUTE)


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
    server_route: str = ROUTE
    """The route the server names its spans by (the client's is always ``ROUTE``)."""
    asgi: bool = False
    """The server end is the ASGI middleware: the 101's own headers are the ASGI server's, not seen by it."""

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
        asgi=True,
    ),
    "fastapi": Case(
        StarletteInstrumentor,
        uvicorn(fastapi_app),
        "websockets-asyncio",
        (SERVER,),
        ((Starlette, "build_middleware_stack"), (FastAPI, "build_middleware_stack")),
        asgi=True,
    ),
    "channels": Case(
        ChannelsInstrumentor,
        uvicorn(channels_echo),
        "websockets-asyncio",
        (SERVER,),
        (
            (channels.routing.ProtocolTypeRouter, "__call__"),
            (channels.routing.URLRouter, "__call__"),
            (channels.consumer, "await_many_dispatch"),
            (channels.layers.InMemoryChannelLayer, "send"),
            (channels.layers.InMemoryChannelLayer, "group_send"),
        ),
        server_route=CHANNELS_ROUTE,
        asgi=True,
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


def route(case: Case, kind: SpanKind) -> str:
    """The route one end of the case names its spans by."""
    return case.server_route if kind is SERVER else ROUTE


def named(case: Case, telemetry: Telemetry, operation: str) -> list[ReadableSpan]:
    """The spans ``{operation} {route}`` of either end."""
    names = {f"{operation} {ROUTE}", f"{operation} {case.server_route}"}
    return [s for s in telemetry.spans if s.name in names]


def end(case: Case, telemetry: Telemetry, kind: SpanKind) -> list[ReadableSpan]:
    """Every span one end recorded (message model): its one handshake, then its messages, each linked to it."""
    handshake = contract.handshake(telemetry, route(case, kind), kind, path=ROUTE)
    contract.messages(telemetry, route(case, kind), "send", handshake, TYPES)
    contract.messages(telemetry, route(case, kind), "receive", handshake, TYPES)
    own = contract.span_id(handshake)
    return [handshake, *(s for s in telemetry.spans if any(link.context.span_id == own for link in s.links))]


def only(case: Case, telemetry: Telemetry, kinds: Collection[SpanKind]) -> list[ReadableSpan]:
    """The handshakes of the ``kinds`` ends, checked: those ends, and nothing else, recorded the round trip."""
    spans = [span for kind in kinds for span in end(case, telemetry, kind)]
    assert sorted(contract.span_id(s) for s in spans) == sorted(contract.span_id(s) for s in telemetry.spans)
    assert len(named(case, telemetry, "GET")) == len(kinds)
    assert len(named(case, telemetry, "send")) == len(kinds) * len(PAYLOADS)
    assert len(named(case, telemetry, "receive")) == len(kinds) * len(PAYLOADS)
    return [s for s in spans if s.name in (f"GET {ROUTE}", f"GET {case.server_route}")]


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


def test_uninstrument_twice_then_instrument_again(
    case: Case, telemetry: Telemetry, instrument: Callable[..., None]
) -> None:
    """A second uninstrument() is a no-op, and instrument() after it traces again, as the first did."""
    instrument()
    for _ in range(2):
        for instrumentor in (case.instrumentor, *([case.peer] if case.peer else [])):
            instrumentor().uninstrument()
    assert [f"{o.__name__}.{n}" for o, n in case.patched if wrapped(o, n)] == []
    instrument()
    roundtrip(case, telemetry)
    only(case, telemetry, case.ends)


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
    only(case, telemetry, case.ends)
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
    only(case, telemetry, case.ends)  # still the message model: spans per message, no connection span


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
        (handshake,) = [s for s in named(case, telemetry, "GET") if s.kind is kind]
        attributes = dict(handshake.attributes or {})
        assert ("response", kind, 101) in calls
        if kind is SERVER and case.asgi:
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
    assert len(sent) == len(named(case, telemetry, "send")) and len(heard) == len(named(case, telemetry, "receive"))
    assert sent and heard and len(sent) + len(heard) == len(messages)
    as_bytes = {p.encode() if isinstance(p, str) else p for p in PAYLOADS}  # some libraries hand text as bytes
    assert {p.encode() if isinstance(p, str) else bytes(p) for p in sent + heard} <= as_bytes


def test_a_failing_hook_leaves_tracing_whole(case: Case, telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("hook bug")

    instrument(request_hook=broken, response_hook=broken, message_hook=broken)
    roundtrip(case, telemetry)  # the payloads come back unchanged (checked there)
    only(case, telemetry, case.ends)  # every span, as without hooks (the warning, once per process: test_spans)


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
    assert {s.kind for s in named(case, telemetry, "GET")} == set(case.ends), "telemetry records a traced end"
    for instrumentor in (case.instrumentor, *([case.peer] if case.peer else [])):
        instrumentor().uninstrument()
    telemetry.exporter.clear()

    spy = NoOpSpy()
    instrument(tracer_provider=spy)
    seen = roundtrip(case, telemetry)
    assert telemetry.spans == [], "a span reached the provider of the previous instrument()"
    assert {(f"GET {route(case, kind)}", kind) for kind in case.ends} <= set(spy.started), (
        "an end ignored the given provider"
    )
    # The protocol still runs; only telemetry is off.
    if CLIENT in case.traces:
        assert {"wstrace-envelope", "wstrace-session"} <= seen.request
    if SERVER in case.traces and CLIENT in case.ends:
        assert "wstrace-session" in seen.response
    elif SERVER in case.traces:
        assert not {"wstrace-session", "wstrace-envelope"} & seen.response, "a bare client gets no wstrace header"


def sides(reader: InMemoryMetricReader, name: str) -> dict[str, int]:
    """How many ``name`` records each side (``websocket.side``) made, in ``reader``."""
    found: dict[str, int] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in (m for m in scope.metrics if m.name == name):
                for point in metric.data.data_points:
                    side = str(point.attributes["websocket.side"])
                    found[side] = found.get(side, 0) + int(point.count)
    return found


def test_meter_provider(case: Case, telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """The instruments come from the ``meter_provider`` given: each traced end records its handshake and its
    connection there."""
    reader = InMemoryMetricReader()
    instrument(meter_provider=MeterProvider(metric_readers=[reader]))
    roundtrip(case, telemetry)
    expected = {kind.name.lower(): 1 for kind in case.ends}
    assert sides(reader, "wstrace.handshake.duration") == expected
    assert sides(reader, "wstrace.connection.duration") == expected


@pytest.mark.parametrize("keyword", [False, True], ids=["environment", "keyword-wins"])
def test_environment_options(
    case: Case, telemetry: Telemetry, instrument: Callable[..., None], monkeypatch: pytest.MonkeyPatch, keyword: bool
) -> None:
    """``WSTRACE_*`` variables set the options ``instrument()`` is not given; a keyword wins over its variable,
    and a bad variable is ignored (logged), leaving tracing whole."""
    monkeypatch.setenv("WSTRACE_CAPTURE_REQUEST_HEADERS", "host")
    monkeypatch.setenv("WSTRACE_TRUST", "bogus")
    instrument(**({"capture_request_headers": "sec-websocket-version"} if keyword else {}))
    roundtrip(case, telemetry)
    (server,) = [s for s in only(case, telemetry, case.ends) if s.kind is SERVER]
    captured = {key for key in server.attributes or {} if key.startswith("http.request.header.")}
    assert captured == ({"http.request.header.sec-websocket-version"} if keyword else {"http.request.header.host"})


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
    for handshake in only(case, telemetry, [kind for kind in case.ends if kind not in suppressed]):
        assert (handshake.attributes or {})["websocket.envelope"] == "none"


# Socket.IO: the same contract, held on events ----------------------------------------------------------------
#
# Its spans are per event, not per frame, so it has a round trip of its own: an AsyncClient connects to an
# AsyncServer attached to aiohttp (in the test's loop, like the in-loop servers above), calls ``echo`` (an ack) and
# gets ``echoed`` back.

SIO_PATCHED = (
    *(
        (socketio.AsyncServer, n)
        for n in (
            "_handle_eio_connect",
            "_handle_eio_disconnect",
            "_send_packet",
            "_send_eio_packet",
            "emit",
            "_handle_event_internal",
        )
    ),
    (engineio.AsyncClient, "connect"),
    *((socketio.AsyncClient, n) for n in ("connect", "_handle_connect", "_handle_event", "emit")),
    (socketio.AsyncClient, "_handle_eio_disconnect"),
    (socketio.async_pubsub_manager.AsyncPubSubManager, "emit"),
    (socketio.async_pubsub_manager.AsyncPubSubManager, "_handle_emit"),
)
"""The asyncio classes' attributes the Socket.IO instrumentor wraps."""
SIO_HEADERS = frozenset({"traceparent", "wstrace-session", "wstrace-socketio"})
"""What an instrumented client adds to the engine.io request: context, session id, the carrier's offer."""
SIO_ROUTE = "/socket.io/"
"""engine.io's path, a route of the suite's ``WSTRACE_ROUTES`` (tests/routes.py): the handshake and close spans'."""
SIO_SPANS = {
    CLIENT: [
        (f"GET {SIO_ROUTE}", CLIENT),
        ("send echo /", SpanKind.PRODUCER),
        ("ack echo /", SpanKind.CONSUMER),
        ("process echoed /", SpanKind.CONSUMER),
        (f"close {SIO_ROUTE}", SpanKind.INTERNAL),
    ],
    SERVER: [
        (f"GET {SIO_ROUTE}", SERVER),
        ("process echo /", SpanKind.CONSUMER),
        ("send echoed /", SpanKind.PRODUCER),
        (f"close {SIO_ROUTE}", SpanKind.INTERNAL),
    ],
}
"""Every span one end records for the round trip."""


@pytest.fixture
def sio_instrument(telemetry: Telemetry) -> Iterator[Callable[..., None]]:
    yield from socketio_app.instrumenting(telemetry)


def sio_roundtrip(telemetry: Telemetry, suppressed: Collection[SpanKind] = ()) -> set[str]:
    """``echo`` from an AsyncClient to an AsyncServer and back (the ack and the ``echoed`` event); ``suppressed``:
    the ends run suppressed. Returns the engine.io request's header names (lower case) as the server saw them."""
    records: list[dict[str, Any]] = []
    received: list[tuple[str, list[Any]]] = []
    seen: set[str] = set()

    async def scenario() -> Any:
        sio = socketio_app.make_server(records)
        async with AsyncExitStack() as stack:
            with suppress_instrumentation() if SERVER in suppressed else nullcontext():
                url = await stack.enter_async_context(socketio_app.aiohttp_server(sio))
            with suppress_instrumentation() if CLIENT in suppressed else nullcontext():
                client = socketio_app.make_client(received)
                await client.connect(url, transports=["websocket"])
                (environ,) = sio.environ.values()
                seen.update(k[5:].replace("_", "-").lower() for k in environ if k.startswith("HTTP_"))
                answer = await client.call("echo", "ping", timeout=10)
                for _ in range(100):
                    if received:
                        break
                    await asyncio.sleep(0.02)
                await client.disconnect()
            await settle(telemetry)
        return answer

    assert asyncio.run(scenario()) == "ping"
    assert received == [("echoed", ["ping"])], "the client got the event, without a carrier"
    assert [r["args"] for r in records if r["event"] == "echo"] == [["ping"]], "the handler got the arguments sent"
    assert "host" in seen, "the server saw the engine.io request"
    return seen


def sio_only(telemetry: Telemetry, kinds: Collection[SpanKind]) -> None:
    """Those ends, and nothing else, recorded the round trip: each its spans, once."""
    expected = sorted((name, kind.name) for k in kinds for name, kind in SIO_SPANS[k])
    assert sorted((s.name, s.kind.name) for s in telemetry.spans) == expected
    if set(kinds) == {CLIENT, SERVER}:  # both ends: the handshake and the event carried their context
        client_hs, server_hs = (
            next(s for s in telemetry.named(f"GET {SIO_ROUTE}") if s.kind is k) for k in (CLIENT, SERVER)
        )
        assert contract.parent_id(server_hs) == contract.span_id(client_hs)
        assert contract.parent_id(telemetry.one("process echo /")) == contract.span_id(telemetry.one("send echo /"))
        assert contract.parent_id(telemetry.one("ack echo /")) == contract.span_id(telemetry.one("send echo /"))


def test_socketio_uninstrument_restores_everything(telemetry: Telemetry, sio_instrument: Callable[..., None]) -> None:
    """After uninstrument() the originals are back, no span is made and no header is added."""
    sio_instrument()
    assert [f"{o.__name__}.{n}" for o, n in SIO_PATCHED if not wrapped(o, n)] == []
    SocketioInstrumentor().uninstrument()
    assert [f"{o.__name__}.{n}" for o, n in SIO_PATCHED if wrapped(o, n)] == []
    assert not SIO_HEADERS & sio_roundtrip(telemetry)
    assert telemetry.spans == []


def test_socketio_uninstrument_twice_then_instrument_again(
    telemetry: Telemetry, sio_instrument: Callable[..., None]
) -> None:
    sio_instrument()
    SocketioInstrumentor().uninstrument()
    SocketioInstrumentor().uninstrument()
    assert [f"{o.__name__}.{n}" for o, n in SIO_PATCHED if wrapped(o, n)] == []
    sio_instrument()
    sio_roundtrip(telemetry)
    sio_only(telemetry, (CLIENT, SERVER))


def test_socketio_patched_methods_keep_their_kind_and_uninstrument_puts_the_same_objects_back(
    sio_instrument: Callable[..., None],
) -> None:
    before = {(o, n): vars(o).get(n, "inherited") for o, n in SIO_PATCHED}
    kinds = {(o, n): inspect.iscoroutinefunction(getattr(o, n)) for o, n in SIO_PATCHED}
    sio_instrument()
    assert {(o, n): inspect.iscoroutinefunction(getattr(o, n)) for o, n in SIO_PATCHED} == kinds
    SocketioInstrumentor().uninstrument()
    assert {(o, n): vars(o).get(n, "inherited") for o, n in SIO_PATCHED} == before


def test_socketio_instrument_twice_is_a_noop(telemetry: Telemetry, sio_instrument: Callable[..., None]) -> None:
    """Instrumenting twice wraps once: one span per event and end, one carrier per event (the handlers get
    their arguments exactly)."""
    sio_instrument()
    sio_instrument()
    assert SIO_HEADERS <= sio_roundtrip(telemetry)
    sio_only(telemetry, (CLIENT, SERVER))


def test_socketio_instrument_again_with_other_options_says_what_it_ignored(
    telemetry: Telemetry, sio_instrument: Callable[..., None], caplog: pytest.LogCaptureFixture
) -> None:
    sio_instrument(trust="parent")
    with caplog.at_level("WARNING", logger="wstrace.instrumentation._instrumentor"):
        SocketioInstrumentor().instrument(tracer_provider=telemetry.provider, trust="parent")  # the same: silent
        assert not [r for r in caplog.records if r.name.startswith("wstrace")]
        SocketioInstrumentor().instrument(tracer_provider=telemetry.provider, trust="ignore", message_spans=False)
    (record,) = [r for r in caplog.records if r.name.startswith("wstrace")]
    message = record.getMessage()
    assert "SocketioInstrumentor" in message
    assert "trust='ignore'" in message and "message_spans=False" in message
    sio_roundtrip(telemetry)
    sio_only(telemetry, (CLIENT, SERVER))  # still the first options: event spans, the handler the sender's child


def test_socketio_excluded_urls_leave_the_connection_alone(
    telemetry: Telemetry, sio_instrument: Callable[..., None]
) -> None:
    """A matching connection is not traced at all, on either end: no span, no header, no carrier."""
    sio_instrument(excluded_urls=r"/socket\.io/")
    seen = sio_roundtrip(telemetry)
    assert [s.name for s in telemetry.spans] == []
    assert not SIO_HEADERS & seen


def test_socketio_hooks_and_captured_headers(telemetry: Telemetry, sio_instrument: Callable[..., None]) -> None:
    """Both ends call the request and response hooks on their handshake spans; the server records the request
    headers asked for, redacting the sanitised ones. (The message hook: the next test.)"""
    calls: list[tuple[str, Any, Any]] = []

    def on_request(span: Any, headers: list[tuple[str, str]]) -> None:
        calls.append(("request", span.kind, {k.lower() for k, _ in headers}))

    def on_response(span: Any, status: Any, headers: list[tuple[str, str]]) -> None:
        calls.append(("response", span.kind, status))
        span.set_attribute("app.hooked", True)

    sio_instrument(
        request_hook=on_request,
        response_hook=on_response,
        capture_request_headers="host,user-agent",
        sanitize_headers="user-agent",
    )
    sio_roundtrip(telemetry)
    sio_only(telemetry, (CLIENT, SERVER))
    assert sorted((what, kind.name) for what, kind, _ in calls) == sorted(
        (what, kind.name) for what in ("request", "response") for kind in (CLIENT, SERVER)
    )
    assert {status for what, _, status in calls if what == "response"} == {101}
    (client_request,) = [headers for what, kind, headers in calls if what == "request" and kind is CLIENT]
    assert {"traceparent", "wstrace-session"} <= client_request  # the client's hook sees wstrace's context headers
    for handshake in telemetry.named(f"GET {SIO_ROUTE}"):
        assert (handshake.attributes or {})["app.hooked"] is True
    server = dict(next(s for s in telemetry.named(f"GET {SIO_ROUTE}") if s.kind is SERVER).attributes or {})
    assert server["http.request.header.host"][0].startswith("127.0.0.1")
    assert server["http.request.header.user-agent"] == ("[REDACTED]",)


def test_socketio_message_hook_gets_each_event(telemetry: Telemetry, sio_instrument: Callable[..., None]) -> None:
    """Both ends call the message hook as an emit's and a handler's span starts, with the event as its packet's
    array (``[event, *arguments]``, never the carrier) and the direction; not for acks (an ack is a reply to an
    event, not one). The hook gets a copy: what it does to the list reaches no handler."""
    calls: list[tuple[str, Any, str]] = []

    def on_message(span: Any, payload: Any, direction: str) -> None:
        calls.append((span.name, list(payload), direction))
        span.set_attribute("app.event", str(payload[0]))
        payload.append({"junk": True})

    sio_instrument(message_hook=on_message)
    sio_roundtrip(telemetry)  # checks every handler and ack got exactly what was sent
    sio_only(telemetry, (CLIENT, SERVER))
    assert sorted(calls) == [
        ("process echo /", ["echo", "ping"], "received"),
        ("process echoed /", ["echoed", "ping"], "received"),
        ("send echo /", ["echo", "ping"], "sent"),
        ("send echoed /", ["echoed", "ping"], "sent"),
    ]
    for name, _, _ in calls:
        assert (telemetry.one(name).attributes or {})["app.event"] == name.split()[1]


def test_socketio_a_failing_hook_leaves_tracing_whole(
    telemetry: Telemetry, sio_instrument: Callable[..., None]
) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("hook bug")

    sio_instrument(request_hook=broken, response_hook=broken, message_hook=broken)
    sio_roundtrip(telemetry)
    sio_only(telemetry, (CLIENT, SERVER))


def test_socketio_no_op_tracer_provider(telemetry: Telemetry, sio_instrument: Callable[..., None]) -> None:
    """Re-instrumented with a no-op provider, not one more span reaches ``telemetry``; both ends start every
    span from the no-op provider, and the protocol (the offer) still runs."""
    sio_instrument()
    sio_roundtrip(telemetry)
    sio_only(telemetry, (CLIENT, SERVER))
    SocketioInstrumentor().uninstrument()
    telemetry.exporter.clear()

    spy = NoOpSpy()
    sio_instrument(tracer_provider=spy)
    # The protocol still runs (the session id, the offer); a no-op span has no context to send.
    assert {"wstrace-session", "wstrace-socketio"} <= sio_roundtrip(telemetry)
    assert telemetry.spans == [], "a span reached the provider of the previous instrument()"
    every = {(name, kind) for k in (CLIENT, SERVER) for name, kind in SIO_SPANS[k] if not name.startswith("close")}
    assert every <= set(spy.started), "an end ignored the given provider"


@pytest.mark.parametrize("where", list(SUPPRESSED))
def test_socketio_suppressed_instrumentation(
    telemetry: Telemetry, sio_instrument: Callable[..., None], where: str
) -> None:
    """An end inside suppress_instrumentation() makes no span and adds no header; the other end still traces."""
    sio_instrument()
    suppressed = SUPPRESSED[where]
    seen = sio_roundtrip(telemetry, suppressed)
    if CLIENT in suppressed:
        assert not SIO_HEADERS & seen
    sio_only(telemetry, [kind for kind in (CLIENT, SERVER) if kind not in suppressed])


def test_socketio_meter_provider(telemetry: Telemetry, sio_instrument: Callable[..., None]) -> None:
    """Both ends record their handshake and connection in the ``meter_provider`` given (no per-event metrics)."""
    reader = InMemoryMetricReader()
    sio_instrument(meter_provider=MeterProvider(metric_readers=[reader]))
    sio_roundtrip(telemetry)
    assert sides(reader, "wstrace.handshake.duration") == {"client": 1, "server": 1}
    assert sides(reader, "wstrace.connection.duration") == {"client": 1, "server": 1}


@pytest.mark.parametrize("keyword", [False, True], ids=["environment", "keyword-wins"])
def test_socketio_environment_options(
    telemetry: Telemetry, sio_instrument: Callable[..., None], monkeypatch: pytest.MonkeyPatch, keyword: bool
) -> None:
    """``WSTRACE_*`` variables set the options not given; a keyword wins; a bad variable is ignored. Here
    ``WSTRACE_TRUST=ignore`` makes the handler's span a new trace (the carrier still removed)."""
    monkeypatch.setenv("WSTRACE_TRUST", "ignore")
    monkeypatch.setenv("WSTRACE_MODEL", "bogus")
    sio_instrument(**({"trust": "parent"} if keyword else {}))
    sio_roundtrip(telemetry)
    handler, send = telemetry.one("process echo /"), telemetry.one("send echo /")
    if keyword:
        sio_only(telemetry, (CLIENT, SERVER))  # the sender's child, as without the variable
    else:
        assert handler.parent is None and contract.trace_id(handler) != contract.trace_id(send)
