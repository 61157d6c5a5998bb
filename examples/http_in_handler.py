"""A websockets handler that calls an HTTP API while it answers each message.

The client asks for the weather in a city (``{"city": ...}``); the server's handler asks a small HTTP API for the
forecast with ``httpx`` and sends the answer back. The API is a Starlette app served by uvicorn on loopback,
traced by OpenTelemetry's ASGI middleware; the ``httpx`` call is traced by OpenTelemetry's httpx
instrumentation. wstrace makes the handler's receive span current while the message is handled, so the HTTP
call needs no code of its own to join the message's trace: each question is one trace, the client's ``send``,
the server's ``receive`` with two children, the HTTP ``GET`` (``CLIENT``, with the API's ``SERVER`` span under
it) and the reply ``send``, and the client's ``receive`` of the reply. Run it::

    python examples/http_in_handler.py

Spans are printed to the console. ``tests/examples/test_http_in_handler.py`` runs it over loopback and checks
the trace shape.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import httpx
import uvicorn
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from wstrace.instrumentation.websockets import WebsocketsInstrumentor


CITIES = ("paris", "oslo")
FORECASTS = {"paris": "sunny", "oslo": "snow"}


def make_api(provider: trace.TracerProvider | None = None) -> OpenTelemetryMiddleware:
    """The HTTP API: ``GET /weather/{city}``, traced by OpenTelemetry's ASGI middleware (one SERVER span per
    request; its per-message ``http send``/``http receive`` spans are left out)."""

    async def weather(request: Request) -> JSONResponse:
        city = request.path_params["city"]
        return JSONResponse({"city": city, "forecast": FORECASTS.get(city, "unknown")})

    app = Starlette(routes=[Route("/weather/{city}", weather)])
    return OpenTelemetryMiddleware(app, tracer_provider=provider, exclude_spans=["receive", "send"])


def make_handler(http: httpx.AsyncClient) -> Callable[[ServerConnection], Awaitable[None]]:
    """The WebSocket server's handler: each question is answered with what the HTTP API (``http``) says."""

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            city = json.loads(message)["city"]
            response = await http.get(f"/weather/{city}")  # in the message's trace, with no code for it
            response.raise_for_status()
            await ws.send(json.dumps({"city": city, "forecast": response.json()["forecast"]}))

    return handler


async def ask(url: str, cities: tuple[str, ...] = CITIES) -> list[str]:
    """The client: one question at a time, each answer read before the next."""
    forecasts = []
    async with connect(url) as ws:
        for city in cities:
            await ws.send(json.dumps({"city": city}))
            forecasts.append(json.loads(await ws.recv())["forecast"])
    return forecasts


async def main(provider: trace.TracerProvider | None = None, cities: tuple[str, ...] = CITIES) -> list[str]:
    """Serve the API and the WebSocket server on free loopback ports, ask about ``cities``, return the forecasts."""
    instrumentor = WebsocketsInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)
    api = uvicorn.Server(uvicorn.Config(make_api(provider), host="127.0.0.1", port=0, log_level="warning"))
    serving = asyncio.create_task(api.serve())
    try:
        while not api.started:
            if serving.done():
                serving.result()  # raises what stopped it
            await asyncio.sleep(0.005)
        api_url = f"http://127.0.0.1:{api.servers[0].sockets[0].getsockname()[1]}"
        # One HTTP client for the server, made before it serves: every connection's handler shares it.
        async with httpx.AsyncClient(base_url=api_url) as http, serve(make_handler(http), "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            forecasts = await ask(f"ws://127.0.0.1:{port}/weather", cities)
            await asyncio.sleep(0.05)  # the server's end sees the close
        return forecasts
    finally:
        api.should_exit = True
        await serving
        HTTPXClientInstrumentor().uninstrument()
        instrumentor.uninstrument()


if __name__ == "__main__":
    console = TracerProvider()
    console.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    for city, forecast in zip(CITIES, asyncio.run(main(console)), strict=True):
        print(city, forecast)
