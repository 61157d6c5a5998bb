"""The envelope on a connection (wstrace._wire): what is sent arrives, with the sender's context, in every form."""

from __future__ import annotations

import logging
from typing import Any, Optional

import pytest
from opentelemetry import baggage, context as otel_context, propagate, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tests import fresh
from tests.conftest import Telemetry
from wstrace import envelope
from wstrace._wire import SPLIT_AT, Parts, Prefixes, SplitWire, Wire, is_large, split_wire, wire_for
from wstrace.config import Config


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
CARRIER = {"traceparent": TRACEPARENT, "baggage": "user=alice,tier=gold%20plus"}
CAP = envelope.DEFAULT_MAX_HEADER_BYTES


def _frame(cap: int = CAP) -> Wire:
    return Wire("frame", cap, envelope.DEFAULT_JSON_FIELD)


def _json(cap: int = CAP, field: str = "_wt") -> Wire:
    return Wire("json", cap, field)


class CountingPropagator(TraceContextTextMapPropagator):
    """W3C trace context, counting how often a context is injected."""

    def __init__(self) -> None:
        self.injected = 0

    def inject(self, carrier: Any, context: Any = None, setter: Any = None) -> None:
        self.injected += 1
        if setter is None:
            super().inject(carrier, context)
        else:
            super().inject(carrier, context, setter)


def _traceparent_of(span: trace.Span) -> str:
    sc = span.get_span_context()
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"


# Framed envelopes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "is_text", "arrives"),
    [
        ("héllo wörld", True, "héllo wörld"),
        ("", True, ""),
        (b"\x00\x01binary\xff", False, b"\x00\x01binary\xff"),
        (bytearray(b"\x1ewt\x01looks-like-an-envelope"), False, b"\x1ewt\x01looks-like-an-envelope"),
        (memoryview(b"audio"), False, b"audio"),
        ("text sent as binary", False, b"text sent as binary"),  # the library sends it as UTF-8 bytes
        (b"text frame given as bytes", True, b"text frame given as bytes"),
    ],
)
def test_frame_round_trip_through_the_envelope_codec(payload: Any, is_text: bool, arrives: Any) -> None:
    wire = _frame()
    sent = wire.wrap(payload, is_text, dict(CARRIER))
    if is_text and isinstance(payload, str):
        assert isinstance(sent, str) and sent.startswith(envelope.TEXT_MAGIC)
    elif is_text:
        assert isinstance(sent, bytes) and sent.startswith(envelope.TEXT_MAGIC.encode())
    else:
        assert isinstance(sent, bytes) and sent.startswith(envelope.BINARY_MAGIC)
    # Any peer decoding with the public codec gets the payload and the carrier back.
    decoded = envelope.decode(sent)
    assert decoded.payload == arrives
    assert decoded.carrier == CARRIER
    # And so does the receiving end's Wire.
    assert wire.strip(sent) == (arrives, CARRIER)


def test_an_empty_carrier_still_makes_an_envelope() -> None:
    wire = _frame()
    # A bare frame starting with the magic would otherwise be stripped by the peer and reach its application changed.
    tricky = envelope.TEXT_MAGIC + "x\x1eapplication text"
    for carrier in (None, {}):
        sent = wire.wrap(tricky, True, carrier)
        assert wire.strip(sent) == (tricky, {})
    assert (
        wire.wrap_empty(b"\x1ewt\x01\x00\x00data", False) == envelope.BINARY_MAGIC + b"\x00\x00\x1ewt\x01\x00\x00data"
    )


def test_strip_leaves_frames_without_an_envelope_alone() -> None:
    wire = _frame()
    text, data = "plain text", b"plain bytes"
    assert wire.strip(text) == (text, None)
    assert wire.strip(data) == (data, None)
    # A malformed envelope is delivered as it came, never dropped.
    broken = envelope.TEXT_MAGIC + "no terminator"
    assert wire.strip(broken) == (broken, None)


def test_strip_reads_only_the_frame_types_layout() -> None:
    """A binary frame holding the text layout, or a text frame the binary one, is delivered unchanged."""
    wire = _frame()
    text_layout = envelope.encode(b"bin", CARRIER, text=True)
    binary_layout = envelope.encode(b"bin", CARRIER, text=False)
    assert wire.strip(text_layout, False) == (text_layout, None)
    assert wire.strip(binary_layout, True) == (binary_layout, None)
    assert wire.strip(text_layout, True) == (b"bin", CARRIER)
    assert wire.strip(binary_layout, False) == (b"bin", CARRIER)
    # The library did not say which type the bytes came in: either layout is read.
    assert wire.strip(text_layout) == (b"bin", CARRIER)
    assert wire.strip(binary_layout) == (b"bin", CARRIER)
    # The JSON form is the same in both frame types.
    member = _json().wrap(b'{"a":1}', False, dict(CARRIER))
    assert _json().strip(member, False) == _json().strip(member, True) == (b'{"a":1}', CARRIER)


def test_what_is_not_a_payload_goes_through_untouched() -> None:
    frame_object = object()
    for wire in (_frame(), _json()):
        assert wire.wrap(frame_object, True, dict(CARRIER)) is frame_object
        assert wire.wrap_empty(frame_object, False) is frame_object
        assert wire.strip(frame_object) == (frame_object, None)
        assert wire.strip(bytearray(b"{}")) == (bytearray(b"{}"), None)


def test_over_cap_carrier_sends_an_empty_envelope_and_the_payload_still_arrives() -> None:
    big = {"traceparent": TRACEPARENT, "baggage": "k=" + "v" * 500}
    wire = _frame(cap=128)
    for payload, is_text in (("chunk", True), (b"chunk", False)):
        sent = wire.wrap(payload, is_text, big)
        decoded = envelope.decode(sent, max_header=128)
        assert decoded.payload == payload
        assert decoded.carrier == {}  # enveloped, without context
        assert wire.strip(sent) == (payload, {})


def _over_the_cap() -> list[Any]:
    """Run in a fresh process: carriers over a 128-byte cap, in both formats, several times."""
    big = {"traceparent": TRACEPARENT, "baggage": "k=" + "v" * 500}
    sent = []
    for fmt in ("frame", "json"):
        wire = Wire(fmt, 128, "_wt")  # type: ignore[arg-type]
        sent += [wire.wrap('{"a":1}', True, big) for _ in range(3)]
    return sent


def _a_carrier_no_envelope_can_hold() -> Any:
    """Run in a fresh process: a propagator wrote a key outside the key grammar."""
    return _frame().wrap("x", True, {"Traceparent": TRACEPARENT})


def test_a_carrier_merely_over_the_cap_is_logged_once_without_a_traceback() -> None:
    run = fresh.call(_over_the_cap, level=logging.DEBUG)
    assert run.result == ['\x1ewt1\x1e{"a":1}'] * 3 + ['{"_wt":{},"a":1}'] * 3
    [record] = run.wstrace
    assert record.levelno == logging.WARNING
    assert "128-byte envelope cap" in record.message
    assert record.text == record.message, "a normal event, not a failure: no traceback"


def test_a_carrier_no_envelope_can_hold_is_logged_with_its_traceback() -> None:
    run = fresh.call(_a_carrier_no_envelope_can_hold, level=logging.DEBUG)
    assert run.result == "\x1ewt1\x1ex"  # still sent, in an empty envelope
    [record] = run.wstrace
    assert record.levelno == logging.WARNING
    assert "Traceback" in record.text and "EnvelopeEncodeError" in record.text


def test_a_payload_no_frame_can_carry_is_sent_as_it_is() -> None:
    # A str with a lone surrogate sent as binary: it has no UTF-8 form, and the library refuses it too.
    lone = "bad \udc80"
    with pytest.raises(UnicodeEncodeError):
        _frame().wrap(lone, False, None)
    assert _frame().wrap_empty(lone, False) is lone


# The JSON-field form ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "arrives"),
    [
        ('{"text": "hi", "n": 1}', '{"text": "hi", "n": 1}'),
        ("  {}", "  {}"),
        (b'{"audio": "base64"}', b'{"audio": "base64"}'),
        (bytearray(b'{"a": 1}'), b'{"a": 1}'),
        (memoryview(b'{"a": 1}'), b'{"a": 1}'),
    ],
)
def test_json_field_round_trip(payload: Any, arrives: Any) -> None:
    wire = _json(field="_wt")
    sent = wire.wrap(payload, True, dict(CARRIER))
    raw = sent if isinstance(sent, bytes) else sent.encode()
    assert raw.lstrip().startswith(b'{"_wt":{')  # the carrier is the object's first member
    decoded = envelope.decode_json_field(sent, field="_wt")
    assert decoded.payload == arrives
    assert decoded.carrier == CARRIER
    assert wire.strip(sent) == (arrives, CARRIER)
    # Another field name does not see it.
    assert envelope.decode_json_field(sent).carrier is None


def test_json_field_leaves_non_objects_alone() -> None:
    wire = _json()
    for payload in ("[1, 2]", "hello", b"\x00binary"):
        sent = wire.wrap(payload, isinstance(payload, str), dict(CARRIER))
        assert sent == payload
        assert wire.strip(sent) == (payload, None)


def test_json_field_over_the_cap_sends_an_empty_member() -> None:
    wire = _json(cap=64)
    big = {"traceparent": TRACEPARENT, "baggage": "k=" + "v" * 200}
    sent = wire.wrap('{"a": 1}', True, big)
    assert wire.strip(sent) == ('{"a": 1}', {})
    sent = wire.wrap(bytearray(b'{"a": 1}'), False, big)
    assert wire.strip(sent) == (b'{"a": 1}', {})


# Stream prefixes -------------------------------------------------------------------------------


@pytest.fixture
def counting() -> CountingPropagator:
    propagator = CountingPropagator()
    propagate.set_global_textmap(propagator)
    return propagator


def test_in_stream_encodes_a_streams_prefix_once_and_reuses_it(
    telemetry: Telemetry, counting: CountingPropagator
) -> None:
    wire = _frame()
    span = telemetry.provider.get_tracer("t").start_span("send /chat")
    prefixes = Prefixes()
    chunks = [wire.in_stream(prefixes, span, f"token {n}", True) for n in range(5)]
    assert counting.injected == 1  # the context is injected once per stream, not per chunk
    text_prefix = prefixes.text
    assert text_prefix is not None
    assert all(chunk.startswith(text_prefix) for chunk in chunks)
    for n, chunk in enumerate(chunks):
        assert wire.strip(chunk) == (f"token {n}", {"traceparent": _traceparent_of(span)})
    # Binary chunks of the same stream share the carrier, and get their own prefix, also made once.
    audio = [wire.in_stream(prefixes, span, payload, False) for payload in (b"a", bytearray(b"b"), memoryview(b"c"))]
    assert counting.injected == 1
    binary_prefix = prefixes.binary
    assert binary_prefix is not None
    assert [wire.strip(chunk) for chunk in audio] == [
        (b"a", {"traceparent": _traceparent_of(span)}),
        (b"b", {"traceparent": _traceparent_of(span)}),
        (b"c", {"traceparent": _traceparent_of(span)}),
    ]
    assert prefixes.text is text_prefix and prefixes.binary is binary_prefix
    span.end()


def test_in_stream_mixed_payload_types(telemetry: Telemetry) -> None:
    wire = _frame()
    span = telemetry.provider.get_tracer("t").start_span("send /chat")
    prefixes = Prefixes()
    carrier = {"traceparent": _traceparent_of(span)}
    text_as_bytes = wire.in_stream(prefixes, span, bytearray(b"utf-8 text"), True)
    assert isinstance(text_as_bytes, bytes)
    assert envelope.decode(text_as_bytes) == envelope.Decoded(b"utf-8 text", carrier)
    str_as_binary = wire.in_stream(prefixes, span, "caf\u00e9", False)
    assert envelope.decode(str_as_binary) == envelope.Decoded("café".encode(), carrier)
    frame_object = object()
    assert wire.in_stream(prefixes, span, frame_object, True) is frame_object
    span.end()


def test_a_new_stream_gets_its_own_prefix(telemetry: Telemetry) -> None:
    wire = _frame()
    tracer = telemetry.provider.get_tracer("t")
    first, second = tracer.start_span("one"), tracer.start_span("two")
    a = wire.in_stream(Prefixes(), first, "x", True)
    b = wire.in_stream(Prefixes(), second, "x", True)
    assert wire.strip(a)[1] == {"traceparent": _traceparent_of(first)}
    assert wire.strip(b)[1] == {"traceparent": _traceparent_of(second)}
    first.end()
    second.end()


def test_in_stream_carries_the_current_baggage(telemetry: Telemetry) -> None:
    wire = _frame()
    span = telemetry.provider.get_tracer("t").start_span("send")
    token = otel_context.attach(baggage.set_baggage("user", "alice"))
    try:
        chunk = wire.in_stream(Prefixes(), span, "x", True)
    finally:
        otel_context.detach(token)
    assert wire.strip(chunk)[1] == {"traceparent": _traceparent_of(span), "baggage": "user=alice"}
    span.end()


def test_in_stream_over_the_cap_sends_empty_envelopes(telemetry: Telemetry) -> None:
    wire = _frame(cap=16)  # smaller than a traceparent
    span = telemetry.provider.get_tracer("t").start_span("send")
    prefixes = Prefixes()
    text = wire.in_stream(prefixes, span, "token", True)
    data = wire.in_stream(prefixes, span, b"pcm", False)
    assert envelope.decode(text, max_header=16) == envelope.Decoded("token", {})
    assert envelope.decode(data, max_header=16) == envelope.Decoded(b"pcm", {})
    span.end()


def test_in_stream_json_injects_per_chunk_and_round_trips(telemetry: Telemetry, counting: CountingPropagator) -> None:
    wire = _json()
    span = telemetry.provider.get_tracer("t").start_span("send")
    prefixes = Prefixes()
    chunks = [wire.in_stream(prefixes, span, f'{{"token": "{n}"}}', True) for n in range(3)]
    assert counting.injected == 3  # no reusable prefix in this form
    assert prefixes.text is None and prefixes.binary is None
    assert [wire.strip(chunk) for chunk in chunks] == [
        (f'{{"token": "{n}"}}', {"traceparent": _traceparent_of(span)}) for n in range(3)
    ]
    span.end()


# Split: a large payload behind its prefix, not copied ---------------------------------------------


def _joined(parts: Parts) -> Any:
    prefix, payload = parts
    return prefix + payload if isinstance(prefix, str) else prefix + bytes(payload)


BIG_TEXT = "é" + "x" * SPLIT_AT
BIG_BYTES = b"\x1ewt\x01" + bytes(SPLIT_AT)


@pytest.mark.parametrize(
    ("payload", "is_text", "arrives"),
    [
        (BIG_TEXT, True, BIG_TEXT),
        (BIG_BYTES, False, BIG_BYTES),
        (bytearray(BIG_BYTES), False, BIG_BYTES),
        (memoryview(BIG_BYTES), False, BIG_BYTES),
        (BIG_TEXT.encode(), True, BIG_TEXT.encode()),  # UTF-8 bytes sent as text
        (BIG_TEXT, False, BIG_TEXT.encode()),  # a str sent as binary: encoded, as the library would
    ],
    ids=["str", "bytes", "bytearray", "memoryview", "text-bytes", "str-binary"],
)
def test_a_large_payload_comes_back_after_its_prefix_uncopied(payload: Any, is_text: bool, arrives: Any) -> None:
    """A SplitWire returns a payload of SPLIT_AT or more as Parts: the envelope prefix, then the payload itself
    (the same object unless a str goes as binary); joined, they are exactly what Wire.wrap sends."""
    wire = split_wire(_frame())
    parts = wire.wrap(payload, is_text, CARRIER)
    assert type(parts) is Parts
    prefix, rest = parts
    if not (isinstance(payload, str) and not is_text):
        assert rest is payload
    assert len(prefix) < 200 and isinstance(prefix, str) == (isinstance(payload, str) and is_text)
    assert _joined(parts) == _frame().wrap(payload, is_text, CARRIER)
    assert _frame().strip(_joined(parts)) == (arrives, CARRIER)


def test_below_the_threshold_or_in_json_a_split_wire_wraps_as_a_wire_does() -> None:
    small = "x" * (SPLIT_AT - 1)
    assert not is_large(small) and is_large(small + "x") and is_large(memoryview(bytes(SPLIT_AT)))
    assert not is_large(object())
    assert split_wire(_frame()).wrap(small, True, CARRIER) == _frame().wrap(small, True, CARRIER)
    big_json = '{"a":"' + "x" * SPLIT_AT + '"}'
    json_split = split_wire(_json())
    assert json_split.wrap(big_json, True, CARRIER) == _json().wrap(big_json, True, CARRIER)
    assert split_wire(_frame()).wrap(frame_object := object(), True, CARRIER) is frame_object


def test_a_split_wire_over_the_cap_sends_an_empty_envelope_before_the_payload() -> None:
    wire = split_wire(_frame(cap=10))
    prefix, rest = wire.wrap(BIG_BYTES, False, CARRIER)
    assert prefix == envelope.binary_prefix(None) and rest is BIG_BYTES
    prefix, rest = wire.wrap_empty(BIG_TEXT, True)
    assert prefix == envelope.text_prefix(None) and rest is BIG_TEXT


def test_a_split_wire_keeps_a_streams_prefix(telemetry: Telemetry, counting: CountingPropagator) -> None:
    """A stream's large chunk goes after the stream's prefix, encoded once, like its small ones."""
    wire = split_wire(_frame())
    span = telemetry.provider.get_tracer("t").start_span("send /chat")
    prefixes = Prefixes()
    small = wire.in_stream(prefixes, span, "token", True)
    parts = wire.in_stream(prefixes, span, BIG_TEXT, True)
    audio = wire.in_stream(prefixes, span, BIG_BYTES, False)
    assert counting.injected == 1
    assert type(parts) is Parts and parts[0] == prefixes.text and parts[1] is BIG_TEXT
    assert type(audio) is Parts and audio[0] == prefixes.binary and audio[1] is BIG_BYTES
    assert wire.strip(small) == ("token", {"traceparent": _traceparent_of(span)})
    assert wire.strip(_joined(parts)) == (BIG_TEXT, {"traceparent": _traceparent_of(span)})
    assert wire.strip(_joined(audio)) == (BIG_BYTES, {"traceparent": _traceparent_of(span)})
    json_wire = split_wire(_json())
    big_json = '{"a":"' + "x" * SPLIT_AT + '"}'
    chunk = json_wire.in_stream(Prefixes(), span, big_json, True)
    assert json_wire.strip(chunk) == (big_json, {"traceparent": _traceparent_of(span)})
    span.end()


def test_split_wire_shares_one_per_settings() -> None:
    wire = _frame()
    split = split_wire(wire)
    assert isinstance(split, SplitWire) and split is split_wire(_frame())
    assert (split.format, split.cap, split.field) == (wire.format, wire.cap, wire.field)
    assert split_wire(_frame(cap=100)) is not split
    for cap in range(100, 200):
        assert split_wire(_frame(cap=cap)).cap == cap


# Sharing ---------------------------------------------------------------------------------------


def test_wire_for_shares_one_wire_per_settings() -> None:
    config = Config.load(max_envelope_bytes=4321, json_field="_shared")
    frame, json_wire = wire_for(config, "frame"), wire_for(config, "json")
    assert wire_for(Config.load(max_envelope_bytes=4321, json_field="_shared"), "frame") is frame
    assert wire_for(config, "json") is json_wire
    assert frame is not json_wire
    assert (frame.format, frame.cap, frame.field) == ("frame", 4321, "_shared")
    assert (json_wire.format, json_wire.cap, json_wire.field) == ("json", 4321, "_shared")
    assert wire_for(Config.load(max_envelope_bytes=4322, json_field="_shared"), "frame") is not frame


def test_wire_for_stays_correct_with_many_settings() -> None:
    wires: dict[int, Optional[Wire]] = {}
    for cap in range(1000, 1100):
        wires[cap] = wire_for(Config.load(max_envelope_bytes=cap), "frame")
    for cap, wire in wires.items():
        assert wire is not None and wire.cap == cap and wire.format == "frame"
    # The most recent settings are still shared.
    assert wire_for(Config.load(max_envelope_bytes=1099), "frame") is wires[1099]
