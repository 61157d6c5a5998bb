"""Faulty telemetry components and the loopback scenarios of ``test_faults.py``.

Each scenario is a module-level function returning plain data, so that a test can run it in a fresh process
(``tests/fresh.py``) and count the warnings it logged: wstrace logs each kind of failure once per process.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Optional

from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

from wstrace.instrumentation.websockets import WebsocketsInstrumentor


PAYLOADS: list[str | bytes] = [
    "hello",
    "\x1ewt1\x1elook-alike: an empty envelope",
    "\x1ewt1traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\x1elook-alike",
    b"\x1ewt\x01\x00\x00binary look-alike",
    '{"_wstrace":{},"op":"json look-alike"}',
    b"\x00\x01\xff",
]
BLOCKS = 4
PER_BLOCK = 60


class Fault:
    """A switch the faulty component reads; ``on()`` and ``off()`` flip it between blocks."""

    def __init__(self) -> None:
        self.active = False
        self.release = threading.Event()

    def on(self) -> None:
        self.release = threading.Event()
        self.active = True

    def off(self) -> None:
        self.active = False
        self.release.set()  # a hanging export returns


class FaultyExporter(SpanExporter):
    """Counts what it exports; while the fault is on it raises, hangs, or hands over to ``delegate``."""

    def __init__(self, fault: Fault, mode: str, delegate: Optional[SpanExporter] = None) -> None:
        self.fault = fault
        self.mode = mode
        self.delegate = delegate
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.fault.active:
            if self.mode == "raise":
                raise ConnectionError("collector unreachable")
            if self.mode == "hang":
                self.fault.release.wait(30)
            if self.delegate is not None:
                return self.delegate.export(spans)
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        if self.delegate is not None:
            self.delegate.shutdown()


class RaisingProcessor(SpanProcessor):
    """A span processor that raises from ``on_start`` and ``on_end`` of message spans while the fault is on."""

    def __init__(self, fault: Fault, names: tuple[str, ...] = ("send", "receive")) -> None:
        self.fault = fault
        self.names = names

    def on_start(self, span: Span, parent_context: Any = None) -> None:
        if self.fault.active and span.name.startswith(self.names):
            raise RuntimeError("processor broken on start")

    def on_end(self, span: ReadableSpan) -> None:
        if self.fault.active and span.name.startswith(self.names):
            raise RuntimeError("processor broken on end")


class Counting(SpanProcessor):
    """Counts the spans that ended, exported or not."""

    def __init__(self) -> None:
        self.ended = 0

    def on_end(self, span: ReadableSpan) -> None:
        self.ended += 1


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


@asynccontextmanager
async def echo_server() -> AsyncIterator[str]:
    async with serve(echo, "127.0.0.1", 0) as srv:
        yield f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}/chat"


async def _block(ws: ClientConnection, n: int) -> list[float]:
    times = []
    for i in range(n):
        payload = PAYLOADS[i % len(PAYLOADS)]
        start = time.perf_counter()
        await ws.send(payload)
        reply = await ws.recv()
        times.append(time.perf_counter() - start)
        assert reply == payload, "a payload came back changed"
    return times


def measure(fault: Fault) -> tuple[float, float, int]:
    """Median round trip without and with the fault, alternating blocks; and the round trips made."""

    async def scenario() -> tuple[list[float], list[float]]:
        base: list[float] = []
        faulted: list[float] = []
        async with echo_server() as url, connect(url) as ws:
            await _block(ws, 30)  # warm-up
            for _ in range(BLOCKS):
                fault.off()
                base += await _block(ws, PER_BLOCK)
                fault.on()
                faulted += await _block(ws, PER_BLOCK)
            fault.off()
        await asyncio.sleep(0.05)
        return base, faulted

    base, faulted = asyncio.run(scenario())
    return statistics.median(base), statistics.median(faulted), 30 + 2 * BLOCKS * PER_BLOCK


def fragile(payload: Any) -> Any:
    """A user hook that breaks while the fault is on (set on the function by ``hooks_raise``)."""
    if fragile.fault.active:  # type: ignore[attr-defined]
        raise ValueError("hook broken")
    return None


@dataclass(frozen=True)
class Measured:
    """One scenario's outcome: median round trip without and with the fault, round trips, span counts."""

    base: float
    faulted: float
    trips: int
    exported: int = 0
    ended: int = 0
    bodies: int = 0
    shutdown: float = 0.0


def _instrumented(provider: TracerProvider, **options: Any) -> WebsocketsInstrumentor:
    instrumentor = WebsocketsInstrumentor()
    instrumentor.instrument(tracer_provider=provider, **options)
    return instrumentor


def exporter_fault(mode: str) -> Measured:
    """An exporter that raises or hangs (``mode``) behind a small BatchSpanProcessor."""
    fault = Fault()
    exporter = FaultyExporter(fault, mode)
    provider = TracerProvider()
    counter = Counting()
    provider.add_span_processor(counter)
    provider.add_span_processor(
        BatchSpanProcessor(exporter, schedule_delay_millis=20, max_queue_size=64, max_export_batch_size=32)
    )
    instrumentor = _instrumented(provider)
    try:
        base, faulted, trips = measure(fault)
    finally:
        fault.off()
        provider.shutdown()
        instrumentor.uninstrument()
    return Measured(base, faulted, trips, exported=exporter.exported, ended=counter.ended)


def otlp_endpoint_down() -> Measured:
    """The OTLP/HTTP exporter pointed at a closed loopback port, still down at shutdown."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415 - optional

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    fault = Fault()
    down = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}/v1/traces", timeout=0.5)
    exporter = FaultyExporter(fault, "delegate", down)
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=20, max_export_batch_size=64))
    instrumentor = _instrumented(provider)
    try:
        base, faulted, trips = measure(fault)
        fault.on()  # the collector is still down when the application exits
        started = time.monotonic()
        provider.shutdown()
        shutdown = time.monotonic() - started
    finally:
        fault.off()
        instrumentor.uninstrument()
    return Measured(base, faulted, trips, shutdown=shutdown)


def processor_raises(names: tuple[str, ...]) -> Measured:
    """A span processor raising from on_start and on_end of the spans named ``names*`` while the fault is on."""
    fault = Fault()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(RaisingProcessor(fault, names))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = _instrumented(provider)
    try:
        base, faulted, trips = measure(fault)
    finally:
        instrumentor.uninstrument()
    return Measured(base, faulted, trips, exported=len(exporter.get_finished_spans()))


def hooks_raise() -> Measured:
    """stream_end, stream_key and redact (with capture on) raising on every message while the fault is on."""
    fault = Fault()
    fragile.fault = fault  # type: ignore[attr-defined]
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    def end(payload: Any) -> bool:
        fragile(payload)
        return False

    instrumentor = _instrumented(provider, stream_end=end, stream_key=fragile, redact=fragile, capture_payload=True)
    try:
        base, faulted, trips = measure(fault)
    finally:
        instrumentor.uninstrument()
    spans = exporter.get_finished_spans()
    bodies = sum(1 for s in spans if "websocket.message.body" in (s.attributes or {}))
    return Measured(base, faulted, trips, exported=len(spans), bodies=bodies)
