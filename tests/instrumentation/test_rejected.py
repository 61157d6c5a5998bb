"""A server that rejects the upgrade records its handshake span and nothing else, on every server adapter.

No connection opened: no close span, no close metric, no active connection. A raw client sends the upgrade
request, so that no client instrumentation adds spans of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

import pytest
from aiohttp import web
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from tornado.websocket import WebSocketHandler
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from tests.conftest import Telemetry
from tests.instrumentation import aiohttp_app, contract, tornado_app, uvicorn_server
from tests.reliability.rawws import RawClient
from wstrace.instrumentation.aiohttp import AiohttpInstrumentor
from wstrace.instrumentation.starlette import StarletteInstrumentor
from wstrace.instrumentation.tornado import TornadoInstrumentor
from wstrace.instrumentation.websockets import WebsocketsInstrumentor


@asynccontextmanager
async def websockets_server() -> AsyncIterator[str]:
    """``process_request`` answers 403."""

    def refuse(connection: ServerConnection, request: Request) -> Response:
        return connection.respond(403, "no\n")

    async def handler(ws: ServerConnection) -> None:
        raise AssertionError("never reached")

    async with serve(handler, "127.0.0.1", 0, process_request=refuse) as srv:
        yield f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}/chat"


@asynccontextmanager
async def aiohttp_server() -> AsyncIterator[str]:
    """An ``on_response_prepare`` handler refuses the 101 with 403, inside ``prepare``.

    aiohttp then drops the connection without a response (the upgrade is under way).
    """

    async def refuse(request: web.Request, response: web.StreamResponse) -> None:
        raise web.HTTPForbidden()

    app = web.Application()
    app.router.add_get("/chat", aiohttp_app.echo)
    app.on_response_prepare.append(refuse)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"ws://127.0.0.1:{runner.addresses[0][1]}/chat"
    finally:
        await runner.cleanup()


class Refuse(WebSocketHandler):
    def check_origin(self, origin: str) -> bool:
        return False  # tornado answers 403


@asynccontextmanager
async def starlette_server() -> AsyncIterator[str]:
    """The application closes before accepting: 403."""

    async def refuse(websocket: WebSocket) -> None:
        await websocket.close()

    with uvicorn_server.serve(Starlette(routes=[WebSocketRoute("/chat", refuse)])) as base:
        yield base + "/chat"


@dataclass(frozen=True)
class Case:
    server: Callable[[], AbstractAsyncContextManager[str]]
    instrumentor: type[BaseInstrumentor]
    answer: int | None = 403
    """The status the client gets; ``None``: the connection is dropped."""


CASES = {
    "websockets": Case(websockets_server, WebsocketsInstrumentor),
    "aiohttp": Case(aiohttp_server, AiohttpInstrumentor, answer=None),
    "tornado": Case(lambda: tornado_app.server(Refuse), TornadoInstrumentor),
    "starlette": Case(starlette_server, StarletteInstrumentor),
}


@pytest.fixture
def meter() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest, telemetry: Telemetry, meter: InMemoryMetricReader) -> Iterator[Case]:
    chosen = CASES[request.param]
    instrumentor = chosen.instrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider, meter_provider=MeterProvider(metric_readers=[meter]))
    yield chosen
    instrumentor.uninstrument()


def test_rejected_upgrade_records_only_its_handshake(
    case: Case, telemetry: Telemetry, meter: InMemoryMetricReader
) -> None:
    async def scenario() -> int | None:
        async with case.server() as url:
            try:
                client = await RawClient.connect(url, [(b"Origin", b"http://elsewhere.example")])
            except asyncio.IncompleteReadError:
                status = None
            else:
                status = client.status
                await client.close()
            await asyncio.sleep(0.3)  # whatever the server records after the connection went, it has
        return status

    assert asyncio.run(scenario()) == case.answer
    spans = telemetry.spans
    assert [(s.name, s.kind) for s in spans] == [("GET /chat", SpanKind.SERVER)], [s.name for s in spans]
    handshake = spans[0]
    assert handshake.attributes["http.response.status_code"] == 403
    assert handshake.status.status_code is StatusCode.UNSET  # a refusal is the client's fault
    contract.no_open_spans(telemetry)
    # No connection opened, so no connection metric: only the handshake's duration.
    data = meter.get_metrics_data()
    names = {m.name for rm in (data.resource_metrics if data else ()) for sm in rm.scope_metrics for m in sm.metrics}
    assert names <= {"wstrace.handshake.duration"}, names
