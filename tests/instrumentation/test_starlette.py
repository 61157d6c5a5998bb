"""StarletteInstrumentor: Starlette and FastAPI apps traced with no code change, under a real uvicorn server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket as FastAPIWebSocket, WebSocketDisconnect
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.trace import SpanKind
from starlette.middleware import Middleware
from websockets.asyncio.client import connect

from tests.conftest import Telemetry
from tests.instrumentation import contract
from tests.instrumentation.uvicorn_server import current_span_id, serve, settle, starlette_app
from wstrace.instrumentation.asgi import WstraceASGIMiddleware
from wstrace.instrumentation.starlette import StarletteInstrumentor
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


def test_fastapi_native_server_span_is_adopted(
    telemetry: Telemetry, instrument: Callable[..., None], client: None
) -> None:
    """With FastAPI's own telemetry on, its SERVER span is the handshake span: no second one."""
    instrument()
    app = fastapi_app(telemetry={"tracer_provider": telemetry.provider, "metrics": False, "logs": False})
    with serve(app) as base:
        assert json.loads(asyncio.run(exchange(f"{base}/items/7", ['{"q": 1}']))[0]) == {"item": 7, "q": 1}
        settle(telemetry)
    adopted = server_handshake(telemetry)
    assert adopted.instrumentation_scope.name == "fastapi"
    assert adopted.name == "WS /items/{item_id}"
    assert adopted.attributes["websocket.envelope"] == "frame"
    assert not [s for s in telemetry.named("GET /items/{item_id}")]
    client_hs = contract.handshake(telemetry, "/items/7", SpanKind.CLIENT)
    contract.continued(
        contract.messages(telemetry, "/items/7", "send", client_hs, ["text"]),
        contract.messages(telemetry, "/items/{item_id}", "receive", adopted, ["text"]),
    )
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
    """An OpenTelemetryMiddleware in the app's own list stays outside ours, so its span is adopted."""
    instrument()
    otel = Middleware(OpenTelemetryMiddleware, tracer_provider=telemetry.provider, exclude_spans=["receive", "send"])
    app = starlette_app(middleware=[otel])
    with serve(app) as base:
        assert asyncio.run(exchange(f"{base}/chat", ["x"])) == ["x"]
        settle(telemetry)
    adopted = server_handshake(telemetry)
    assert adopted.instrumentation_scope.name == "opentelemetry.instrumentation.asgi"
    assert adopted.attributes["websocket.envelope"] == "frame"
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
