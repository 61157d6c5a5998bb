"""Payload capture: off by default (no payload byte in any exported span), capped and redactable when on."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan

from tests import fresh
from tests.conftest import Telemetry
from tests.instrumentation.peers import CLIENTS, INSTRUMENTORS, PAIRS, SERVERS
from tests.reliability import capture
from tests.reliability.capture import bodies, exchange
from wstrace.cli.export import encode_line
from wstrace.instrumentation.websockets import WebsocketsInstrumentor


@pytest.fixture
def instrument(telemetry: Telemetry) -> Iterator[Callable[..., None]]:
    instrumentors: list[Any] = []

    def do(*classes: type, **options: Any) -> None:
        for cls in classes or INSTRUMENTORS:
            instrumentor = cls()
            instrumentor.instrument(tracer_provider=telemetry.provider, **options)
            instrumentors.append(instrumentor)

    yield do
    for instrumentor in instrumentors:
        instrumentor.uninstrument()


def canaries() -> tuple[str, bytes, list[bytes]]:
    """A distinctive text and binary payload, and every form in which either could leak."""
    token = uuid.uuid4().hex
    text = f"CANARY-{token}-text-ü"
    blob = b"\x00\xffCANARY" + bytes.fromhex(token) + b"binary"
    forms = [
        token.encode(),
        token[8:24].encode(),
        bytes.fromhex(token),
        bytes.fromhex(token).hex().upper().encode(),
        base64.b64encode(blob)[4:24],
        base64.b64encode(blob[3:])[4:20],
        base64.b64encode(blob[1:])[4:20],
        b"CANARY",
    ]
    return text, blob, forms


def exported(spans: list[ReadableSpan]) -> bytes:
    """The spans as an exporter writes them (OTLP/JSON), plus every value's repr, to search."""
    parts = [encode_line(spans)]
    for span in spans:
        parts.append(repr((span.name, span.status.description)).encode())
        for attributes in [
            span.attributes,
            *(e.attributes for e in span.events),
            *(lk.attributes for lk in span.links),
        ]:
            parts.append(repr(dict(attributes or {})).encode())
    return b"\n".join(parts)


@pytest.mark.parametrize(("client", "server"), PAIRS)
@pytest.mark.parametrize("options", [{}, {"model": "connection", "chunk_spans": True}], ids=["message", "connection"])
def test_no_payload_byte_reaches_an_exported_span_by_default(
    telemetry: Telemetry, instrument: Callable[..., None], client: str, server: str, options: dict[str, Any]
) -> None:
    """Distinctive payloads through real connections of every adapter: none of their bytes in any span or metric."""
    reader = InMemoryMetricReader()
    instrument(meter_provider=MeterProvider(metric_readers=[reader]), **options)
    text, blob, forms = canaries()

    async def scenario() -> list[Any]:
        async with SERVERS[server]() as url:
            replies = await CLIENTS[client](url, [text, blob, text])
        await asyncio.sleep(0.1)  # both ends record their close
        return replies

    assert asyncio.run(scenario()) == [text, blob, text]
    spans = telemetry.spans
    assert len([s for s in spans if s.name.startswith(("send", "receive"))]) >= 12, "both sides traced every message"
    dump = exported(spans) + repr(reader.get_metrics_data()).encode()
    for form in forms:
        assert form not in dump, f"payload bytes {form!r} reached the exported telemetry"
    assert all("websocket.message.body" not in (s.attributes or {}) for s in spans)


def test_capture_records_text_and_base64_capped(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """On: text as text, binary as base64, cut at capture_payload_bytes (never mid-character), on every message span."""
    instrument(WebsocketsInstrumentor, capture_payload=True, capture_payload_bytes=8)
    payloads: list[Any] = ["short", "aünïcödé text", b"\x00\x01\x02", bytes(range(20))]
    received, replies = exchange(payloads)
    assert received == replies == payloads, "capture never changes a payload"
    expected = [
        ("short", False),
        ("aünïc", True),  # the 8th byte would split the ö: it is left out, not replaced
        (base64.b64encode(b"\x00\x01\x02").decode(), False),
        (base64.b64encode(bytes(range(8))).decode(), True),
    ]
    # Client sends, server receives, server reply streams (one per message) and client receives.
    # Client send, server receive, server reply (a stream of one), client receive: each message twice.
    for name in ("send /chat", "receive /chat"):
        assert bodies(telemetry, name) == [body for body in expected for _ in "ab"]


def redact_secret(payload: Any) -> Any:
    """A redaction hook, importable for WSTRACE_REDACT."""
    if isinstance(payload, str):
        return payload.replace("secret", "******")
    return None  # binary: record nothing


def test_redact_hook_from_the_environment(
    telemetry: Telemetry, instrument: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """WSTRACE_CAPTURE_PAYLOAD and WSTRACE_REDACT=module:function: the hook's result is recorded (None: nothing)."""
    monkeypatch.setenv("WSTRACE_CAPTURE_PAYLOAD", "true")
    monkeypatch.setenv("WSTRACE_REDACT", f"{__name__}:redact_secret")
    instrument(WebsocketsInstrumentor)
    payloads: list[Any] = ["my secret is out", b"secret bytes"]
    received, replies = exchange(payloads)
    assert received == replies == payloads
    assert bodies(telemetry, "receive /chat") == [("my ****** is out", False)] * 2 + [(None, None)] * 2
    assert "secret" not in exported(telemetry.spans).decode("utf-8", "replace")


@pytest.mark.parametrize(
    ("hook", "warning"),
    [
        (capture.redact_raises, "ZeroDivisionError"),
        (capture.redact_wrong_type, "returned a int"),
    ],
    ids=["raises", "wrong type"],
)
def test_failing_redact_hook_captures_nothing_and_logs_once(hook: Any, warning: str) -> None:
    """A hook that raises (or returns neither str nor bytes) records no body and is logged once, not per message.

    wstrace logs each kind of failure once per process: the scenario runs in a fresh one, to count its own.
    """
    run = fresh.call(capture.failing_redact, hook)
    outcome = run.result
    assert outcome["received"] == outcome["replies"] == outcome["payloads"]
    assert len(outcome["bodies"]) == 4 * len(outcome["payloads"]), "every message span was recorded"
    assert all(body == (None, None) for body in outcome["bodies"])
    records = run.wstrace
    assert len(records) == 1 and "redact" in records[0].message
    assert warning in records[0].text


def test_redact_hook_cannot_change_what_is_sent(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """The hook gets a copy of a bytearray payload: mutating it changes neither the frame nor the app's buffer."""

    def vandal(payload: Any) -> Any:
        if isinstance(payload, bytearray):
            payload[:] = b"XXXX"
        return payload

    instrument(WebsocketsInstrumentor, capture_payload=True, redact=vandal)
    buffer = bytearray(b"original")
    received, replies = exchange([buffer])
    assert buffer == bytearray(b"original")
    assert received == replies == [b"original"]
    assert bodies(telemetry, "send /chat")[0] == (base64.b64encode(b"original").decode(), False)
