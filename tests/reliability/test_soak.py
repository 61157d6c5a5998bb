"""Soak: 500 concurrent instrumented connections for a bounded time, with random disconnects.

websockets asyncio client and server in one process. Clients send text and binary payloads (envelope
look-alikes among them), reconnect when a connection ends, and end each connection at random: a
normal close, a client that vanishes (``transport.abort()``), or a server that vanishes. With
``streams=False`` every message is exactly one span, so the exported spans can be counted against the
messages sent and received. RSS (``/proc/self/statm``) is sampled throughout and must be flat after
warm-up. ``WSTRACE_SOAK_SECONDS`` lengthens the run by hand; CI uses the default.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import resource
import statistics
import time
from collections import Counter
from collections.abc import Iterator, Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.conftest import OpenSpans
from tests.reliability.apps import assert_released, live
from wstrace.connection import ConnectionTracer
from wstrace.instrumentation.websockets import WebsocketsInstrumentor


pytestmark = pytest.mark.soak

CONNECTIONS = 500
SECONDS = float(os.environ.get("WSTRACE_SOAK_SECONDS", "20"))
WARM_UP = 0.3  # of the run
RSS_TOLERANCE = 1.10
PAGE = os.sysconf("SC_PAGE_SIZE")
PAYLOADS: list[str | bytes] = [
    "hello",
    "\x1ewt1\x1elook-alike",
    b"\x1ewt\x01\x00\x00binary look-alike",
    '{"_wstrace":{},"op":"json"}',
    "ü" * 200,
    bytes(range(256)),
]


class CountingExporter(SpanExporter):
    """Counts exported spans by name and status; keeps none (so RSS measures wstrace, not the test)."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            self.counts[(span.name, span.status.status_code.name)] += 1
        return SpanExportResult.SUCCESS

    def by_name(self, name: str) -> int:
        return sum(n for (span_name, _), n in self.counts.items() if span_name == name)


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


@pytest.fixture
def file_limit() -> Iterator[None]:
    """Two sockets per connection in one process: raise the soft limit on open files if it is low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * CONNECTIONS + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_soak(file_limit: None, caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest) -> None:
    """No exception escapes, every message is one exported span, nothing is left open, and RSS is flat."""
    before = live(ConnectionTracer)
    exporter = CountingExporter()
    open_spans = OpenSpans()
    provider = TracerProvider()
    provider.add_span_processor(open_spans)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = WebsocketsInstrumentor()
    instrumentor.instrument(tracer_provider=provider, streams=False)
    counts: Counter[str] = Counter()
    escaped: list[BaseException] = []
    samples: list[tuple[float, int]] = []

    async def handler(ws: ServerConnection) -> None:
        try:
            async for message in ws:
                counts["server received"] += 1
                if message == "vanish":
                    ws.transport.abort()  # the server vanishes: no reply, no close frame
                    return
                await ws.send(message)
                counts["server sent"] += 1
        except ConnectionClosed:
            pass
        except Exception as exc:
            escaped.append(exc)

    async def client(url: str, rng: random.Random, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                async with connect(url, open_timeout=30) as ws:
                    counts["connections"] += 1
                    for _ in range(rng.randint(5, 40)):
                        payload = rng.choice(PAYLOADS)
                        await ws.send(payload)
                        counts["client sent"] += 1
                        reply = await ws.recv()
                        counts["client received"] += 1
                        if reply != payload:
                            counts["changed"] += 1
                        await asyncio.sleep(rng.uniform(0, 0.05))
                        if time.monotonic() >= deadline:
                            break
                    ending = rng.random()
                    if ending < 0.15:
                        counts["client vanished"] += 1
                        ws.transport.abort()
                    elif ending < 0.30:
                        counts["server vanished"] += 1
                        await ws.send("vanish")
                        counts["client sent"] += 1
                        try:
                            await ws.recv()
                        except ConnectionClosed:
                            pass
            except Exception as exc:
                escaped.append(exc)

    async def sample(stop: asyncio.Event) -> None:
        start = time.monotonic()
        while not stop.is_set():
            samples.append((time.monotonic() - start, rss()))
            await asyncio.sleep(0.25)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(
            lambda _loop, context: escaped.append(context.get("exception") or Exception(context))
        )
        async with serve(handler, "127.0.0.1", 0, backlog=CONNECTIONS) as srv:
            url = f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}/soak"
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample(stop))
            deadline = time.monotonic() + SECONDS
            rng = random.Random(20240601)
            await asyncio.gather(*(client(url, random.Random(rng.random()), deadline) for _ in range(CONNECTIONS)))
            stop.set()
            await sampler
        await asyncio.sleep(0.2)

    with caplog.at_level(logging.ERROR):
        started = time.monotonic()
        asyncio.run(scenario())
        elapsed = time.monotonic() - started
    instrumentor.uninstrument()

    assert escaped == [], f"{len(escaped)} exceptions escaped, first: {escaped[:3]!r}"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert counts["changed"] == 0, "a payload came back changed"
    assert counts["connections"] >= CONNECTIONS
    assert counts["client vanished"] and counts["server vanished"], "both kinds of disconnect happened"
    # One span per message (streams=False), per side; two handshakes and two closes per connection.
    assert exporter.by_name("send /soak") == counts["client sent"] + counts["server sent"]
    assert exporter.by_name("receive /soak") == counts["client received"] + counts["server received"]
    assert exporter.by_name("GET /soak") == 2 * counts["connections"]
    assert exporter.by_name("close /soak") == 2 * counts["connections"]
    assert exporter.counts[("close /soak", "ERROR")] >= counts["client vanished"] + counts["server vanished"]
    assert open_spans.names() == [], "every span ended"
    provider.shutdown()
    assert_released(before)

    after_warm_up = [r for t, r in samples if t >= WARM_UP * SECONDS]
    third = max(1, len(after_warm_up) // 3)
    early, late = statistics.median(after_warm_up[:third]), statistics.median(after_warm_up[-third:])
    messages = sum(counts[k] for k in ("client sent", "server sent"))
    for key, value in {
        "seconds": elapsed,
        "messages": messages,
        "spans": sum(exporter.counts.values()),
        "connections": counts["connections"],
        "rss_early_mb": early / 2**20,
        "rss_late_mb": late / 2**20,
    }.items():
        request.node.user_properties.append((key, value))
    assert late <= early * RSS_TOLERANCE, f"RSS grew from {early / 2**20:.1f} MB to {late / 2**20:.1f} MB"
