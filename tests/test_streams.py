"""Stream bookkeeping, the explicit ``wstrace.stream()`` API, and stream boundaries in the core."""

from __future__ import annotations

import contextvars
import time

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.trace import SpanKind, StatusCode

import wstrace
from tests.conftest import Telemetry
from tests.routes import ROUTES_ENV
from wstrace.config import Config
from wstrace.connection import ConnectionTracer
from wstrace.streams import StreamRecorder, StreamStats, bucket_gap, gap_bucket, wall_ns


MS = 1_000_000


def test_stats_exact_figures() -> None:
    """Known chunk times give exact TTFC, TTLC, mean, max, bytes and stalls, p50 to half a bucket, and p95, the
    largest gap here, exactly."""
    stats = StreamStats(start_ns=0, stall_threshold=0.025)
    times = [10, 20, 50, 55, 60]  # ms; gaps 10, 30, 5, 5
    for n, t in enumerate(times):
        stats.add(size=n + 1, now_ns=t * MS)
    attributes = stats.attributes()
    assert attributes["wstrace.stream.chunk_count"] == 5
    assert attributes["wstrace.stream.size"] == 15
    assert attributes["wstrace.stream.time_to_first_chunk"] == pytest.approx(0.010)
    assert attributes["wstrace.stream.time_to_last_chunk"] == pytest.approx(0.060)
    assert attributes["wstrace.stream.chunk_interval.mean"] == pytest.approx(0.0125)
    assert attributes["wstrace.stream.chunk_interval.max"] == pytest.approx(0.030)
    assert attributes["wstrace.stream.chunk_interval.p50"] == pytest.approx(0.005, rel=0.008)  # 5,5,10,30: rank 2
    assert attributes["wstrace.stream.chunk_interval.p95"] == pytest.approx(0.030)  # the last rank: the max, exact
    assert attributes["wstrace.stream.stalls"] == 1


def test_stats_memory_is_bounded() -> None:
    """A very long stream keeps a histogram of its gaps, not the gaps: a few keys per power of two. Mean and
    max stay exact, and the percentiles are those of every gap to within half a bucket."""
    stats = StreamStats(start_ns=0, stall_threshold=0)
    now = 0
    for n in range(200_000):
        now += MS if n % 10 else 7 * MS  # one gap in ten is 7 ms, the rest 1 ms
        stats.add(size=1, now_ns=now)
    assert len(stats.gaps) == 2 and sum(stats.gaps.values()) == 199_999
    assert stats.mean_interval == pytest.approx((now - 7 * MS) * 1e-9 / 199_999)
    assert stats.attributes()["wstrace.stream.chunk_interval.max"] == pytest.approx(0.007)
    assert stats.attributes()["wstrace.stream.chunk_interval.p50"] == pytest.approx(0.001, rel=0.008)
    assert stats.attributes()["wstrace.stream.chunk_interval.p95"] == pytest.approx(0.007, rel=0.008)


@pytest.mark.parametrize("gap", [0, 1, 127, 128, 129, 255, 256, 1000, 999_999, 1_000_000, 10**9, 2**40 + 12345])
def test_gap_buckets_sort_as_the_gaps_and_hold_them_to_half_a_bucket(gap: int) -> None:
    """Gaps under 128 ns are exact; above, the bucket's middle is within 1/128 of every gap in it; a larger gap
    never has a smaller key."""
    key = gap_bucket(gap)
    assert abs(bucket_gap(key) - gap) <= max(gap, 1) / 128 + 0.5
    if gap < 128:
        assert bucket_gap(key) == gap
    assert gap_bucket(gap + 1) >= key and gap_bucket(gap * 2 + 1) > key


def test_explicit_stream_records_span_and_genai_metrics(telemetry: Telemetry) -> None:
    """wstrace.stream() times a chunked operation from its start, with GenAI names for AI stages."""
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    with wstrace.stream(
        "chat demo-model",
        tracer_provider=telemetry.provider,
        meter_provider=meters,
        gen_ai_operation="chat",
        stall_threshold=0.05,
    ) as tokens:
        for gap in (0.01, 0.0, 0.06):
            time.sleep(gap)
            tokens.chunk(4)
    span = telemetry.one("chat demo-model")
    assert span.kind is SpanKind.CLIENT
    assert span.attributes["gen_ai.operation.name"] == "chat"
    assert span.attributes["gen_ai.request.stream"] is True
    assert span.attributes["wstrace.stream.chunk_count"] == 3
    assert span.attributes["gen_ai.response.time_to_first_chunk"] >= 0.01
    assert [e.name for e in span.events] == ["wstrace.stream.stall"]
    names = {
        m.name: m for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    }
    tpoc = names["gen_ai.client.operation.time_per_output_chunk"].data.data_points[0]
    assert tpoc.count == 2, "one value per chunk after the first"
    # Each gap as the middle of its bucket in the stream's histogram of gaps: within 1/128 of the gaps' sum.
    assert tpoc.sum == pytest.approx(2 * span.attributes["wstrace.stream.chunk_interval.mean"], rel=1 / 128)
    assert tpoc.attributes == {"gen_ai.operation.name": "chat"}
    assert names["gen_ai.client.operation.time_to_first_chunk"].unit == "s"


def test_explicit_stream_of_one_chunk_records_every_histogram(telemetry: Telemetry) -> None:
    """Only automatic one-message replies are brief: a stream the application declares is always measured in full."""
    reader = InMemoryMetricReader()
    with wstrace.stream(
        "one", tracer_provider=telemetry.provider, meter_provider=MeterProvider(metric_readers=[reader])
    ) as single:
        single.chunk(7)
    counts = {
        m.name: sum(p.count for p in m.data.data_points)
        for rm in reader.get_metrics_data().resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    for name in (
        "wstrace.stream.time_to_first_chunk",
        "wstrace.stream.time_to_last_chunk",
        "wstrace.stream.chunks",
        "wstrace.stream.size",
    ):
        assert counts.get(name) == 1, name


def test_explicit_stream_error(telemetry: Telemetry) -> None:
    """An exception inside the block fails the stream and keeps its partial figures."""
    with pytest.raises(RuntimeError), wstrace.stream("tts", tracer_provider=telemetry.provider) as audio:
        audio.chunk(320)
        raise RuntimeError("synthesis failed")
    span = telemetry.one("tts")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["wstrace.stream.chunk_count"] == 1


def test_recorder_ends_its_span_at_a_given_time(telemetry: Telemetry) -> None:
    """``end(end_ns=...)`` ends the span at that monotonic time (a receive stream ends when its last handler
    returned, after its last chunk arrived), whatever ``at_last_chunk`` says."""
    span = telemetry.provider.get_tracer("test").start_span("s")
    recorder = StreamRecorder(span, StreamStats(time.monotonic_ns(), 1.0))
    recorder.chunk(3)
    later = time.monotonic_ns() + 250_000_000
    recorder.end(at_last_chunk=True, end_ns=later)
    exported = telemetry.one("s")
    assert exported.end_time == wall_ns(later)
    assert exported.attributes["wstrace.stream.chunk_count"] == 1


@pytest.mark.parametrize("bad", [{"name": ""}, {"name": "x", "stall_threshold": -1}])
def test_explicit_stream_bad_input(bad: dict[str, object]) -> None:
    """Bad explicit input gets a typed error."""
    with pytest.raises(wstrace.WstraceError):
        wstrace.stream(**bad)  # type: ignore[arg-type]


def _pair(telemetry: Telemetry, **options: object) -> tuple[ConnectionTracer, ConnectionTracer]:
    tracer = telemetry.provider.get_tracer("t")
    config = Config.load({"WSTRACE_ROUTES": ROUTES_ENV}, **options)
    client = ConnectionTracer.client(
        tracer,
        config,
        url="ws://h/s",
        scheme="ws",
        host="h",
        port=80,
        path="/s",
    )
    server = ConnectionTracer.server(
        tracer, Config.load({"WSTRACE_ROUTES": ROUTES_ENV}, **options), path="/s", headers=client.request_headers()
    )
    response = server.response_headers()
    server.opened(response_headers=response)
    client.opened(response_headers=response)
    return client, server


def _reply(server: ConnectionTracer, client: ConnectionTracer, chunks: list[str], gap: float = 0.0) -> None:
    """The server receives a request and streams chunks back; the client receives them.

    Each end runs in a context of its own, as it would in its own task or process.
    """
    server_side, client_side = contextvars.copy_context(), contextvars.copy_context()
    wire = client_side.run(lambda: _send(client, "request"))
    server_side.run(server.received, wire)
    for chunk in chunks:
        time.sleep(gap)
        out = server_side.run(_send, server, chunk)
        client_side.run(client.receive_done)
        client_side.run(client.received, out)
    server_side.run(server.receive_done)
    client_side.run(client.receive_done)


def _send(tracer: ConnectionTracer, payload: str) -> object:
    wire, handle = tracer.send_start(payload)
    tracer.send_end(handle)
    return wire


def test_idle_gap_splits_a_stream(telemetry: Telemetry) -> None:
    """Chunks further apart than stream_idle start a new stream."""
    client, server = _pair(telemetry, stream_idle=0.05)
    wire, handle = client.send_start("request")
    client.send_end(handle)
    server.received(wire)
    for gap in (0.0, 0.0, 0.1, 0.0):
        time.sleep(gap)
        server.send_end(server.send_start("chunk")[1])
    server.receive_done()
    server.closed(code=1000, initiator="local")
    counts = sorted(
        s.attributes["wstrace.stream.chunk_count"]
        for s in telemetry.named("send /s")
        if s.kind is SpanKind.PRODUCER and "wstrace.stream.chunk_count" in s.attributes
    )
    assert counts == [2, 2]


def test_stream_end_predicate(telemetry: Telemetry) -> None:
    """The end predicate closes a stream at its marker; a predicate that raises is ignored."""
    client, server = _pair(telemetry, stream_end=lambda payload: payload == "<end>")
    _reply(server, client, ["a", "b", "<end>"])
    streams = [s for s in telemetry.spans if "wstrace.stream.chunk_count" in (s.attributes or {})]
    assert sorted((s.kind.name, s.attributes["wstrace.stream.chunk_count"]) for s in streams) == [
        ("CONSUMER", 3),
        ("PRODUCER", 1),  # the client's request: a run of one, over once the reply began
        ("PRODUCER", 3),
    ], "both reply streams ended at the marker, before any close"

    def broken(payload: object) -> bool:
        raise ValueError("bad predicate")

    client, server = _pair(telemetry, stream_end=broken)
    _reply(server, client, ["a"])  # must not raise
