"""OTLP/JSON span files: an SDK exporter that writes them and a reader that parses them.

The format is the OpenTelemetry Collector ``file`` exporter's: JSON lines, one ``ExportTraceServiceRequest``
(``{"resourceSpans": [...]}``) per line, in the protobuf JSON mapping with OTLP's exception that trace and
span ids are hex strings, not base64: the layout the Collector's ``otlpjsonfile`` receiver reads.
:func:`read_spans` reads these files, the Collector's, and plain protobuf JSON (base64 ids, enum names).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import math
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Optional, Union

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Link, SpanContext


__all__ = [
    "EventRecord",
    "LinkRecord",
    "OtlpJsonFileExporter",
    "SpanRecord",
    "TraceFile",
    "encode_spans",
    "read_spans",
    "read_trace_file",
]

_logger = logging.getLogger(__name__)

# OTLP numbers span kinds from 1 (0 is UNSPECIFIED); the Python API numbers them from 0.
KIND_NAMES = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
STATUS_NAMES = ("UNSET", "OK", "ERROR")
_HAS_IS_REMOTE = 0x100  # SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_IS_REMOTE = 0x200  # SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
_INT64 = range(-(2**63), 2**63)

PathLike = Union[str, os.PathLike[str]]


# ---------------------------------------------------------------------------------------------------------
# Encoding


def encode_value(value: object) -> dict[str, Any]:
    """One attribute value as an OTLP ``AnyValue`` JSON object."""
    if value is None:
        return {}
    if isinstance(value, bool):  # before int: bool is an int
        return {"boolValue": value}
    if isinstance(value, int):
        # An IntEnum (a close code, an HTTPStatus) as its plain number: ``in range`` would scan
        # the whole int64 range for an int subclass, and str() would give its name on 3.10.
        number = int(value)
        # int64 is a JSON string in the protobuf mapping; a Python int beyond int64 would not parse.
        return {"intValue": str(number)} if number in _INT64 else {"stringValue": str(number)}
    if isinstance(value, float):
        if math.isfinite(value):
            return {"doubleValue": value}
        return {"doubleValue": "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"bytesValue": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, Mapping):
        return {"kvlistValue": {"values": encode_attributes(value)} if value else {}}
    if isinstance(value, Iterable):
        values = [encode_value(item) for item in value]
        return {"arrayValue": {"values": values} if values else {}}
    return {"stringValue": str(value)}


def encode_attributes(attributes: Optional[Mapping[str, object]]) -> list[dict[str, Any]]:
    """Attributes as a list of OTLP ``KeyValue`` JSON objects."""
    return [{"key": str(key), "value": encode_value(value)} for key, value in (attributes or {}).items()]


def _flags(context: SpanContext, remote: Optional[bool]) -> int:
    # Low byte: W3C trace flags. Bit 8 says whether bit 9 (the parent or link is remote) is known.
    flags = int(context.trace_flags) & 0xFF
    if remote is not None:
        flags |= _HAS_IS_REMOTE | (_IS_REMOTE if remote else 0)
    return flags


def _link_json(link: Link) -> dict[str, Any]:
    out: dict[str, Any] = {"traceId": f"{link.context.trace_id:032x}", "spanId": f"{link.context.span_id:016x}"}
    if link.context.trace_state:
        out["traceState"] = link.context.trace_state.to_header()
    if link.attributes:
        out["attributes"] = encode_attributes(link.attributes)
    dropped = getattr(link, "dropped_attributes", 0)
    if dropped:
        out["droppedAttributesCount"] = dropped
    out["flags"] = _flags(link.context, link.context.is_remote)
    return out


def _span_json(span: ReadableSpan) -> dict[str, Any]:
    context = span.get_span_context()
    assert context is not None  # an SDK span always has one
    parent = span.parent
    out: dict[str, Any] = {"traceId": f"{context.trace_id:032x}", "spanId": f"{context.span_id:016x}"}
    if context.trace_state:
        out["traceState"] = context.trace_state.to_header()
    if parent is not None:
        out["parentSpanId"] = f"{parent.span_id:016x}"
    out["flags"] = _flags(context, parent.is_remote if parent is not None else False)
    out["name"] = span.name
    out["kind"] = span.kind.value + 1
    out["startTimeUnixNano"] = str(span.start_time or 0)
    out["endTimeUnixNano"] = str(span.end_time or span.start_time or 0)
    if span.attributes:
        out["attributes"] = encode_attributes(span.attributes)
    if span.dropped_attributes:
        out["droppedAttributesCount"] = span.dropped_attributes
    if span.events:
        events = []
        for event in span.events:
            encoded: dict[str, Any] = {"timeUnixNano": str(event.timestamp), "name": event.name}
            if event.attributes:
                encoded["attributes"] = encode_attributes(event.attributes)
            dropped = getattr(event, "dropped_attributes", 0)
            if dropped:
                encoded["droppedAttributesCount"] = dropped
            events.append(encoded)
        out["events"] = events
    if span.dropped_events:
        out["droppedEventsCount"] = span.dropped_events
    if span.links:
        out["links"] = [_link_json(link) for link in span.links]
    if span.dropped_links:
        out["droppedLinksCount"] = span.dropped_links
    status: dict[str, Any] = {}
    if span.status.description:
        status["message"] = span.status.description
    if span.status.status_code.value:
        status["code"] = span.status.status_code.value  # UNSET 0, OK 1, ERROR 2 in both
    out["status"] = status
    return out


def _key(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def encode_spans(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """Spans as one OTLP/JSON ``ExportTraceServiceRequest``, grouped by resource, then scope."""
    resources: dict[str, dict[str, Any]] = {}
    scopes: dict[tuple[str, str], dict[str, Any]] = {}
    for span in spans:
        resource: dict[str, Any] = {"attributes": encode_attributes(span.resource.attributes)}
        resource_url = span.resource.schema_url or ""
        resource_key = _key([resource, resource_url])
        if resource_key not in resources:
            resources[resource_key] = {"resource": resource, "scopeSpans": []}
            if resource_url:
                resources[resource_key]["schemaUrl"] = resource_url
        info = span.instrumentation_scope
        scope: dict[str, Any] = {}
        scope_url = ""
        if info is not None:
            scope["name"] = info.name
            if info.version:
                scope["version"] = info.version
            if info.attributes:
                scope["attributes"] = encode_attributes(info.attributes)
            scope_url = info.schema_url or ""
        scope_key = (resource_key, _key([scope, scope_url]))
        if scope_key not in scopes:
            scopes[scope_key] = {"scope": scope, "spans": []}
            if scope_url:
                scopes[scope_key]["schemaUrl"] = scope_url
            resources[resource_key]["scopeSpans"].append(scopes[scope_key])
        scopes[scope_key]["spans"].append(_span_json(span))
    return {"resourceSpans": list(resources.values())}


def encode_line(spans: Sequence[ReadableSpan]) -> bytes:
    """One JSON line (with its newline) for a batch of spans."""
    text = json.dumps(encode_spans(spans), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    # A lone surrogate in a span name cannot be UTF-8: replace it rather than lose the batch.
    return text.encode("utf-8", "replace") + b"\n"


TRACES_FILE_ENV = "WSTRACE_TRACES_FILE"
DEFAULT_TRACES_FILE = "wstrace-traces.jsonl"


class OtlpJsonFileExporter(SpanExporter):
    """Appends each export batch to ``path`` as one OTLP/JSON line, the Collector ``file`` exporter's format.

    Zero-code: ``OTEL_TRACES_EXPORTER=wstrace_file`` selects it (entry point), writing to
    ``WSTRACE_TRACES_FILE`` (default ``wstrace-traces.jsonl``), a file ``wstrace view`` renders.

    Thread-safe; the file is opened (and its directory made) on the first export and flushed after every
    batch. Failures never reach the caller: the first is logged, and ``export`` returns ``FAILURE``.
    Pair it with a ``BatchSpanProcessor`` in an application, a ``SimpleSpanProcessor`` in tests.
    """

    def __init__(self, path: Optional[PathLike] = None) -> None:
        # With no path (as opentelemetry-instrument builds it, for OTEL_TRACES_EXPORTER=wstrace_file), the
        # file is WSTRACE_TRACES_FILE, else wstrace-traces.jsonl in the working directory.
        self.path = Path(path if path is not None else os.environ.get(TRACES_FILE_ENV) or DEFAULT_TRACES_FILE)
        self._lock = threading.Lock()
        self._file: Optional[IO[bytes]] = None
        self._closed = False
        self._failures = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Write one line holding ``spans``."""
        if not spans:
            return SpanExportResult.SUCCESS
        try:
            line = encode_line(spans)
            with self._lock:
                if self._closed:
                    return SpanExportResult.FAILURE
                try:
                    if self._file is None:
                        self.path.parent.mkdir(parents=True, exist_ok=True)
                        self._file = open(self.path, "ab")  # held open across batches
                    self._file.write(line)
                    self._file.flush()
                except Exception:
                    self._drop_file()  # reopen on the next batch: the file may have been removed or replaced
                    raise
        except Exception:
            self._failed()
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Flush the file; every batch is already flushed, so this only matters to a buffered OS."""
        with self._lock:
            if self._file is not None:
                try:
                    self._file.flush()
                except Exception:
                    self._failed()
                    return False
        return True

    def shutdown(self) -> None:
        """Close the file; later exports fail."""
        with self._lock:
            self._closed = True
            self._drop_file()

    def _drop_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(Exception):  # a broken file: nothing more to do
                self._file.close()
            self._file = None

    def _failed(self) -> None:
        self._failures += 1
        if self._failures == 1:
            _logger.warning("wstrace: cannot write spans to %s; dropping them", self.path, exc_info=True)
        else:
            _logger.debug("wstrace: cannot write spans to %s (failure %d)", self.path, self._failures)


# ---------------------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class EventRecord:
    """A span event read from a file."""

    name: str
    time_ns: int
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LinkRecord:
    """A span link read from a file."""

    trace_id: str
    span_id: str
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SpanRecord:
    """A span read from a file; ids are lowercase hex, times nanoseconds since the epoch."""

    trace_id: str
    span_id: str
    parent_span_id: Optional[str]
    name: str
    kind: str  # "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER" or "UNSPECIFIED"
    start_ns: int
    end_ns: int
    attributes: Mapping[str, Any] = field(default_factory=dict)
    events: tuple[EventRecord, ...] = ()
    links: tuple[LinkRecord, ...] = ()
    status: str = "UNSET"  # "UNSET", "OK" or "ERROR"
    status_message: str = ""
    resource: Mapping[str, Any] = field(default_factory=dict)
    scope: str = ""
    scope_version: str = ""

    @property
    def duration_ns(self) -> int:
        """End minus start, never negative."""
        return max(0, self.end_ns - self.start_ns)


@dataclass(frozen=True)
class TraceFile:
    """What a file held: its spans, and how many lines or spans could not be read."""

    spans: tuple[SpanRecord, ...]
    corrupt_lines: int = 0  # not JSON, or not an OTLP request
    bad_spans: int = 0  # inside a readable line, but malformed
    blank_lines: int = 0


def _decode_id(value: object, size: int) -> str:
    """A trace (16 bytes) or span (8 bytes) id as lowercase hex; accepts OTLP hex and protobuf base64."""
    if not isinstance(value, str):
        raise ValueError(f"id is not a string: {value!r}")
    text = value.strip()
    if not text:
        return ""
    if len(text) == 2 * size:
        return bytes.fromhex(text).hex()
    raw = base64.b64decode(text, validate=True)  # the plain protobuf JSON mapping (json_format) uses base64
    if len(raw) != size:
        raise ValueError(f"id of {len(raw)} bytes: {value!r}")
    return raw.hex()


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"not an integer: {value!r}")
    return int(value)


def decode_value(value: object) -> Any:
    """An OTLP ``AnyValue`` JSON object as a Python value (arrays become tuples, as in the SDK)."""
    if not isinstance(value, Mapping) or not value:
        return None
    if "stringValue" in value:
        return str(value["stringValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "intValue" in value:
        return _int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])  # also "NaN", "Infinity", "-Infinity"
    if "arrayValue" in value:
        return tuple(decode_value(item) for item in (value["arrayValue"] or {}).get("values", ()))
    if "kvlistValue" in value:
        return decode_attributes((value["kvlistValue"] or {}).get("values", ()))
    if "bytesValue" in value:
        return base64.b64decode(value["bytesValue"])
    return None


def decode_attributes(items: object) -> dict[str, Any]:
    """A list of OTLP ``KeyValue`` JSON objects as a dict."""
    if not isinstance(items, list):
        return {}
    return {str(item["key"]): decode_value(item.get("value")) for item in items if isinstance(item, Mapping)}


def _enum(value: object, names: Sequence[str], prefix: str) -> str:
    if isinstance(value, int) and 0 <= value < len(names):
        return names[value]
    if isinstance(value, str) and value.removeprefix(prefix) in names:
        return value.removeprefix(prefix)  # enums may also be written by name
    return names[0]


def _span_record(raw: Mapping[str, Any], resource: Mapping[str, Any], scope: Mapping[str, Any]) -> SpanRecord:
    start = _int(raw.get("startTimeUnixNano", 0))
    status = raw.get("status") or {}
    return SpanRecord(
        trace_id=_decode_id(raw.get("traceId", ""), 16),
        span_id=_decode_id(raw.get("spanId", ""), 8),
        parent_span_id=_decode_id(raw.get("parentSpanId", ""), 8) or None,
        name=str(raw.get("name", "")),
        kind=_enum(raw.get("kind", 0), KIND_NAMES, "SPAN_KIND_"),
        start_ns=start,
        end_ns=_int(raw.get("endTimeUnixNano", start)),
        attributes=decode_attributes(raw.get("attributes")),
        events=tuple(
            EventRecord(str(e.get("name", "")), _int(e.get("timeUnixNano", 0)), decode_attributes(e.get("attributes")))
            for e in raw.get("events") or ()
        ),
        links=tuple(
            LinkRecord(
                _decode_id(link.get("traceId", ""), 16),
                _decode_id(link.get("spanId", ""), 8),
                decode_attributes(link.get("attributes")),
            )
            for link in raw.get("links") or ()
        ),
        status=_enum(status.get("code", 0), STATUS_NAMES, "STATUS_CODE_"),
        status_message=str(status.get("message", "")),
        resource=resource,
        scope=str(scope.get("name", "")),
        scope_version=str(scope.get("version", "")),
    )


def _line_spans(request: Mapping[str, Any]) -> tuple[list[SpanRecord], int]:
    spans: list[SpanRecord] = []
    bad = 0
    for resource_spans in request.get("resourceSpans") or ():
        resource = decode_attributes((resource_spans.get("resource") or {}).get("attributes"))
        # "instrumentationLibrarySpans" is what Collectors before OTLP 0.15 wrote.
        for scope_spans in resource_spans.get("scopeSpans") or resource_spans.get("instrumentationLibrarySpans") or ():
            scope = scope_spans.get("scope") or scope_spans.get("instrumentationLibrary") or {}
            for raw in scope_spans.get("spans") or ():
                try:
                    spans.append(_span_record(raw, resource, scope))
                except (AttributeError, KeyError, TypeError, ValueError, binascii.Error):
                    bad += 1
    return spans, bad


def read_trace_file(path: PathLike) -> TraceFile:
    """Every span in an OTLP/JSON lines file; unreadable lines and spans are skipped and counted.

    Raises ``OSError`` if the file cannot be read. Lines holding metrics or logs (a Collector writing all
    signals to one file) are ignored.
    """
    spans: list[SpanRecord] = []
    corrupt = bad = blank = 0
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if not line.strip():
                blank += 1
                continue
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("not a JSON object")
                found, skipped = _line_spans(request)
            except (AttributeError, TypeError, ValueError):
                corrupt += 1
                continue
            spans.extend(found)
            bad += skipped
    return TraceFile(tuple(spans), corrupt_lines=corrupt, bad_spans=bad, blank_lines=blank)


def read_spans(path: PathLike) -> list[SpanRecord]:
    """Every readable span in an OTLP/JSON lines file, in file order."""
    return list(read_trace_file(path).spans)
