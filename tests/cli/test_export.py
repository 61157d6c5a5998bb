"""The OTLP/JSON file exporter and reader, against spans from the real SDK and the OTLP protobuf schema."""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf.json_format import MessageToJson, Parse
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan, Status as ProtoStatus
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from tests.conftest import Telemetry
from wstrace.cli.export import OtlpJsonFileExporter, SpanRecord, read_spans, read_trace_file


ATTRIBUTES = {
    "str": 'héllo ✓ "quoted" </script>',
    "str.empty": "",
    "bool": True,
    "int": 42,
    "int.negative": -7,
    "int.big": 2**62,
    "double": 0.125,
    "double.negative": -2.5e-9,
    "array.str": ("a", "b"),
    "array.bool": (True, False),
    "array.int": (1, 2, 3),
    "array.double": (0.5, 1.5),
    "array.empty": (),
}
REMOTE = SpanContext(0xABCDEF0123456789ABCDEF0123456789, 0x1122334455667788, is_remote=True, trace_flags=TraceFlags(1))


class FileTelemetry(Telemetry):
    """The conftest tracer provider, also exporting to an OTLP/JSON file."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.file_exporter = OtlpJsonFileExporter(path)
        self.provider.add_span_processor(SimpleSpanProcessor(self.file_exporter))

    def lines(self) -> list[str]:
        return self.path.read_text(encoding="utf-8").splitlines()


@pytest.fixture
def telemetry_file(tmp_path: Path) -> Iterator[FileTelemetry]:
    telemetry = FileTelemetry(tmp_path / "traces.jsonl")
    yield telemetry
    telemetry.provider.shutdown()


def record(telemetry: Telemetry) -> None:
    """Spans of two scopes: every attribute type, events, a link, an error, OK, and a remote parent."""
    server = telemetry.provider.get_tracer("wstrace.instrumentation.websockets", "0.1.0")
    app = telemetry.provider.get_tracer("chat.app", "2.0.0", schema_url="https://opentelemetry.io/schemas/1.26.0")
    with server.start_as_current_span("GET /chat", context=Context(), kind=SpanKind.SERVER, attributes=ATTRIBUTES) as s:
        s.add_event("wstrace.stream.stall", {"wstrace.stream.stall.duration": 1.5, "wstrace.stream.chunk.index": 7})
        s.add_event("bare event")
        link = Link(REMOTE, {"wstrace.link.kind": "remote", "weights": (1, 2)})
        with app.start_as_current_span("send /chat", kind=SpanKind.PRODUCER, links=[link]):
            pass
        with app.start_as_current_span("fail", kind=SpanKind.CLIENT) as failed:
            failed.set_status(Status(StatusCode.ERROR, "connection closed: 1006"))
    parent = trace.set_span_in_context(NonRecordingSpan(REMOTE))
    with server.start_as_current_span("receive /chat", context=parent, kind=SpanKind.CONSUMER) as ok:
        ok.set_status(Status(StatusCode.OK))


def by_id(spans: list[ReadableSpan]) -> dict[str, ReadableSpan]:
    """SDK spans by hex span id."""
    return {f"{s.context.span_id:016x}": s for s in spans}


def test_every_line_parses_as_an_otlp_request(telemetry_file: FileTelemetry) -> None:
    """Each line is one ExportTraceServiceRequest that protobuf's JSON parser accepts, field names included."""
    record(telemetry_file)
    lines = telemetry_file.lines()
    assert len(lines) == len(telemetry_file.spans) == 4  # SimpleSpanProcessor: one batch per span
    for line in lines:
        request = Parse(line, ExportTraceServiceRequest())  # unknown field names or bad types would raise
        raw = json.loads(line)
        assert list(raw) == ["resourceSpans"]
        span = raw["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
        assert re.fullmatch("[0-9a-f]{32}", span["traceId"]) and re.fullmatch("[0-9a-f]{16}", span["spanId"])
        # OTLP/JSON ids are hex where plain protobuf JSON has base64: protobuf read the hex text as base64.
        parsed = request.resource_spans[0].scope_spans[0].spans[0]
        assert base64.b64encode(parsed.trace_id).decode() == span["traceId"]
        assert (
            isinstance(span["startTimeUnixNano"], str) and int(span["startTimeUnixNano"]) == parsed.start_time_unix_nano
        )


def test_a_batch_is_grouped_by_resource_and_scope(telemetry_file: FileTelemetry, tmp_path: Path) -> None:
    """A batch of spans from two scopes is one line with one resource and two scopeSpans, mapped as in OTLP."""
    record(telemetry_file)
    batch = OtlpJsonFileExporter(tmp_path / "batch.jsonl")
    assert batch.export(telemetry_file.spans) is SpanExportResult.SUCCESS
    batch.shutdown()
    [line] = (tmp_path / "batch.jsonl").read_text(encoding="utf-8").splitlines()
    request = Parse(line, ExportTraceServiceRequest())
    [resource_spans] = request.resource_spans
    service = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}
    assert service["service.name"].startswith("unknown_service") and service["telemetry.sdk.language"] == "python"
    scopes = {
        (s.scope.name, s.scope.version, s.schema_url): [span.name for span in s.spans]
        for s in resource_spans.scope_spans
    }
    assert scopes == {
        ("wstrace.instrumentation.websockets", "0.1.0", ""): ["GET /chat", "receive /chat"],
        ("chat.app", "2.0.0", "https://opentelemetry.io/schemas/1.26.0"): ["send /chat", "fail"],
    }
    spans = {span.name: span for s in resource_spans.scope_spans for span in s.spans}
    assert spans["GET /chat"].kind == ProtoSpan.SPAN_KIND_SERVER
    assert spans["send /chat"].kind == ProtoSpan.SPAN_KIND_PRODUCER
    assert spans["fail"].kind == ProtoSpan.SPAN_KIND_CLIENT
    assert spans["receive /chat"].kind == ProtoSpan.SPAN_KIND_CONSUMER
    assert spans["fail"].status.code == ProtoStatus.STATUS_CODE_ERROR
    assert spans["fail"].status.message == "connection closed: 1006"
    assert spans["receive /chat"].status.code == ProtoStatus.STATUS_CODE_OK
    values = {kv.key: kv.value for kv in spans["GET /chat"].attributes}
    assert values["int"].int_value == 42 and values["int.big"].int_value == 2**62
    assert values["double"].double_value == 0.125 and values["bool"].bool_value is True
    assert [v.int_value for v in values["array.int"].array_value.values] == [1, 2, 3]
    assert values["array.empty"].WhichOneof("value") == "array_value"
    assert [e.name for e in spans["GET /chat"].events] == ["wstrace.stream.stall", "bare event"]
    [link] = spans["send /chat"].links
    assert {kv.key: kv.value.string_value for kv in link.attributes}["wstrace.link.kind"] == "remote"
    # flags: the W3C trace flags, plus "is the parent remote" known (0x100) and true (0x200) for the remote child.
    sdk_flags = {s.name: int(s.context.trace_flags) for s in telemetry_file.spans}
    assert spans["GET /chat"].flags == 0x100 | sdk_flags["GET /chat"] and sdk_flags["GET /chat"] & 1
    assert spans["receive /chat"].flags == 0x300 | sdk_flags["receive /chat"]
    assert link.flags == 0x301


def test_round_trip_through_the_reader(telemetry_file: FileTelemetry) -> None:
    """read_spans gives back the SDK spans' ids, names, kinds, times, attributes, events, links and status."""
    record(telemetry_file)
    records = read_spans(telemetry_file.path)
    sdk = by_id(telemetry_file.spans)
    assert sorted(r.span_id for r in records) == sorted(sdk)
    for found in records:
        span = sdk[found.span_id]
        assert found.trace_id == f"{span.context.trace_id:032x}"
        assert found.parent_span_id == (f"{span.parent.span_id:016x}" if span.parent else None)
        assert (found.name, found.kind) == (span.name, span.kind.name)
        assert (found.start_ns, found.end_ns) == (span.start_time, span.end_time)
        assert found.attributes == dict(span.attributes or {})
        assert [(e.name, e.time_ns, e.attributes) for e in found.events] == [
            (e.name, e.timestamp, dict(e.attributes or {})) for e in span.events
        ]
        assert [(lk.trace_id, lk.span_id, lk.attributes) for lk in found.links] == [
            (f"{lk.context.trace_id:032x}", f"{lk.context.span_id:016x}", dict(lk.attributes or {}))
            for lk in span.links
        ]
        assert (found.status, found.status_message) == (span.status.status_code.name, span.status.description or "")
        assert found.resource == dict(span.resource.attributes)
        assert span.instrumentation_scope is not None
        assert (found.scope, found.scope_version) == (
            span.instrumentation_scope.name,
            span.instrumentation_scope.version,
        )
    receive = next(r for r in records if r.name == "receive /chat")
    assert receive.parent_span_id == "1122334455667788" and receive.trace_id == "abcdef0123456789abcdef0123456789"
    assert receive.duration_ns == receive.end_ns - receive.start_ns > 0


def test_non_finite_doubles_are_written_as_protobuf_strings(telemetry_file: FileTelemetry) -> None:
    """NaN and infinities become "NaN"/"Infinity" (valid JSON that protobuf accepts) and read back as floats."""
    tracer = telemetry_file.provider.get_tracer("t")
    tracer.start_span("odd", attributes={"nan": math.nan, "inf": math.inf, "ninf": -math.inf}).end()
    [line] = telemetry_file.lines()
    values = {
        kv.key: kv.value.double_value
        for kv in Parse(line, ExportTraceServiceRequest()).resource_spans[0].scope_spans[0].spans[0].attributes
    }
    assert math.isnan(values["nan"]) and values["inf"] == math.inf and values["ninf"] == -math.inf
    [odd] = read_spans(telemetry_file.path)
    assert (
        math.isnan(odd.attributes["nan"]) and odd.attributes["inf"] == math.inf and odd.attributes["ninf"] == -math.inf
    )


def test_threads_export_whole_lines(telemetry_file: FileTelemetry) -> None:
    """Spans ended from many threads at once give one intact line each."""
    tracer = telemetry_file.provider.get_tracer("threads")
    start = threading.Barrier(8)

    def work(n: int) -> None:
        start.wait()
        for i in range(50):
            tracer.start_span(f"t{n}-{i}", context=Context(), attributes={"payload": "x" * 2000}).end()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = telemetry_file.lines()
    assert len(lines) == 400 and all(json.loads(line)["resourceSpans"] for line in lines)
    names = sorted(r.name for r in read_spans(telemetry_file.path))
    assert names == sorted(f"t{n}-{i}" for n in range(8) for i in range(50))


def test_append_mode_keeps_earlier_lines(tmp_path: Path) -> None:
    """A second exporter on the same file appends after the first one's lines."""
    path = tmp_path / "nested" / "dir" / "traces.jsonl"  # the directory is made on first export
    for run in ("first", "second"):
        telemetry = FileTelemetry(path)
        telemetry.provider.get_tracer("t").start_span(run).end()
        telemetry.provider.shutdown()
    assert [r.name for r in read_spans(path)] == ["first", "second"]


def test_failures_return_failure_and_are_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An unwritable path never raises: export returns FAILURE and the first failure alone is a warning."""
    telemetry = Telemetry()
    exporter = OtlpJsonFileExporter(tmp_path)  # a directory cannot be opened for appending
    spans_made = telemetry.provider.get_tracer("t")
    spans_made.start_span("a").end()
    spans_made.start_span("b").end()
    with caplog.at_level(logging.DEBUG, logger="wstrace.cli.export"):
        results = [exporter.export(telemetry.spans[:1]), exporter.export(telemetry.spans[1:])]
    assert results == [SpanExportResult.FAILURE, SpanExportResult.FAILURE]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(tmp_path) in warnings[0].getMessage()
    assert exporter.force_flush() is True
    telemetry.provider.shutdown()


def test_export_after_shutdown_fails(tmp_path: Path) -> None:
    """After shutdown the exporter writes nothing more and says so."""
    telemetry = FileTelemetry(tmp_path / "t.jsonl")
    telemetry.provider.get_tracer("t").start_span("before").end()
    telemetry.file_exporter.shutdown()
    assert telemetry.file_exporter.export(telemetry.spans) is SpanExportResult.FAILURE
    assert [r.name for r in read_spans(telemetry.path)] == ["before"]
    telemetry.provider.shutdown()


def test_reader_skips_and_counts_blank_and_corrupt_lines(telemetry_file: FileTelemetry) -> None:
    """Blank lines, non-JSON, non-objects, torn lines and malformed spans are skipped and counted."""
    record(telemetry_file)
    good = telemetry_file.lines()
    bad_span = {"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "not hex", "spanId": "00"}]}]}]}
    metrics = {"resourceMetrics": [{"scopeMetrics": []}]}
    text = "\n".join(["", good[0], "not json", "[1, 2]", good[1][: len(good[1]) // 2], "   ", json.dumps(bad_span)])
    text += "\n" + "\n".join([json.dumps(metrics), *good[2:]]) + "\n"
    telemetry_file.path.write_text(text, encoding="utf-8")
    loaded = read_trace_file(telemetry_file.path)
    assert (loaded.corrupt_lines, loaded.bad_spans, loaded.blank_lines) == (3, 1, 2)
    assert len(loaded.spans) == len(good) - 1


def test_reader_reads_collector_and_protobuf_json(tmp_path: Path) -> None:
    """Collector-style JSON (uppercase hex, numeric times, maps, bytes) and protobuf's (base64 ids, enum names)."""
    collector = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "my.service"}}]},
                "scopeSpans": [
                    {
                        "scope": {"name": "my.library", "version": "1.0.0"},
                        "spans": [
                            {
                                "traceId": "5B8EFFF798038103D269B633813FC60C",
                                "spanId": "EEE19B7EC3C1B174",
                                "parentSpanId": "EEE19B7EC3C1B173",
                                "name": "I'm a server span",
                                "startTimeUnixNano": 1544712660000000000,
                                "endTimeUnixNano": 1544712661000000000,
                                "kind": 2,
                                "attributes": [
                                    {
                                        "key": "map",
                                        "value": {"kvlistValue": {"values": [{"key": "k", "value": {"intValue": 5}}]}},
                                    },
                                    {"key": "raw", "value": {"bytesValue": "AAEC"}},
                                    {"key": "nothing", "value": {}},
                                ],
                                "status": {},
                            }
                        ],
                    }
                ],
            }
        ]
    }
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id = bytes.fromhex("5b8efff798038103d269b633813fc60c")
    span.span_id = bytes.fromhex("eee19b7ec3c1b174")
    span.parent_span_id = bytes.fromhex("eee19b7ec3c1b173")
    span.name, span.kind = "I'm a server span", ProtoSpan.SPAN_KIND_SERVER
    span.start_time_unix_nano, span.end_time_unix_nano = 1544712660000000000, 1544712661000000000
    span.status.code = ProtoStatus.STATUS_CODE_ERROR
    protobuf_json = MessageToJson(request, indent=None)
    assert '"SPAN_KIND_SERVER"' in protobuf_json and "5b8eff" not in protobuf_json  # names, base64
    path = tmp_path / "collector.jsonl"
    path.write_text(json.dumps(collector) + "\n" + protobuf_json + "\n", encoding="utf-8")
    first, second = read_spans(path)
    for found in (first, second):
        assert isinstance(found, SpanRecord)
        assert (found.trace_id, found.span_id, found.parent_span_id) == (
            "5b8efff798038103d269b633813fc60c",
            "eee19b7ec3c1b174",
            "eee19b7ec3c1b173",
        )
        assert (found.name, found.kind, found.start_ns, found.duration_ns) == (
            "I'm a server span",
            "SERVER",
            1544712660000000000,
            10**9,
        )
    assert first.attributes == {"map": {"k": 5}, "raw": b"\x00\x01\x02", "nothing": None}
    assert (first.resource, first.scope, first.scope_version, first.status) == (
        {"service.name": "my.service"},
        "my.library",
        "1.0.0",
        "UNSET",
    )
    assert second.status == "ERROR"
