"""StarletteInstrumentor: Starlette and FastAPI apps traced with no code change, under a real uvicorn server."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket as FastAPIWebSocket, WebSocketDisconnect
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import WebSocketRoute
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import Telemetry
from tests.instrumentation import contract
from tests.instrumentation.uvicorn_server import current_span_id, echo, serve, settle, starlette_app
from wstrace.instrumentation.asgi import WstraceASGIMiddleware
from wstrace.instrumentation.starlette import StarletteInstrumentor
from wstrace.instrumentation.starlette._server import holds_ours
from wstrace.instrumentation.websockets import WebsocketsInstrumentor


# FastAPI's own telemetry turns on when a global provider is set; keep it off unless a test wants it.
NO_NATIVE = {"tracing": False, "metrics": False, "logs": False}


@pytest.fixture
def instrument(telemetry: Telemetry) -> Iterator[Callable[..., None]]:
    instrumentor = StarletteInstrumentor()

    def do(**options: Any) -> None:
        options.setdefault("tracer_provider", telemetry.provider)
        instrumentor.instrument(**options)

    yield do
    instrumentor.uninstrument()


@pytest.fixture
def instrument_client(telemetry: Telemetry) -> Iterator[Callable[..., None]]:
    instrumentor = WebsocketsInstrumentor()

    def do(**options: Any) -> None:
        instrumentor.instrument(tracer_provider=telemetry.provider, **options)

    yield do
    instrumentor.uninstrument()


@pytest.fixture
def client(instrument_client: Callable[..., None]) -> None:
    instrument_client()


async def exchange(url: str, payloads: list[Any], close: tuple[int, str] = (1000, "")) -> list[Any]:
    async with connect(url) as ws:
        replies = []
        for payload in payloads:
            await ws.send(payload)
            replies.append(await ws.recv())
        await ws.close(*close)
        return replies


def fastapi_app(seen: list[int] | None = None, **kwargs: Any) -> FastAPI:
    """A FastAPI app whose ``/items/{item_id}`` answers ``<item_id>:<message>``."""
    kwargs.setdefault("telemetry", NO_NATIVE)
    app = FastAPI(**kwargs)

    @app.websocket("/items/{item_id}")
    async def item(websocket: FastAPIWebSocket, item_id: int) -> None:
        await websocket.accept()
        try:
            while True:
                message = await websocket.receive_json()
                if seen is not None:
                    seen.append(current_span_id())
                await websocket.send_json({"item": item_id, **message})
        except WebSocketDisconnect:
            pass

    return app


def server_handshake(telemetry: Telemetry) -> Any:
    spans = [s for s in telemetry.spans if s.kind is SpanKind.SERVER]
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


# Starlette and FastAPI, traced automatically ---------------------------------------------------


def test_fastapi_route_naming_and_propagation(
    telemetry: Telemetry, instrument: Callable[..., None], client: None
) -> None:
    """FastAPI's ``@app.websocket("/items/{item_id}")``: spans named by the template, context both ways."""
    instrument()
    seen: list[int] = []
    with serve(fastapi_app(seen)) as base:
        replies = asyncio.run(exchange(f"{base}/items/42", ['{"q": 1}', '{"q": 2}'], close=(4002, "done")))
        settle(telemetry)
    assert [json.loads(r) for r in replies] == [{"item": 42, "q": 1}, {"item": 42, "q": 2}]
    server_hs = server_handshake(telemetry)
    assert server_hs.name == "GET /items/{item_id}"
    assert server_hs.attributes["http.route"] == "/items/{item_id}"
    assert server_hs.attributes["url.path"] == "/items/42"
    assert server_hs.attributes["websocket.envelope"] == "frame"
    client_hs = contract.handshake(telemetry, "/items/42", SpanKind.CLIENT)
    assert contract.parent_id(server_hs) == contract.span_id(client_hs)
    types = ["text", "text"]
    server_receives = contract.messages(telemetry, "/items/{item_id}", "receive", server_hs, types)
    contract.continued(contract.messages(telemetry, "/items/42", "send", client_hs, types), server_receives)
    contract.continued(
        contract.messages(telemetry, "/items/{item_id}", "send", server_hs, types),
        contract.messages(telemetry, "/items/42", "receive", client_hs, types),
    )
    assert seen == [contract.span_id(s) for s in server_receives], "receive_json runs inside the receive span"
    (close,) = [s for s in telemetry.named("close /items/{item_id}")]
    assert close.attributes["websocket.close.initiator"] == "remote"
    assert close.attributes["websocket.close.code"] == 4002
    assert close.attributes["websocket.close.reason"] == "done"
    contract.no_open_spans(telemetry)


WSTRACE_KEYS = ("websocket.", "wstrace.", "http.response.status_code", "messaging.")
"""Attribute keys only wstrace writes on a WebSocket span (FastAPI's span has ``http.route`` of its own)."""


def native(telemetry: Telemetry) -> dict[str, Any]:
    """FastAPI's native telemetry on, traces only."""
    return {"tracer_provider": telemetry.provider, "metrics": False, "logs": False}


def fastapi_span(telemetry: Telemetry) -> Any:
    (span,) = [s for s in telemetry.spans if s.instrumentation_scope.name == "fastapi" and s.kind is SpanKind.SERVER]
    assert not [k for k in (span.attributes or {}) if k.startswith(WSTRACE_KEYS)], "wstrace wrote on FastAPI's span"
    return span


def wstrace_handshake(telemetry: Telemetry, route: str = "/items/{item_id}") -> Any:
    """wstrace's own handshake span under another instrumentation's SERVER span: INTERNAL."""
    (span,) = [s for s in telemetry.named(f"GET {route}") if s.kind is SpanKind.INTERNAL]
    assert span.instrumentation_scope.name == "wstrace"
    assert span.attributes["http.response.status_code"] == 101
    return span


def connection_long(telemetry: Telemetry, first: Any, last: Any) -> list[str]:
    """wstrace's spans that cover the connection: started before the first message, ended after the last."""
    return [
        s.name
        for s in telemetry.spans
        if s.instrumentation_scope.name == "wstrace"
        and s.start_time <= first.start_time
        and s.end_time >= last.end_time
    ]


def test_fastapi_native_server_span_is_left_alone(
    telemetry: Telemetry, instrument: Callable[..., None], client: None
) -> None:
    """With FastAPI's own telemetry on: its SERVER span gets nothing of wstrace's; wstrace's handshake is its child."""
    instrument()
    with serve(fastapi_app(telemetry=native(telemetry))) as base:
        replies = asyncio.run(exchange(f"{base}/items/7", ['{"q": 1}', '{"q": 2}']))
        settle(telemetry)
    assert [json.loads(r) for r in replies] == [{"item": 7, "q": 1}, {"item": 7, "q": 2}]
    outer = fastapi_span(telemetry)
    assert outer.name == "WS /items/{item_id}"
    assert outer.status.status_code is StatusCode.UNSET
    client_hs = contract.handshake(telemetry, "/items/7", SpanKind.CLIENT)
    assert contract.parent_id(outer) == contract.span_id(client_hs), "FastAPI continued the client's headers"
    ours = wstrace_handshake(telemetry)
    assert contract.parent_id(ours) == contract.span_id(outer)
    assert not ours.links, "its parent is the outer span: nothing to link"
    assert ours.attributes["websocket.envelope"] == "frame"
    assert ours.attributes["http.route"] == "/items/{item_id}"
    types = ["text", "text"]
    receives = contract.messages(telemetry, "/items/{item_id}", "receive", ours, types)
    contract.continued(contract.messages(telemetry, "/items/7", "send", client_hs, types), receives)
    assert connection_long(telemetry, receives[0], receives[-1]) == [], "the message model has no connection span"
    contract.no_open_spans(telemetry)


@pytest.mark.parametrize("trust", ["parent", "link"])
def test_fastapi_native_and_browser_query_context(
    telemetry: Telemetry, instrument: Callable[..., None], trust: str
) -> None:
    """A browser's context in the query string reaches wstrace's handshake span, which FastAPI's span never sees."""
    instrument(handshake_sources="headers,query", trust=trust)
    browser = telemetry.provider.get_tracer("browser").start_span("browser click", kind=SpanKind.CLIENT)
    context = browser.get_span_context()
    traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-01"
    browser.end()
    with serve(fastapi_app(telemetry=native(telemetry))) as base:
        # An uninstrumented client, as a browser: no headers of ours, context in the URL.
        assert json.loads(asyncio.run(exchange(f"{base}/items/3?traceparent={traceparent}", ['{"q": 1}']))[0])
        settle(telemetry)
    outer = fastapi_span(telemetry)
    assert contract.parent_id(outer) is None, "FastAPI reads headers only"
    ours = wstrace_handshake(telemetry)
    assert ours.attributes["wstrace.context.source"] == "query"
    kinds = {link.context.span_id: (link.attributes or {}).get("wstrace.link.kind") for link in ours.links}
    if trust == "parent":
        assert contract.parent_id(ours) == context.span_id
        assert contract.trace_id(ours) == context.trace_id
        assert kinds == {contract.span_id(outer): "server"}, "the outer span it is not a child of is linked"
    else:
        assert contract.parent_id(ours) == contract.span_id(outer)
        assert kinds == {context.span_id: "remote"}
    contract.no_open_spans(telemetry)


def test_fastapi_native_connection_model(
    telemetry: Telemetry, instrument: Callable[..., None], instrument_client: Callable[..., None]
) -> None:
    """Connection model with FastAPI's telemetry: one trace, FastAPI's span > wstrace's handshake > connection span."""
    instrument(model="connection")
    instrument_client(model="connection")
    with serve(fastapi_app(telemetry=native(telemetry))) as base:
        assert len(asyncio.run(exchange(f"{base}/items/1", ['{"n": 1}', '{"n": 2}']))) == 2
        settle(telemetry)
    outer = fastapi_span(telemetry)
    ours = wstrace_handshake(telemetry)
    assert contract.parent_id(ours) == contract.span_id(outer)
    (conn,) = telemetry.named("websocket /items/{item_id}")
    assert contract.parent_id(conn) == contract.span_id(ours)
    assert conn.attributes["websocket.close.initiator"] == "remote"
    receives = [
        s for s in telemetry.named("receive /items/{item_id}") if contract.parent_id(s) == contract.span_id(conn)
    ]
    assert len(receives) == 2
    assert len({contract.trace_id(s) for s in telemetry.spans}) == 1
    contract.no_open_spans(telemetry)


def test_connection_model_one_trace(
    telemetry: Telemetry, instrument: Callable[..., None], instrument_client: Callable[..., None]
) -> None:
    """Connection model on both ends: the client's span, both handshakes and every message share one trace."""
    instrument(model="connection")
    instrument_client(model="connection")
    tracer = telemetry.provider.get_tracer("test")

    async def scenario(url: str) -> list[Any]:
        with tracer.start_as_current_span("client-op"):
            return await exchange(url, ['{"n": 1}', '{"n": 2}'])

    with serve(fastapi_app()) as base:
        assert len(asyncio.run(scenario(f"{base}/items/1"))) == 2
        settle(telemetry)
    root = telemetry.one("client-op")
    assert {contract.trace_id(s) for s in telemetry.spans} == {contract.trace_id(root)}
    server_hs = server_handshake(telemetry)
    (server_conn,) = [
        s for s in telemetry.named("websocket /items/{item_id}") if contract.parent_id(s) == contract.span_id(server_hs)
    ]
    receives = [
        s for s in telemetry.named("receive /items/{item_id}") if contract.parent_id(s) == contract.span_id(server_conn)
    ]
    assert len(receives) == 2
    contract.no_open_spans(telemetry)


# Where the middleware goes in the stack --------------------------------------------------------


def test_goes_inside_opentelemetry_middleware_in_the_app_list(
    telemetry: Telemetry, instrument: Callable[..., None], client: None
) -> None:
    """An OpenTelemetryMiddleware in the app's own list stays outside ours, so ours is a child of its span."""
    instrument()
    otel = Middleware(OpenTelemetryMiddleware, tracer_provider=telemetry.provider, exclude_spans=["receive", "send"])
    app = starlette_app(middleware=[otel])
    with serve(app) as base:
        assert asyncio.run(exchange(f"{base}/chat", ["x"])) == ["x"]
        settle(telemetry)
    outer = server_handshake(telemetry)
    assert outer.instrumentation_scope.name == "opentelemetry.instrumentation.asgi"
    assert "websocket.envelope" not in outer.attributes
    assert contract.parent_id(wstrace_handshake(telemetry, "/chat")) == contract.span_id(outer)
    assert app.user_middleware == [otel], "the application's own list is left as it was"
    contract.no_open_spans(telemetry)


def test_hand_added_middleware_wins(telemetry: Telemetry, instrument: Callable[..., None], client: None) -> None:
    """An app that added the middleware itself keeps its own options and is traced once."""
    instrument(model="message")
    mine = Middleware(WstraceASGIMiddleware, tracer_provider=telemetry.provider, model="connection")
    with serve(starlette_app(middleware=[mine])) as base:
        assert asyncio.run(exchange(f"{base}/chat", ["x"])) == ["x"]
        settle(telemetry)
    server_hs = server_handshake(telemetry)
    assert [s for s in telemetry.named("websocket /chat") if contract.parent_id(s) == contract.span_id(server_hs)]
    contract.no_open_spans(telemetry)


# The standard instrumentor contract: what Starlette adds to test_instrumentors.py ---------------


def test_uninstrument_stops_apps_already_built(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """An app whose stack was built while instrumented stops tracing new connections after uninstrument()."""
    instrument()
    app = starlette_app()
    with serve(app) as base:
        assert asyncio.run(exchange(f"{base}/chat", ["one"])) == ["one"]
        settle(telemetry)
        assert len(telemetry.named("GET /chat")) == 1
        StarletteInstrumentor().uninstrument()
        assert asyncio.run(exchange(f"{base}/chat", ["two"])) == ["two"]
        settle(telemetry)
    assert len(telemetry.named("GET /chat")) == 1
    assert len(telemetry.named("receive /chat")) == 1


def test_fastapi_patched_on_import_and_library_not_imported() -> None:
    """Importing the adapters loads no framework, instrument() no FastAPI; FastAPI is patched when imported."""
    code = """
import sys
from wstrace.instrumentation.asgi import WstraceASGIMiddleware
from wstrace.instrumentation.starlette import StarletteInstrumentor
from wstrace.instrumentation.starlette._server import holds_ours
print("starlette" in sys.modules)
StarletteInstrumentor().instrument()
print("fastapi" in sys.modules)
from fastapi import FastAPI
print(hasattr(FastAPI.build_middleware_stack, "__wrapped__"))
StarletteInstrumentor().uninstrument()
print(hasattr(FastAPI.build_middleware_stack, "__wrapped__"))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["False", "False", "True", "False"], out.stderr


# Late instrumentation: stacks built before instrument() --------------------------------------------


def test_instrument_inside_lifespan(telemetry: Telemetry, instrument: Callable[..., None], client: None) -> None:
    """instrument() in FastAPI's lifespan, after Starlette built the stack for the lifespan call: traced."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        assert app.middleware_stack is not None, "the lifespan call built the stack"
        instrument()
        yield

    app = fastapi_app(lifespan=lifespan)
    with serve(app) as base:
        assert json.loads(asyncio.run(exchange(f"{base}/items/5", ['{"q": 1}']))[0]) == {"item": 5, "q": 1}
        settle(telemetry)
    assert server_handshake(telemetry).name == "GET /items/{item_id}"
    assert len(telemetry.named("receive /items/{item_id}")) == 1
    contract.no_open_spans(telemetry)


def test_instrument_after_the_first_connection(
    telemetry: Telemetry, instrument: Callable[..., None], client: None
) -> None:
    """A Starlette app that has served a connection is traced from the next one."""
    app = starlette_app()
    with serve(app) as base:
        assert asyncio.run(exchange(f"{base}/chat", ["one"])) == ["one"]
        settle(telemetry)
        assert not [s for s in telemetry.spans if s.kind is SpanKind.SERVER]
        instrument()
        assert asyncio.run(exchange(f"{base}/chat", ["two"])) == ["two"]
        assert asyncio.run(exchange(f"{base}/chat", ["three"])) == ["three"]
        settle(telemetry)
    assert len([s for s in telemetry.spans if s.kind is SpanKind.SERVER]) == 2
    assert len([s for s in telemetry.named("receive /chat") if s.instrumentation_scope.name == "wstrace"]) == 5
    contract.no_open_spans(telemetry)


def test_instrument_app_and_uninstrument_app(telemetry: Telemetry, client: None) -> None:
    """instrument_app() traces one started app, leaves others alone; uninstrument_app() restores its stack."""
    app, other = starlette_app(), starlette_app()
    with serve(app) as base, serve(other) as other_base:
        assert asyncio.run(exchange(f"{base}/chat", ["one"])) == ["one"]
        StarletteInstrumentor.instrument_app(app, tracer_provider=telemetry.provider, model="connection")
        assert holds_ours(app.middleware_stack)
        assert asyncio.run(exchange(f"{base}/chat", ["two"])) == ["two"]
        assert asyncio.run(exchange(f"{other_base}/chat", ["x"])) == ["x"]
        settle(telemetry)
        assert len([s for s in telemetry.spans if s.kind is SpanKind.SERVER]) == 1
        assert len(telemetry.named("websocket /chat")) == 1, "the app's own options"
        StarletteInstrumentor.uninstrument_app(app)
        assert not holds_ours(app.middleware_stack)
        assert "build_middleware_stack" not in app.__dict__
        assert asyncio.run(exchange(f"{base}/chat", ["three"])) == ["three"]
        settle(telemetry)
    assert len([s for s in telemetry.spans if s.kind is SpanKind.SERVER]) == 1
    contract.no_open_spans(telemetry)


class Custom(Starlette):
    """Builds its stack without calling Starlette's: the instrumentor cannot put its middleware in."""

    def build_middleware_stack(self) -> Any:
        return self.router


def test_app_that_cannot_be_instrumented_late_gets_one_warning(
    telemetry: Telemetry, instrument: Callable[..., None], client: None, caplog: pytest.LogCaptureFixture
) -> None:
    """One warning naming the app, however many connections follow; the app keeps working."""
    app = Custom(routes=[WebSocketRoute("/chat", echo)])
    with serve(app) as base:
        assert asyncio.run(exchange(f"{base}/chat", ["one"])) == ["one"]
        with caplog.at_level(logging.WARNING, logger="wstrace"):
            instrument()
            for word in ("two", "three"):
                assert asyncio.run(exchange(f"{base}/chat", [word])) == [word]
        settle(telemetry)
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("wstrace")]
    assert len(warnings) == 1, warnings
    assert f"test_starlette.Custom at {id(app):#x}" in warnings[0]
    assert not [s for s in telemetry.spans if s.kind is SpanKind.SERVER]


def test_fastapi_exception_log_stays_on_fastapis_span(
    telemetry: Telemetry, instrument: Callable[..., None], client: None
) -> None:
    """Connection model: FastAPI's log of an endpoint's exception names FastAPI's SERVER span, not one of wstrace's."""
    from opentelemetry.sdk._logs import LoggerProvider  # noqa: PLC0415 - the logs SDK only here
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor  # noqa: PLC0415

    instrument(model="connection")
    logs = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    app = FastAPI(
        telemetry={"tracer_provider": telemetry.provider, "metrics": False, "logger_provider": logger_provider}
    )

    @app.websocket("/fails")
    async def fails(websocket: FastAPIWebSocket) -> None:
        await websocket.accept()
        await websocket.receive_text()
        raise RuntimeError("boom")

    async def scenario(url: str) -> None:
        async with connect(url) as ws:
            await ws.send("x")
            with pytest.raises(ConnectionClosed):
                await ws.recv()

    with serve(app) as base:
        asyncio.run(scenario(f"{base}/fails"))
        settle(telemetry)
    outer = fastapi_span(telemetry)
    (record,) = [r for r in logs.get_finished_logs() if r.log_record.event_name == "fastapi.websocket.exception"]
    assert record.log_record.span_id == contract.span_id(outer)
    (conn,) = telemetry.named("websocket /fails")
    assert conn.status.status_code is StatusCode.ERROR, "wstrace records the error on its own connection span"
    assert outer.status.status_code is StatusCode.ERROR, "and FastAPI on its own"
    contract.no_open_spans(telemetry)
