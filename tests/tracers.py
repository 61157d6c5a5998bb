"""ConnectionTracer pairs for the core's tests: a client and a server tracer that talk without sockets."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from tests.conftest import Telemetry
from tests.routes import ROUTES_ENV
from wstrace.config import Config
from wstrace.connection import ConnectionTracer
from wstrace.metrics import Instruments


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
REMOTE_TRACE = 0x0AF7651916CD43DD8448EB211C80319C
REMOTE_SPAN = 0xB7AD6B7169203331


def client(telemetry: Telemetry, **options: Any) -> ConnectionTracer:
    return ConnectionTracer.client(
        telemetry.provider.get_tracer("t"),
        Config.load({"WSTRACE_ROUTES": ROUTES_ENV}, **options),
        url="ws://example.test:8080/chat?token=secret",
        scheme="ws",
        host="example.test",
        port=8080,
        path="/chat",
    )


def server(telemetry: Telemetry, headers: Any = (), **options: Any) -> ConnectionTracer:
    query = options.pop("query", "")
    subprotocols = options.pop("subprotocols", ())
    return ConnectionTracer.server(
        telemetry.provider.get_tracer("t"),
        Config.load({"WSTRACE_ROUTES": ROUTES_ENV}, **options),
        path="/chat",
        query=query,
        headers=headers,
        subprotocols=subprotocols,
    )


def connect(telemetry: Telemetry, client_options: Any = None, server_options: Any = None) -> tuple[Any, Any]:
    """Run a whole handshake between a client and a server tracer."""
    c = client(telemetry, **(client_options or {}))
    s = server(telemetry, c.request_headers(), **(server_options or {}))
    response = s.response_headers()
    s.opened(response_headers=response)
    c.opened(response_headers=response)
    return c, s


def handshake(telemetry: Telemetry, kind: SpanKind) -> ReadableSpan:
    return next(s for s in telemetry.named("GET /chat") if s.kind is kind)


class Metered:
    """A client and a server tracer on one real SDK meter provider, with what it collected."""

    def __init__(self, telemetry: Telemetry, **options: Any) -> None:
        self.reader = InMemoryMetricReader()
        self.instruments = instruments = Instruments(MeterProvider(metric_readers=[self.reader]))
        tracer = telemetry.provider.get_tracer("t")
        config = Config.load({"WSTRACE_ROUTES": ROUTES_ENV}, **options)
        self.client = ConnectionTracer.client(
            tracer, config, url="ws://h/chat", scheme="ws", host="h", port=80, path="/chat", instruments=instruments
        )
        self.server = ConnectionTracer.server(
            tracer, config, path="/chat", headers=self.client.request_headers(), instruments=instruments
        )
        response = self.server.response_headers()
        self.server.opened(response_headers=response)
        self.client.opened(response_headers=response)

    def round_trips(self, n: int) -> None:
        for i in range(n):
            wire, handle = self.client.send_start(f"ping {i}")
            self.client.send_end(handle)
            self.server.received(wire)
            wire, handle = self.server.send_start(f"pong {i}")
            self.server.send_end(handle)
            self.server.receive_done()
            self.client.received(wire)
            self.client.receive_done()

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        return [
            point
            for resource in (data.resource_metrics if data else ())
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]

    def total(self, name: str, **attributes: Any) -> int:
        return sum(
            p.count if hasattr(p, "count") else p.value
            for p in self.points(name)
            if all(p.attributes.get(k) == v for k, v in attributes.items())
        )
