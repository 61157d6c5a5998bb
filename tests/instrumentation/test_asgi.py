"""The ASGI middleware under a real uvicorn server, against the instrumented websockets client."""

from __future__ import annotations

import asyncio
import threading
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import Telemetry
from tests.instrumentation import contract
from tests.instrumentation.uvicorn_server import current_span_id, echo, serve, settle, starlette_app
from wstrace.instrumentation.asgi import WstraceASGIMiddleware
from wstrace.instrumentation.websockets import WebsocketsInstrumentor


# uvicorn's "websockets" implementation is deprecated, and built on the deprecated websockets.legacy.
LEGACY = pytest.param(
    "websockets",
    marks=[
        pytest.mark.filterwarnings("ignore::DeprecationWarning"),
        pytest.mark.filterwarnings("ignore::uvicorn.config.UvicornDeprecationWarning"),
    ],
)
IMPLEMENTATIONS = ["auto", "websockets-sansio", LEGACY]


@pytest.fixture
def instrument_client(telemetry: Telemetry) -> Iterator[Callable[..., None]]:
    """Instrument the websockets client into the same telemetry as the server."""
    instrumentor = WebsocketsInstrumentor()

    def do(**options: Any) -> None:
        instrumentor.instrument(tracer_provider=telemetry.provider, **options)

    yield do
    instrumentor.uninstrument()


@pytest.fixture
def client(instrument_client: Callable[..., None]) -> None:
    instrument_client()


def traced(app: Any, telemetry: Telemetry, **options: Any) -> WstraceASGIMiddleware:
    return WstraceASGIMiddleware(app, tracer_provider=telemetry.provider, **options)


async def exchange(url: str, payloads: list[str | bytes], **kwargs: Any) -> list[Any]:
    """Send each payload and collect the reply to it."""
    async with connect(url, **kwargs) as ws:
        replies = []
        for payload in payloads:
            await ws.send(payload)
            replies.append(await ws.recv())
        return replies


def server_handshake(telemetry: Telemetry) -> Any:
    spans = [s for s in telemetry.spans if s.kind is SpanKind.SERVER]
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


def server_span_named(telemetry: Telemetry, name: str, handshake: Any) -> Any:
    """The server's close (or connection) span: linked to, or a child of, its handshake."""
    found = [
        s
        for s in telemetry.named(name)
        if contract.parent_id(s) == contract.span_id(handshake)
        or any(link.context.span_id == contract.span_id(handshake) for link in s.links)
    ]
    assert len(found) == 1, [s.name for s in telemetry.spans]
    return found[0]


# Round trip and the shared contract -------------------------------------------------


@pytest.mark.parametrize("ws_impl", IMPLEMENTATIONS)
def test_shared_contract(telemetry: Telemetry, client: None, ws_impl: str) -> None:
    """Both directions propagate through the negotiated envelope, text and binary, under each uvicorn implementation.

    The websockets adapter is active too: uvicorn's implementations use websockets'
    sans-I/O and legacy layers, which it does not wrap, so the server is traced once.
    """
    payloads: list[str | bytes] = ["text", b"\x00binary"]
    with serve(traced(starlette_app(), telemetry), ws=ws_impl) as base:
        assert asyncio.run(exchange(f"{base}/chat", payloads)) == payloads
        settle(telemetry)
    client_hs = contract.handshake(telemetry, "/chat", SpanKind.CLIENT)
    server_hs = contract.handshake(telemetry, "/chat", SpanKind.SERVER)
    assert server_hs.attributes["websocket.envelope"] == "frame"
    assert server_hs.attributes["http.route"] == "/chat"
    assert contract.parent_id(server_hs) == contract.span_id(client_hs)
    types = ["text", "binary"]
    client_sends = contract.messages(telemetry, "/chat", "send", client_hs, types)
    server_receives = contract.messages(telemetry, "/chat", "receive", server_hs, types)
    server_sends = contract.messages(telemetry, "/chat", "send", server_hs, types)
    client_receives = contract.messages(telemetry, "/chat", "receive", client_hs, types)
    contract.continued(client_sends, server_receives)
    contract.continued(server_sends, client_receives)
    contract.no_open_spans(telemetry)


def test_receive_apis_see_bare_payloads_inside_the_receive_span(telemetry: Telemetry, client: None) -> None:
    """receive_text, receive_bytes, receive_json and iter_text get stripped payloads, each in its receive span."""
    seen: list[tuple[Any, int]] = []

    async def api(ws: WebSocket) -> None:
        await ws.accept()
        text = await ws.receive_text()
        seen.append((text, current_span_id()))
        await ws.send_text(text)
        data = await ws.receive_bytes()
        seen.append((data, current_span_id()))
        await ws.send_bytes(data)
        obj = await ws.receive_json()
        seen.append((obj, current_span_id()))
        await ws.send_json(obj)
        async for item in ws.iter_text():
            seen.append((item, current_span_id()))
            await ws.send_text(item)

    payloads: list[str | bytes] = ["hello", b"\x1ewt\x01\x00\x00x", '{"a": [1, 2]}', "\x1ewt1\x1e", "last"]
    with serve(traced(starlette_app([("/api", api)]), telemetry)) as base:
        replies = asyncio.run(exchange(f"{base}/api", payloads))
        settle(telemetry)
    assert replies == ["hello", b"\x1ewt\x01\x00\x00x", '{"a":[1,2]}', "\x1ewt1\x1e", "last"]
    assert [value for value, _ in seen] == ["hello", b"\x1ewt\x01\x00\x00x", {"a": [1, 2]}, "\x1ewt1\x1e", "last"]
    server_hs = server_handshake(telemetry)
    receives = contract.messages(telemetry, "/api", "receive", server_hs, ["text", "binary", "text", "text", "text"])
    assert [span_id for _, span_id in seen] == [contract.span_id(r) for r in receives]
    contract.no_open_spans(telemetry)


def test_raw_asgi_app(telemetry: Telemetry, client: None) -> None:
    """A framework-free ASGI app: events are copies with the payload stripped; both keys set sends ``bytes``."""
    events: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        while True:
            event = await receive()
            if event["type"] == "websocket.disconnect":
                return
            events.append(event)
            await send({"type": "websocket.send", "bytes": event.get("bytes"), "text": event.get("text")})

    payloads: list[str | bytes] = ["plain", b"\x01\x02"]
    with serve(traced(app, telemetry)) as base:
        assert asyncio.run(exchange(f"{base}/raw/path", payloads)) == payloads
        settle(telemetry)
    assert [e.get("text") or e.get("bytes") for e in events] == payloads
    server_hs = contract.handshake(telemetry, "/raw/path", SpanKind.SERVER)
    assert server_hs.attributes["http.route"] == "/raw/path"  # no router: the path stands in
    assert server_hs.attributes["websocket.envelope"] == "frame"
    contract.no_open_spans(telemetry)


# Close, refusal, failures ---------------------------------------------------------------


def test_close_from_the_server_app(telemetry: Telemetry, client: None) -> None:
    """The app's close code and reason land on both sides, with the right initiator."""

    async def closer(ws: WebSocket) -> None:
        await ws.accept()
        await ws.receive_text()
        await ws.close(4001, "bye now")

    async def scenario(url: str) -> None:
        async with connect(url) as ws:
            await ws.send("hi")
            with pytest.raises(ConnectionClosed):
                await ws.recv()

    with serve(traced(starlette_app([("/closer", closer)]), telemetry)) as base:
        asyncio.run(scenario(f"{base}/closer"))
        settle(telemetry)
    closes = {s.attributes["websocket.close.initiator"]: s for s in telemetry.named("close /closer")}
    assert set(closes) == {"local", "remote"}
    for close in closes.values():
        assert close.attributes["websocket.close.code"] == 4001
        assert close.attributes["websocket.close.reason"] == "bye now"
        assert close.status.status_code is StatusCode.UNSET
    assert server_span_named(telemetry, "close /closer", server_handshake(telemetry)) is closes["local"]
    contract.no_open_spans(telemetry)


def test_close_from_the_client(telemetry: Telemetry, client: None) -> None:
    """A client's close frame reaches the server's close span as a remote close."""

    async def scenario(url: str) -> None:
        async with connect(url) as ws:
            await ws.send("hi")
            await ws.recv()
            await ws.close(4002, "client leaves")

    with serve(traced(starlette_app(), telemetry)) as base:
        asyncio.run(scenario(f"{base}/chat"))
        settle(telemetry)
    close = server_span_named(telemetry, "close /chat", server_handshake(telemetry))
    assert close.attributes["websocket.close.initiator"] == "remote"
    assert close.attributes["websocket.close.code"] == 4002
    assert close.attributes["websocket.close.reason"] == "client leaves"
    contract.no_open_spans(telemetry)


@pytest.mark.parametrize("ws_impl", ["websockets-sansio", LEGACY])
@pytest.mark.parametrize("then", ["receive", "send"])
def test_dropped_tcp_connection(telemetry: Telemetry, client: None, ws_impl: str, then: str) -> None:
    """A client that drops TCP mid-message ends every server span; the close is abnormal (1006, no initiator)."""
    handled = threading.Event()

    async def slow(ws: WebSocket) -> None:
        await ws.accept()
        try:
            async for text in ws.iter_text():
                handled.set()
                await asyncio.sleep(0.3)  # still handling when the peer vanishes
                if then == "send":
                    await ws.send_text(text)
        except WebSocketDisconnect:
            pass

    async def scenario(url: str) -> None:
        ws = await connect(url)
        await ws.send("work")
        assert await asyncio.to_thread(handled.wait, 5)
        ws.transport.abort()  # TCP reset, no close frame
        await asyncio.sleep(0.1)

    with serve(traced(starlette_app([("/slow", slow)]), telemetry), ws=ws_impl) as base:
        asyncio.run(scenario(f"{base}/slow"))
        settle(telemetry)
    contract.no_open_spans(telemetry)
    server_hs = server_handshake(telemetry)
    close = server_span_named(telemetry, "close /slow", server_hs)
    assert close.attributes["websocket.close.initiator"] == "none"
    assert close.attributes["websocket.close.code"] == 1006
    assert close.status.status_code is StatusCode.ERROR
    if then == "send":
        # The reply fails while the message is being handled: both spans are errors.
        (receive,) = contract.messages(telemetry, "/slow", "receive", server_hs, ["text"])
        assert receive.status.status_code is StatusCode.ERROR
        send = next(s for s in telemetry.named("send /slow") if contract.parent_id(s) == contract.span_id(receive))
        assert send.status.status_code is StatusCode.ERROR


def test_app_that_returns_without_closing(telemetry: Telemetry, client: None) -> None:
    """Returning with the connection open ends its spans: a local close with no code, not an error."""

    async def quits(ws: WebSocket) -> None:
        await ws.accept()
        await ws.receive_text()

    async def scenario(url: str) -> None:
        async with connect(url) as ws:
            await ws.send("one")
            with pytest.raises(ConnectionClosed):
                await ws.recv()

    with serve(traced(starlette_app([("/quits", quits)]), telemetry)) as base:
        asyncio.run(scenario(f"{base}/quits"))
        settle(telemetry)
    close = server_span_named(telemetry, "close /quits", server_handshake(telemetry))
    assert close.attributes["websocket.close.initiator"] == "local"
    assert "websocket.close.code" not in close.attributes
    assert close.status.status_code is StatusCode.UNSET
    contract.no_open_spans(telemetry)


def test_app_that_raises(telemetry: Telemetry, client: None) -> None:
    """An exception out of the app ends the connection as an error, with the exception recorded; it still propagates."""

    async def fails(ws: WebSocket) -> None:
        await ws.accept()
        await ws.receive_text()
        raise RuntimeError("handler bug")

    async def scenario(url: str) -> None:
        async with connect(url) as ws:
            await ws.send("boom")
            with pytest.raises(ConnectionClosed):
                await ws.recv()

    with serve(traced(starlette_app([("/fails", fails)]), telemetry)) as base:
        asyncio.run(scenario(f"{base}/fails"))
        settle(telemetry)
    close = server_span_named(telemetry, "close /fails", server_handshake(telemetry))
    assert close.status.status_code is StatusCode.ERROR
    assert close.attributes["error.type"] == "RuntimeError"
    assert [e.attributes["exception.message"] for e in close.events] == ["handler bug"]
    contract.no_open_spans(telemetry)


def test_close_before_accept_is_a_403(telemetry: Telemetry, client: None) -> None:
    """An app that closes before accepting refuses the handshake: 403 on both handshake spans."""

    async def refuse(ws: WebSocket) -> None:
        await ws.close(1008)

    with serve(traced(starlette_app([("/private", refuse)]), telemetry)) as base:
        with pytest.raises(InvalidStatus, match="403"):
            asyncio.run(exchange(f"{base}/private", []))
        settle(telemetry)
    spans = {s.kind: s for s in telemetry.named("GET /private")}
    assert spans[SpanKind.SERVER].attributes["http.response.status_code"] == 403
    assert spans[SpanKind.SERVER].status.status_code is StatusCode.UNSET  # 4xx is the client's fault
    assert spans[SpanKind.CLIENT].status.status_code is StatusCode.ERROR
    assert not telemetry.named("close /private")
    contract.no_open_spans(telemetry)


def test_denial_response_status(telemetry: Telemetry, client: None) -> None:
    """A denial response (ASGI websocket.http.response) records its own status."""

    async def deny(ws: WebSocket) -> None:
        await ws.send_denial_response(PlainTextResponse("log in first", status_code=401))

    with serve(traced(starlette_app([("/denied", deny)]), telemetry)) as base:
        with pytest.raises(InvalidStatus, match="401"):
            asyncio.run(exchange(f"{base}/denied", []))
        settle(telemetry)
    server_hs = server_handshake(telemetry)
    assert server_hs.name == "GET /denied"
    assert server_hs.attributes["http.response.status_code"] == 401
    contract.no_open_spans(telemetry)


# Handshake details ------------------------------------------------------------------------


def test_subprotocol_token_is_read_and_hidden(telemetry: Telemetry) -> None:
    """A ``wstrace.tp.`` token carries context; the app never sees it; offered alone, it is echoed."""
    offered: list[list[str]] = []

    async def chat(ws: WebSocket) -> None:
        offered.append(list(ws.scope["subprotocols"]))
        await ws.accept(subprotocol="chat.v2" if "chat.v2" in ws.scope["subprotocols"] else None)
        await ws.receive_text()

    trace_id = "0af7651916cd43dd8448eb211c80319c"
    token = f"wstrace.tp.00-{trace_id}-b7ad6b7169203331-01"

    async def scenario(url: str) -> list[str | None]:
        chosen = []
        for subprotocols in ([token, "chat.v2"], [token]):
            async with connect(url, subprotocols=subprotocols) as ws:
                chosen.append(ws.subprotocol)
                await ws.send("x")
        return chosen

    app = traced(starlette_app([("/sub", chat)]), telemetry, handshake_sources="subprotocol")
    with serve(app) as base:
        assert asyncio.run(scenario(f"{base}/sub")) == ["chat.v2", token]
        settle(telemetry)
    assert offered == [["chat.v2"], []]
    handshakes = telemetry.named("GET /sub")
    assert len(handshakes) == 2
    for span in handshakes:
        assert f"{contract.trace_id(span):032x}" == trace_id
        assert span.attributes["wstrace.context.source"] == "subprotocol"
    # The echoed token carries a peer's context: it is never recorded as the subprotocol.
    assert {s.attributes.get("websocket.subprotocol") for s in handshakes} == {"chat.v2", None}
    contract.no_open_spans(telemetry)


def test_mounted_sub_app_traced_once_with_its_full_route(telemetry: Telemetry, client: None) -> None:
    """A sub-app with the middleware, mounted in an app with it too: one handshake, named by mount + route."""
    inner = traced(Starlette(routes=[WebSocketRoute("/rooms/{room}", echo)]), telemetry)
    outer = traced(Starlette(routes=[Mount("/v1", app=inner)]), telemetry)
    with serve(outer) as base:
        assert asyncio.run(exchange(f"{base}/v1/rooms/42", ["hi"])) == ["hi"]
        settle(telemetry)
    server_hs = server_handshake(telemetry)
    assert server_hs.name == "GET /v1/rooms/{room}"
    assert server_hs.attributes["url.path"] == "/v1/rooms/42"
    assert len(telemetry.named("receive /v1/rooms/{room}")) == 1
    contract.no_open_spans(telemetry)


def test_connection_model_one_trace(telemetry: Telemetry, instrument_client: Callable[..., None]) -> None:
    """Connection model: every span of the connection, client and server, is in the client's trace."""
    instrument_client(model="connection")
    inside: list[int] = []

    async def chat(ws: WebSocket) -> None:
        await ws.accept()
        inside.append(current_span_id())  # the connection span, current between messages
        async for text in ws.iter_text():
            await ws.send_text(text)

    tracer = telemetry.provider.get_tracer("test")

    async def scenario(url: str) -> None:
        with tracer.start_as_current_span("client-op"):
            assert await exchange(url, ["a", "b"]) == ["a", "b"]

    with serve(traced(starlette_app([("/conn", chat)]), telemetry, model="connection")) as base:
        asyncio.run(scenario(f"{base}/conn"))
        settle(telemetry)
    root = telemetry.one("client-op")
    assert {contract.trace_id(s) for s in telemetry.spans} == {contract.trace_id(root)}
    server_hs = server_handshake(telemetry)
    server_conn = server_span_named(telemetry, "websocket /conn", server_hs)
    assert inside == [contract.span_id(server_conn)]
    server_receives = [s for s in telemetry.named("receive /conn") if contract.parent_id(s) == inside[0]]
    assert len(server_receives) == 2
    assert server_conn.attributes["websocket.close.initiator"] == "remote"
    contract.no_open_spans(telemetry)


# Pass-through and the instrumentor-independent contract ------------------------------------


def test_http_and_lifespan_pass_through(telemetry: Telemetry) -> None:
    """Plain HTTP requests and the lifespan protocol go through untouched and make no span."""
    started: list[bool] = []

    async def hello(request: Any) -> Response:
        return PlainTextResponse("hi")

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        started.append(True)
        yield

    app = Starlette(routes=[Route("/hello", hello)], lifespan=lifespan)
    with serve(traced(app, telemetry)) as base:
        with urllib.request.urlopen(base.replace("ws://", "http://") + "/hello", timeout=5) as response:
            assert response.read() == b"hi"
    assert started == [True]
    assert telemetry.spans == []


def test_suppressed_instrumentation(telemetry: Telemetry, client: None) -> None:
    """A connection that arrives with instrumentation suppressed is not traced and still works."""
    inner = traced(starlette_app(), telemetry)

    async def suppressing(scope: Any, receive: Any, send: Any) -> None:
        with suppress_instrumentation():
            await inner(scope, receive, send)

    with serve(suppressing) as base:
        assert asyncio.run(exchange(f"{base}/chat", ["ping", b"pong"])) == ["ping", b"pong"]
        settle(telemetry)
    assert [s for s in telemetry.spans if s.kind is SpanKind.SERVER] == []
    client_hs = contract.handshake(telemetry, "/chat", SpanKind.CLIENT)
    assert client_hs.attributes["websocket.envelope"] == "none"  # nobody answered the offer
    assert not [s for s in telemetry.spans if s.kind is SpanKind.CONSUMER and s.parent and s.parent.is_remote]


def test_no_op_tracer_provider(telemetry: Telemetry, client: None) -> None:
    """With a no-op tracer provider the server records nothing and messages still flow."""
    app = WstraceASGIMiddleware(starlette_app(), tracer_provider=trace.NoOpTracerProvider())
    with serve(app) as base:
        assert asyncio.run(exchange(f"{base}/chat", ["ping", b"\x00"])) == ["ping", b"\x00"]
        settle(telemetry)
    assert [s for s in telemetry.spans if s.kind is SpanKind.SERVER] == []
    assert contract.handshake(telemetry, "/chat", SpanKind.CLIENT).attributes["websocket.envelope"] == "frame"


@pytest.mark.parametrize("ws_impl", ["websockets-sansio", LEGACY])
def test_websockets_adapter_leaves_uvicorn_alone(telemetry: Telemetry, client: None, ws_impl: str) -> None:
    """Without the middleware, the websockets adapter alone makes no server span for uvicorn's connections."""
    with serve(starlette_app(), ws=ws_impl) as base:
        assert asyncio.run(exchange(f"{base}/chat", ["x"])) == ["x"]
        settle(telemetry)
    assert {s.kind for s in telemetry.spans} <= {
        SpanKind.CLIENT,
        SpanKind.PRODUCER,
        SpanKind.CONSUMER,
        SpanKind.INTERNAL,
    }
    assert len(telemetry.named("GET /chat")) == 1


# Composition with OpenTelemetry's ASGI middleware ---------------------------------------------


WSTRACE_KEYS = ("websocket.", "wstrace.", "http.response.status_code", "messaging.")


def untouched(span: Any) -> Any:
    """A span another instrumentation started: wstrace set none of its attributes and no status."""
    assert not [k for k in (span.attributes or {}) if k.startswith(WSTRACE_KEYS)], span.attributes
    return span


def nested_handshake(telemetry: Telemetry, outer: Any, route: str = "/chat") -> Any:
    """wstrace's handshake span under another instrumentation's SERVER span: an INTERNAL child of it."""
    (span,) = [s for s in telemetry.named(f"GET {route}") if s.kind is SpanKind.INTERNAL]
    assert span.instrumentation_scope.name == "wstrace"
    assert contract.parent_id(span) == contract.span_id(outer)
    assert span.attributes["http.response.status_code"] == 101
    return span


@pytest.mark.parametrize("exclude", [["receive", "send"], None])
def test_inside_the_opentelemetry_asgi_server_span(
    telemetry: Telemetry, client: None, exclude: list[str] | None
) -> None:
    """OpenTelemetryMiddleware outside: its SERVER span is left alone; wstrace's handshake span is its child."""
    inner = traced(starlette_app(), telemetry)
    app = OpenTelemetryMiddleware(inner, tracer_provider=telemetry.provider, exclude_spans=exclude)
    payloads: list[str | bytes] = ["text", b"\x00binary"]
    with serve(app) as base:
        assert asyncio.run(exchange(f"{base}/chat", payloads)) == payloads
        settle(telemetry)
    server_spans = [s for s in telemetry.spans if s.kind is SpanKind.SERVER]
    assert len(server_spans) == 1, [s.name for s in server_spans]
    outer = untouched(server_spans[0])
    assert outer.name == "HTTP /chat"  # OpenTelemetryMiddleware's name (a WebSocket scope has no method)
    assert outer.instrumentation_scope.name == "opentelemetry.instrumentation.asgi"
    client_hs = contract.handshake(telemetry, "/chat", SpanKind.CLIENT)
    assert contract.parent_id(outer) == contract.span_id(client_hs)
    ours = nested_handshake(telemetry, outer)
    assert ours.attributes["websocket.envelope"] == "frame"
    assert "wstrace.context.source" not in ours.attributes, "the headers were the outer span's to continue"
    types = ["text", "binary"]
    client_sends = contract.messages(telemetry, "/chat", "send", client_hs, types)
    server_receives = contract.messages(telemetry, "/chat", "receive", ours, types)
    server_sends = contract.messages(telemetry, "/chat", "send", ours, types)
    client_receives = contract.messages(telemetry, "/chat", "receive", client_hs, types)
    contract.continued(client_sends, server_receives)
    contract.continued(server_sends, client_receives)
    per_event = [s for s in telemetry.spans if s.name.startswith("HTTP /chat websocket ")]
    if exclude:
        assert per_event == []
    else:
        # Its own spans per ASGI event, which duplicate ours: what exclude_spans drops.
        assert {s.name for s in per_event} == {"HTTP /chat websocket receive", "HTTP /chat websocket send"}
    contract.no_open_spans(telemetry)


def test_entry_span_rule(telemetry: Telemetry) -> None:
    """Under a recording SERVER span wstrace's handshake is INTERNAL; under an INTERNAL one it stays SERVER."""
    tracer = telemetry.provider.get_tracer("test")

    def with_span(kind: SpanKind) -> Any:
        inner = traced(starlette_app(), telemetry)

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "websocket":
                await inner(scope, receive, send)
                return
            with tracer.start_as_current_span(f"outer-{kind.name}", kind=kind):
                await inner(scope, receive, send)

        return app

    for kind in (SpanKind.SERVER, SpanKind.INTERNAL):
        with serve(with_span(kind)) as base:
            assert asyncio.run(exchange(f"{base}/chat", ["x"])) == ["x"]
            settle(telemetry)
    outer_server = telemetry.one("outer-SERVER")
    outer_internal = telemetry.one("outer-INTERNAL")
    ours = [s for s in telemetry.named("GET /chat") if s.kind is SpanKind.SERVER]
    assert len(ours) == 1, "only the INTERNAL case made a SERVER handshake span"
    assert contract.parent_id(ours[0]) == contract.span_id(outer_internal)
    nested_handshake(telemetry, untouched(outer_server))
