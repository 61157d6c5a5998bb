"""Automatic reply streams and connection metrics, over real websockets connections.

Timings are checked against brackets the test measures itself: a chunk
recorded inside ``send`` lies between the clock readings just before and just
after that call, so each recorded figure must fall inside the bracket, widened
only by the monotonic clock's resolution.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.trace import SpanKind, StatusCode
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

from tests.conftest import Telemetry
from tests.instrumentation.contract import parent_id, span_id
from wstrace.instrumentation.websockets import WebsocketsInstrumentor
from wstrace.metrics import DURATION_BUCKETS, INTERVAL_BUCKETS


RESOLUTION = time.get_clock_info("monotonic").resolution
EPS = 2 * RESOLUTION + 1e-6  # two clock readings, plus float rounding of ns → s


@pytest.fixture
def meter() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def instrument(telemetry: Telemetry, meter: InMemoryMetricReader) -> Iterator[Callable[..., None]]:
    instrumentor = WebsocketsInstrumentor()

    def do(**options: Any) -> None:
        instrumentor.instrument(
            tracer_provider=telemetry.provider, meter_provider=MeterProvider(metric_readers=[meter]), **options
        )

    yield do
    instrumentor.uninstrument()


def within(value: float, low: float, high: float) -> bool:
    return low - EPS <= value <= high + EPS


def metric_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    found: dict[str, list[Any]] = {}
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend((metric.unit, p) for p in metric.data.data_points)
    return found


Handler = Callable[[ServerConnection], Awaitable[None]]
Client = Callable[[ClientConnection], Awaitable[Any]]


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


def talk(handler: Handler, route: str, client: Client) -> Any:
    """Serve ``handler`` on loopback, run ``client`` on a connection to ``route``, and let both ends close."""

    async def scenario() -> Any:
        async with serve(handler, "127.0.0.1", 0) as srv:
            async with connect(f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}{route}") as ws:
                result = await client(ws)
            await asyncio.sleep(0.05)
        return result

    return asyncio.run(scenario())


GAPS = [0.03, 0.01, 0.02, 0.12, 0.01]  # seconds between chunks; one stall over 0.1 s


def test_stream_timings_match_measured_brackets(
    telemetry: Telemetry, instrument: Callable[..., None], meter: InMemoryMetricReader
) -> None:
    """TTFC, TTLC, count, bytes and interval statistics of a server reply stream match the real timings."""
    instrument(stall_threshold=0.1)
    brackets: list[tuple[int, int]] = []  # (before, after) each send, monotonic ns
    got_request: list[int] = []
    sizes = [10, 200, 3000, 5, 70, 1]

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        got_request.append(time.monotonic_ns())
        await asyncio.sleep(0.05)
        for n, size in enumerate(sizes):
            if n:
                await asyncio.sleep(GAPS[n - 1])
            before = time.monotonic_ns()
            await ws.send(b"x" * size)
            brackets.append((before, time.monotonic_ns()))
        await ws.wait_closed()

    client_marks: dict[str, Any] = {}

    async def client(ws: ClientConnection) -> None:
        client_marks["send_before"] = time.monotonic_ns()
        await ws.send("go")
        client_marks["send_after"] = time.monotonic_ns()
        arrivals = []
        for _ in sizes:
            await ws.recv()
            arrivals.append(time.monotonic_ns())
        client_marks["arrivals"] = arrivals

    talk(handler, "/stream", client)
    # The server's reply stream (the client's request is a run of one: no time to first chunk).
    server_stream = next(
        s for s in telemetry.named("send /stream") if "wstrace.stream.time_to_first_chunk" in s.attributes
    )
    attributes = server_stream.attributes
    assert attributes["wstrace.stream.chunk_count"] == len(sizes)
    assert attributes["wstrace.stream.size"] == sum(sizes)
    assert attributes["messaging.message.body.size"] == sum(sizes)
    ns = 1e-9
    start_low, start_high = client_marks["send_before"], got_request[0]  # the request arrived in between
    first, last = brackets[0], brackets[-1]
    assert within(
        attributes["wstrace.stream.time_to_first_chunk"], (first[0] - start_high) * ns, (first[1] - start_low) * ns
    )
    assert within(
        attributes["wstrace.stream.time_to_last_chunk"], (last[0] - start_high) * ns, (last[1] - start_low) * ns
    )
    gaps = [((b[0] - a[1]) * ns, (b[1] - a[0]) * ns) for a, b in itertools.pairwise(brackets)]
    lows, highs = sorted(g[0] for g in gaps), sorted(g[1] for g in gaps)
    assert within(attributes["wstrace.stream.chunk_interval.max"], lows[-1], highs[-1])
    assert within(attributes["wstrace.stream.chunk_interval.mean"], sum(lows) / len(lows), sum(highs) / len(highs))
    # Nearest rank over 5 intervals: p50 is the 3rd smallest (to half a bucket of the histogram of gaps, 1/128),
    # p95 the largest (exact, as the max).
    half_bucket = 1 / 128
    assert within(
        attributes["wstrace.stream.chunk_interval.p50"], lows[2] * (1 - half_bucket), highs[2] * (1 + half_bucket)
    )
    assert within(attributes["wstrace.stream.chunk_interval.p95"], lows[4], highs[4])
    # One stall: the 0.12 s gap before the 5th chunk.
    assert attributes["wstrace.stream.stalls"] == 1
    (stall,) = [e for e in server_stream.events if e.name == "wstrace.stream.stall"]
    assert stall.attributes["wstrace.stream.chunk.index"] == 5
    assert within(stall.attributes["wstrace.stream.stall.duration"], *gaps[3])
    # The client's reply stream is timed from its own request.
    client_stream = next(s for s in telemetry.named("receive /stream") if parent_id(s) == span_id(server_stream))
    c = client_stream.attributes
    assert c["wstrace.stream.chunk_count"] == len(sizes)
    arrivals = client_marks["arrivals"]
    assert within(
        c["wstrace.stream.time_to_first_chunk"],
        (first[0] - client_marks["send_after"]) * ns,
        (arrivals[0] - client_marks["send_before"]) * ns,
    )
    assert within(
        c["wstrace.stream.time_to_last_chunk"],
        (last[0] - client_marks["send_after"]) * ns,
        (arrivals[-1] - client_marks["send_before"]) * ns,
    )
    # Span ends at the last chunk, and no chunk has a span of its own.
    assert server_stream.end_time >= server_stream.start_time
    assert len(telemetry.named("send /stream")) == 2  # the client's request and the server's stream

    points = metric_points(meter)
    for name, buckets in (
        ("wstrace.stream.time_to_first_chunk", DURATION_BUCKETS),
        ("wstrace.stream.time_to_last_chunk", DURATION_BUCKETS),
        ("wstrace.stream.chunk_interval", INTERVAL_BUCKETS),
    ):
        unit, point = next((u, p) for u, p in points[name] if p.attributes["wstrace.stream.direction"] == "outbound")
        assert unit == "s"
        assert isinstance(point, HistogramDataPoint)
        assert tuple(point.explicit_bounds) == buckets
        assert point.count == 1
    ttfc = next(
        p
        for _, p in points["wstrace.stream.time_to_first_chunk"]
        if p.attributes["wstrace.stream.direction"] == "outbound"
    )
    assert ttfc.sum == pytest.approx(attributes["wstrace.stream.time_to_first_chunk"])
    chunks = next(
        p for u, p in points["wstrace.stream.chunks"] if p.attributes["wstrace.stream.direction"] == "inbound"
    )
    assert chunks.sum == len(sizes)
    assert next(u for u, _ in points["wstrace.stream.size"]) == "By"


def test_interleaved_streams_paired_by_key(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """Two requests in flight on one connection: replies pair with their request through stream_key."""
    instrument(stream_key=lambda payload: json.loads(payload)["id"], stream_end=lambda p: json.loads(p).get("done"))

    async def reply(ws: ServerConnection, request: dict[str, Any]) -> None:
        for n in range(request["chunks"]):
            await asyncio.sleep(0.005)
            await ws.send(json.dumps({"id": request["id"], "n": n}))
        await ws.send(json.dumps({"id": request["id"], "done": True}))

    async def handler(ws: ServerConnection) -> None:
        tasks = [asyncio.create_task(reply(ws, json.loads(message))) async for message in _take(ws, 2)]
        await asyncio.gather(*tasks)
        await ws.wait_closed()

    async def client(ws: ClientConnection) -> dict[int, int]:
        counts = {1: 0, 2: 0}
        await ws.send(json.dumps({"id": 1, "chunks": 6}))
        await ws.send(json.dumps({"id": 2, "chunks": 3}))
        done = 0
        while done < 2:
            message = json.loads(await ws.recv())
            counts[message["id"]] += 1
            done += bool(message.get("done"))
        return counts

    assert talk(handler, "/multi", client) == {1: 7, 2: 4}
    streams = [s for s in telemetry.spans if "wstrace.stream.chunk_count" in (s.attributes or {})]
    server = {s.attributes["wstrace.stream.chunk_count"]: s for s in streams if s.kind is SpanKind.PRODUCER}
    client = {s.attributes["wstrace.stream.chunk_count"]: s for s in streams if s.kind is SpanKind.CONSUMER}
    assert set(server) == set(client) == {7, 4}
    server_receives = {
        s.attributes["websocket.message.ordinal"]: s
        for s in telemetry.named("receive /multi")
        if "wstrace.stream.chunk_count" not in s.attributes
    }
    # Request 1 (7 chunks with its end marker) was the first message the server handled.
    assert parent_id(server[7]) == span_id(server_receives[1])
    assert parent_id(server[4]) == span_id(server_receives[2])
    for count in (7, 4):
        assert parent_id(client[count]) == span_id(server[count]), "each client stream continues its own reply"
        assert server[count].status.status_code is StatusCode.UNSET


async def _take(ws: ServerConnection, count: int) -> Any:
    for _ in range(count):
        yield await ws.recv()


def test_abnormal_close_fails_the_stream_with_partial_metrics(
    telemetry: Telemetry, instrument: Callable[..., None], meter: InMemoryMetricReader
) -> None:
    """A client that vanishes mid-stream leaves the server's stream ended, in error, with what was sent."""
    instrument()
    sent = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        try:
            for n in range(1000):
                await ws.send(f"chunk {n}")
                if n == 2:
                    sent.set()
                await asyncio.sleep(0.01)
        except Exception:
            pass

    async def scenario() -> None:
        async with serve(handler, "127.0.0.1", 0) as srv:
            ws = await connect(f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}/drop")
            await ws.send("go")
            await sent.wait()
            ws.transport.abort()
            await asyncio.sleep(0.1)

    asyncio.run(scenario())
    stream = next(s for s in telemetry.named("send /drop") if "wstrace.stream.time_to_first_chunk" in s.attributes)
    assert stream.status.status_code is StatusCode.ERROR
    assert 3 <= stream.attributes["wstrace.stream.chunk_count"] < 1000
    assert telemetry.open_spans.names() == []
    points = metric_points(meter)
    (_, chunks) = next(
        (u, p) for u, p in points["wstrace.stream.chunks"] if p.attributes["wstrace.stream.direction"] == "outbound"
    )
    assert "error.type" in chunks.attributes
    assert chunks.sum == stream.attributes["wstrace.stream.chunk_count"]


def test_one_message_reply_records_only_its_response_time(
    telemetry: Telemetry, instrument: Callable[..., None], meter: InMemoryMetricReader
) -> None:
    """A one-message reply records TTFC only; a reply of several messages records every stream histogram.

    The span of a one-message reply still carries every stream attribute.
    """
    instrument()

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            for _ in range(1 if message == "one" else 3):
                await ws.send(message)

    async def client(ws: ClientConnection) -> None:
        for request, replies in (("one", 1), ("one", 1), ("three", 3)):
            await ws.send(request)
            for _ in range(replies):
                await ws.recv()

    talk(handler, "/r", client)
    points = metric_points(meter)

    def count(name: str, direction: str) -> int:
        return sum(p.count for _, p in points.get(name, []) if p.attributes["wstrace.stream.direction"] == direction)

    for direction in ("outbound", "inbound"):  # the server's reply streams, the client's received replies
        assert count("wstrace.stream.time_to_first_chunk", direction) == 3, "every reply has a response time"
        for name in ("wstrace.stream.time_to_last_chunk", "wstrace.stream.chunks", "wstrace.stream.size"):
            assert count(name, direction) == 1, f"{name} describes only the three-message reply"
        assert count("wstrace.stream.chunk_interval", direction) == 1
    singles = [
        s
        for s in telemetry.named("send /r")
        if s.kind is SpanKind.PRODUCER
        and s.attributes.get("wstrace.stream.chunk_count") == 1
        and "wstrace.stream.time_to_first_chunk" in s.attributes  # a reply, not the client's request
    ]
    assert len(singles) == 2
    for span in singles:
        attributes = span.attributes
        assert attributes["wstrace.stream.time_to_last_chunk"] == attributes["wstrace.stream.time_to_first_chunk"]
        assert attributes["wstrace.stream.size"] == len("one")


def test_connection_metrics(telemetry: Telemetry, instrument: Callable[..., None], meter: InMemoryMetricReader) -> None:
    """Active connections, handshake and connection durations, message counts and close codes are recorded."""
    instrument()

    async def client(ws: ClientConnection) -> None:
        for payload in ("a", b"bb", "ccc"):
            await ws.send(payload)
            await ws.recv()
        during = metric_points(meter)["wstrace.connection.active"]
        assert sum(p.value for _, p in during) == 2  # both ends are open

    talk(echo, "/m", client)
    points = metric_points(meter)
    assert sum(p.value for _, p in points["wstrace.connection.active"]) == 0
    durations = points["wstrace.connection.duration"]
    assert {p.attributes["websocket.side"] for _, p in durations} == {"client", "server"}
    assert all(u == "s" and p.attributes["websocket.close.code"] == 1000 for u, p in durations)
    assert sum(p.count for _, p in points["wstrace.handshake.duration"]) == 2

    def total(name: str, direction: str, kind: str | None = None) -> int:
        return sum(
            p.value
            for _, p in points[name]
            if p.attributes["websocket.message.direction"] == direction
            and kind in (None, p.attributes["websocket.message.type"])
        )

    assert total("wstrace.message.count", "sent", "text") == 4  # 2 requests and their 2 echoes
    assert total("wstrace.message.count", "received", "binary") == 2
    assert total("wstrace.message.size", "received") == 2 * (1 + 2 + 3)  # each end receives each payload once
    assert total("wstrace.message.size", "sent") == 2 * (1 + 2 + 3)
    for name, series in points.items():
        for _, point in series:
            assert "websocket.session.id" not in point.attributes, f"{name} carries a session id"


def test_chunk_spans_option(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """chunk_spans=True adds a span per chunk under the stream span, and the client continues each chunk."""
    instrument(chunk_spans=True)

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        for n in range(3):
            await ws.send(f"c{n}")
        await ws.wait_closed()

    async def client(ws: ClientConnection) -> None:
        await ws.send("go")
        for _ in range(3):
            await ws.recv()

    talk(handler, "/c", client)
    stream = next(s for s in telemetry.named("send /c") if s.attributes.get("wstrace.stream.chunk_count") == 3)
    chunks = [s for s in telemetry.named("send /c") if parent_id(s) == span_id(stream)]
    assert [c.attributes["websocket.message.ordinal"] for c in chunks] == [1, 2, 3]
    client_stream = next(s for s in telemetry.named("receive /c") if s.attributes.get("wstrace.stream.chunk_count"))
    assert parent_id(client_stream) == span_id(chunks[0]), "the client stream continues the first chunk"
    client_chunks = [s for s in telemetry.named("receive /c") if parent_id(s) == span_id(client_stream)]
    assert [[link.context.span_id for link in c.links] for c in client_chunks] == [[span_id(c)] for c in chunks]


def test_metrics_option_off_records_no_metric(
    telemetry: Telemetry, instrument: Callable[..., None], meter: InMemoryMetricReader
) -> None:
    """metrics=False: nothing reaches the meter provider, and the spans keep their stream attributes."""
    instrument(metrics=False)

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)
            await ws.send(message)

    async def client(ws: ClientConnection) -> None:
        await ws.send("ping")
        await ws.recv()
        await ws.recv()

    talk(handler, "/quiet", client)
    assert metric_points(meter) == {}
    streams = [s for s in telemetry.spans if (s.attributes or {}).get("wstrace.stream.chunk_count") == 2]
    assert {s.kind for s in streams} == {SpanKind.PRODUCER, SpanKind.CONSUMER}


def test_stream_histogram_exemplars_point_at_the_stream_span(
    telemetry: Telemetry, instrument: Callable[..., None], meter: InMemoryMetricReader
) -> None:
    """A reply ends where no span is current (its handler asks for the next message), yet its exemplar links to it."""
    instrument()

    async def client(ws: ClientConnection) -> None:
        await ws.send("ping")
        await ws.recv()

    talk(echo, "/ex", client)
    stream_spans = {
        span_id(s): s
        for s in telemetry.spans
        if (s.attributes or {}).get("wstrace.stream.chunk_count") == 1 and s.kind is SpanKind.PRODUCER
    }
    (point,) = [
        p
        for _, p in metric_points(meter)["wstrace.stream.time_to_first_chunk"]
        if p.attributes["wstrace.stream.direction"] == "outbound"
    ]
    (exemplar,) = point.exemplars
    stream = stream_spans[exemplar.span_id]
    assert exemplar.trace_id == stream.context.trace_id
    assert exemplar.value == pytest.approx(stream.attributes["wstrace.stream.time_to_first_chunk"])


def test_reply_stream_ends_when_the_last_task_holding_its_message_ends(
    telemetry: Telemetry, instrument: Callable[..., None]
) -> None:
    """A task the handler started keeps its message's reply stream open; the stream ends once that task is done,
    on the event loop's next turn, not when the next message or the close comes."""
    instrument()

    background: set[asyncio.Task[None]] = set()

    def start_background_work() -> None:
        task = asyncio.create_task(asyncio.sleep(0.05))  # inherits the message's context
        background.add(task)
        task.add_done_callback(background.discard)  # and lets it go once done

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            start_background_work()
            await ws.send(message)

    def reply_streams() -> list[Any]:
        return [
            s
            for s in telemetry.named("send /held")
            if s.kind is SpanKind.PRODUCER and "wstrace.stream.time_to_first_chunk" in s.attributes
        ]

    async def client(ws: ClientConnection) -> None:
        await ws.send("hi")
        await ws.recv()
        await asyncio.sleep(0.02)
        assert reply_streams() == [], "the task still holds the message: more replies are possible"
        await asyncio.sleep(0.2)
        assert len(reply_streams()) == 1, "the task is done: the stream has ended, the connection is open"

    talk(handler, "/held", client)
