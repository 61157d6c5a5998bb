"""Route names: a framework's template, the ``routes`` option, or no route at all, never a raw path.

Runs without the suite's ``path_as_route`` setting (``tests/routes.py``): these are the defaults a user gets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.trace import SpanKind
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from tests.conftest import Telemetry
from wstrace.instrumentation.aiohttp import AiohttpInstrumentor
from wstrace.instrumentation.websockets import WebsocketsInstrumentor


@pytest.fixture
def metrics() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def websockets_traced(
    telemetry: Telemetry, metrics: InMemoryMetricReader, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    monkeypatch.delenv("WSTRACE_ROUTES")
    instrumentor = WebsocketsInstrumentor()

    def instrument(**options: Any) -> None:
        meters = MeterProvider(metric_readers=[metrics])
        instrumentor.instrument(tracer_provider=telemetry.provider, meter_provider=meters, **options)

    yield instrument
    instrumentor.uninstrument()


async def _echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def _chat(paths: list[str]) -> None:
    async with serve(_echo, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        for path in paths:
            async with connect(f"ws://127.0.0.1:{port}{path}?token=secret") as ws:
                await ws.send("hi")
                assert await ws.recv() == "hi"
        await asyncio.sleep(0.05)


def _metric_attributes(reader: InMemoryMetricReader) -> list[dict[str, Any]]:
    data = reader.get_metrics_data()
    return [
        dict(point.attributes)
        for resource in (data.resource_metrics if data else ())
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
    ]


def test_without_a_router_names_carry_no_path(
    telemetry: Telemetry, metrics: InMemoryMetricReader, websockets_traced: Any
) -> None:
    """websockets has no router: spans are named as OpenTelemetry's HTTP conventions name routerless spans, and
    neither spans nor metrics carry the raw path, so /chat/1 and /chat/2 are not two routes."""
    websockets_traced()
    asyncio.run(_chat(["/chat/1", "/chat/2"]))
    names = {(s.name, s.kind) for s in telemetry.spans}
    assert ("GET", SpanKind.SERVER) in names and ("GET", SpanKind.CLIENT) in names
    assert {n for n, _ in names} == {"GET", "send", "receive", "close"}
    assert not [s.name for s in telemetry.spans if "http.route" in (s.attributes or {})]
    server = [s for s in telemetry.spans if s.kind is SpanKind.SERVER]
    assert sorted(s.attributes["url.path"] for s in server) == ["/chat/1", "/chat/2"]  # on spans only
    points = _metric_attributes(metrics)
    assert points, "metrics were recorded"
    for attributes in points:
        assert "http.route" not in attributes
        assert not any("/chat/" in str(value) for value in attributes.values()), attributes


def test_routes_option_names_the_template(
    telemetry: Telemetry, metrics: InMemoryMetricReader, websockets_traced: Any
) -> None:
    websockets_traced(routes=["/chat/{id}"])
    asyncio.run(_chat(["/chat/1", "/chat/2", "/other"]))
    routed = [s for s in telemetry.spans if s.name.endswith("/chat/{id}")]
    assert {s.name for s in routed} == {"GET /chat/{id}", "send /chat/{id}", "receive /chat/{id}", "close /chat/{id}"}
    assert {s.attributes["http.route"] for s in routed if s.kind is SpanKind.SERVER} == {"/chat/{id}"}
    assert len([s for s in telemetry.spans if s.name == "GET /chat/{id}"]) == 4  # two connections, both ends
    assert {s.name for s in telemetry.spans if s not in routed} == {"GET", "send", "receive", "close"}  # /other
    routes = {a.get("http.route") for a in _metric_attributes(metrics)}
    assert routes == {"/chat/{id}", None}


def test_a_routes_function_that_raises_means_no_route(telemetry: Telemetry, websockets_traced: Any) -> None:
    def broken(path: str) -> str:
        raise KeyError(path)

    websockets_traced(routes=broken)
    asyncio.run(_chat(["/chat/1"]))
    assert {s.name for s in telemetry.spans} == {"GET", "send", "receive", "close"}


def test_a_framework_template_wins_over_the_routes_option(
    telemetry: Telemetry, metrics: InMemoryMetricReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WSTRACE_ROUTES")
    instrumentor = AiohttpInstrumentor()
    instrumentor.instrument(
        tracer_provider=telemetry.provider, meter_provider=MeterProvider(metric_readers=[metrics]), routes=["/{x}/{y}"]
    )
    try:

        async def handler(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for message in ws:
                await ws.send_str(message.data)
            return ws

        async def scenario() -> None:
            app = web.Application()
            app.router.add_get("/rooms/{room}", handler)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            async with connect(f"ws://127.0.0.1:{port}/rooms/7") as ws:
                await ws.send("hi")
                await ws.recv()
            await asyncio.sleep(0.05)
            await runner.cleanup()

        asyncio.run(scenario())
    finally:
        instrumentor.uninstrument()
    server = next(s for s in telemetry.spans if s.kind is SpanKind.SERVER)
    assert server.name == "GET /rooms/{room}"
    assert server.attributes["http.route"] == "/rooms/{room}"
