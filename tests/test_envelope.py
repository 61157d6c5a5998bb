"""Tests of the message-envelope codec (``wstrace.envelope``)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from wstrace.envelope import (
    BINARY_MAGIC,
    DEFAULT_JSON_FIELD,
    DEFAULT_MAX_HEADER_BYTES,
    TEXT_MAGIC,
    Decoded,
    decode,
    decode_json_field,
    encode,
    encode_binary,
    encode_json_field,
    encode_text,
    parse,
)
from wstrace.exceptions import EnvelopeDecodeError, EnvelopeEncodeError, EnvelopeError, WstraceError


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACESTATE = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
BAGGAGE = "userId=alice,city=Z%C3%BCrich;note=m%C3%BCnchen,raw=Zoë ☃ 🚀,isProduction=false"
REALISTIC = {"traceparent": TRACEPARENT, "tracestate": TRACESTATE, "baggage": BAGGAGE}
B3 = {"b3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1", "x-b3-sampled": "1"}
CARRIERS = [None, {}, {"traceparent": TRACEPARENT}, REALISTIC, B3]
CARRIER_IDS = ["none", "empty", "traceparent", "realistic", "b3"]

TEXT_PAYLOADS = ["", "hello", '{"op":"ping"}', "ünïcödé ☃ 🚀", "\x1e", TEXT_MAGIC, TEXT_MAGIC + "a=b\x1ex", "\x00\n\r"]
BYTES_PAYLOADS = [b"", b"\x00\x01\xff", BINARY_MAGIC, BINARY_MAGIC + b"\x00\x00x", TEXT_MAGIC.encode(), b"\x1e"]

KEY_RE = re.compile(r"[a-z0-9][a-z0-9_.\-]*\Z")
JSON_WS = " \t\n\r"

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

keys = st.from_regex(r"[a-z0-9][a-z0-9_.\-]{0,15}", fullmatch=True)
carriers = st.none() | st.dictionaries(keys, st.text(max_size=40), max_size=4)

TEXT_PREFIXES = [
    "",
    "\x1e",
    "\x1ew",
    "\x1ewt",
    TEXT_MAGIC,
    TEXT_MAGIC + "\x1e",
    "\x1ewt2",
    "\x1eWT1",
    "wt1",
    "\x1ewt\x01",
]
BYTES_PREFIXES = [
    b"",
    b"\x1e",
    b"\x1ewt",
    BINARY_MAGIC,
    BINARY_MAGIC + b"\x00",
    BINARY_MAGIC + b"\x00\x00",
    BINARY_MAGIC + b"\xff\xff",
    TEXT_MAGIC.encode(),
    b"\x1ewt\x02",
    b"\x1ewt2",
]
texts = st.builds(lambda prefix, rest: prefix + rest, st.sampled_from(TEXT_PREFIXES), st.text())
blobs = st.builds(lambda prefix, rest: prefix + rest, st.sampled_from(BYTES_PREFIXES), st.binary())

JSON_BODIES = [
    "",
    "}",
    " }",
    "\n}",
    "\t \r\n}",
    '"a":1}',
    ',"a":1}',
    ",}",
    '"_wstrace":{}}',
    '"_wstrace":{"a":"b"},',
    "{}}",
]
json_bodies = st.sampled_from(JSON_BODIES) | st.text() | st.builds(str.__add__, st.sampled_from(JSON_BODIES), st.text())
json_objects = st.builds(lambda lead, body: lead + "{" + body, st.text(JSON_WS, max_size=3), json_bodies)
json_blobs = st.builds(lambda lead, body: lead.encode() + b"{" + body, st.text(JSON_WS, max_size=3), st.binary())


def expected(carrier: dict[str, str] | None) -> dict[str, str]:
    """What a decoder yields for the carrier an encoder was given: ``None`` is an empty envelope."""
    return dict(carrier or {})


def is_foreign_text(wire: str) -> bool:
    """Whether a text frame lacks the version 1 text prefix."""
    return not wire.startswith(TEXT_MAGIC)


def is_foreign_bytes(wire: bytes) -> bool:
    """Whether a byte frame lacks both version 1 prefixes."""
    return not wire.startswith((BINARY_MAGIC, TEXT_MAGIC.encode()))


def is_canonical_json(wire: str | bytes, field: str = DEFAULT_JSON_FIELD) -> bool:
    """Whether a frame starts like the canonical JSON-field member (blanks, brace, key, colon)."""
    key = json.dumps(field) + ":"
    if isinstance(wire, str):
        return wire.lstrip(JSON_WS).startswith("{" + key)
    return wire.lstrip(JSON_WS.encode()).startswith(b"{" + key.encode())


# Round trips ---------------------------------------------------------------


@pytest.mark.parametrize("carrier", CARRIERS, ids=CARRIER_IDS)
@pytest.mark.parametrize("payload", TEXT_PAYLOADS)
def test_text_round_trip_str(payload: str, carrier: dict[str, str] | None) -> None:
    """A str payload becomes a str text envelope and decodes back to itself and its carrier."""
    wire = encode(payload, carrier)
    assert isinstance(wire, str)
    assert wire.startswith(TEXT_MAGIC)
    assert wire.endswith(payload)
    assert wire.isascii() or not payload.isascii()
    decoded = decode(wire)
    assert type(decoded.payload) is str
    assert decoded.payload == payload
    assert decoded.carrier == expected(carrier)
    assert decoded.enveloped
    assert parse(wire) == decoded


@pytest.mark.parametrize("carrier", CARRIERS, ids=CARRIER_IDS)
@pytest.mark.parametrize("payload", TEXT_PAYLOADS)
def test_text_round_trip_utf8_bytes(payload: str, carrier: dict[str, str] | None) -> None:
    """UTF-8 bytes sent as text keep their type, and the str and bytes views of the frame agree."""
    raw = payload.encode("utf-8")
    wire = encode(raw, carrier, text=True)
    assert isinstance(wire, bytes)
    assert wire.startswith(TEXT_MAGIC.encode())
    assert wire == encode_text(raw, carrier) == encode(payload, carrier).encode("utf-8")
    decoded = decode(wire)
    assert type(decoded.payload) is bytes
    assert decoded.payload == raw
    assert decoded.carrier == expected(carrier)
    as_str = decode(wire.decode("utf-8"))
    assert as_str.payload == payload
    assert as_str.carrier == expected(carrier)


@pytest.mark.parametrize("carrier", CARRIERS, ids=CARRIER_IDS)
@pytest.mark.parametrize("payload", BYTES_PAYLOADS)
def test_binary_round_trip(payload: bytes, carrier: dict[str, str] | None) -> None:
    """A bytes payload becomes a binary envelope whose length field matches its header."""
    wire = encode(payload, carrier)
    assert isinstance(wire, bytes)
    assert wire == encode_binary(payload, carrier)
    assert wire.startswith(BINARY_MAGIC)
    size = int.from_bytes(wire[4:6], "big")
    assert wire[6 + size :] == payload
    assert (size == 0) == (not carrier)
    decoded = decode(wire)
    assert type(decoded.payload) is bytes
    assert decoded.payload == payload
    assert decoded.carrier == expected(carrier)


def test_str_sent_as_binary_is_utf8() -> None:
    """``text=False`` sends a str as its UTF-8 bytes in the binary framing."""
    wire = encode("hé", {"traceparent": TRACEPARENT}, text=False)
    assert isinstance(wire, bytes)
    assert wire.startswith(BINARY_MAGIC)
    assert decode(wire) == Decoded(b"h\xc3\xa9", {"traceparent": TRACEPARENT})


def test_exact_text_layout() -> None:
    """The text framing is U+001E, ``wt1``, the header, U+001E, then the payload."""
    wire = encode("hi", {"traceparent": TRACEPARENT})
    assert wire == "\x1ewt1traceparent=" + TRACEPARENT + "\x1ehi"
    assert encode("hi", None) == "\x1ewt1\x1ehi"
    assert encode(b"hi", {}, text=True) == b"\x1ewt1\x1ehi"


def test_exact_binary_layout() -> None:
    """The binary framing is 1E 77 74 01, a big-endian uint16 header length, the header, the payload."""
    header = b"traceparent=" + TRACEPARENT.encode()
    wire = encode(b"\x00\xff", {"traceparent": TRACEPARENT})
    assert wire == b"\x1e\x77\x74\x01" + len(header).to_bytes(2, "big") + header + b"\x00\xff"
    assert wire[4:6] == b"\x00\x43"
    assert encode(b"", None) == b"\x1ewt\x01\x00\x00"


def test_header_percent_encodes_all_but_unreserved() -> None:
    """Values are UTF-8 percent-encoded with only ``A-Z a-z 0-9 - . _ ~`` left as they are."""
    carrier = {"k": "Az09-._~ /=&,;%+\"'ü", "b3": "☃"}
    wire = encode("", carrier)
    assert wire == "\x1ewt1k=Az09-._~%20%2F%3D%26%2C%3B%25%2B%22%27%C3%BC&b3=%E2%98%83\x1e"
    assert decode(wire).carrier == carrier


def test_realistic_carrier_keeps_order_and_values() -> None:
    """A full W3C carrier survives byte for byte, percent-encoded baggage and non-ASCII included."""
    wire = encode(b"payload", REALISTIC)
    header = wire[6 : 6 + int.from_bytes(wire[4:6], "big")].decode("ascii")
    assert [item.split("=", 1)[0] for item in header.split("&")] == ["traceparent", "tracestate", "baggage"]
    assert "%25C3%25BC" in header  # the baggage's own percent signs are encoded again
    decoded = decode(wire)
    assert decoded.carrier == REALISTIC
    assert decoded.carrier is not None and decoded.carrier["baggage"] == BAGGAGE


def test_decoded_enveloped_flag() -> None:
    """``enveloped`` tells an empty envelope from no envelope."""
    assert decode(encode("x", None)).enveloped
    assert decode(encode("x", None)).carrier == {}
    assert not decode("x").enveloped
    assert not Decoded(b"x", None).enveloped


@pytest.mark.parametrize("carrier", CARRIERS, ids=CARRIER_IDS)
@pytest.mark.parametrize(
    ("payload", "suffix"),
    [
        ('{"a":1}', ',"a":1}'),
        ("{}", "}"),
        ("{ }", " }"),
        (' \n\t{"x":[1,2]}', ',"x":[1,2]}'),
        ("{\n}", "\n}"),
        ("{", ","),
        ('{"_wstrace":"user data"}', ',"_wstrace":"user data"}'),
    ],
)
def test_json_field_round_trip(payload: str, suffix: str, carrier: dict[str, str] | None) -> None:
    """The carrier becomes the first member, with a comma unless the object was empty."""
    wire = encode_json_field(payload, carrier)
    assert isinstance(wire, str)
    lead = payload[: payload.index("{")]
    member = '"_wstrace":' + json.dumps(expected(carrier), separators=(",", ":"))
    assert wire == lead + "{" + member + suffix
    assert member.isascii()
    if payload.rstrip().endswith("}") and "_wstrace" not in payload:
        assert json.loads(wire)["_wstrace"] == expected(carrier)
    decoded = decode_json_field(wire)
    assert decoded.payload == payload
    assert decoded.carrier == expected(carrier)
    raw = encode_json_field(payload.encode(), carrier)
    assert raw == wire.encode()
    assert decode_json_field(raw) == Decoded(payload.encode(), expected(carrier))


def test_json_field_non_ascii_is_escaped() -> None:
    """Non-ASCII carrier values are written as JSON escapes, so the member is ASCII in bytes too."""
    wire = encode_json_field(b'{"msg":"\xc3\xbc"}', {"baggage": "city=Zürich"})
    assert wire == b'{"_wstrace":{"baggage":"city=Z\\u00fcrich"},"msg":"\xc3\xbc"}'
    assert decode_json_field(wire) == Decoded(b'{"msg":"\xc3\xbc"}', {"baggage": "city=Zürich"})


def test_json_field_custom_name() -> None:
    """Another member name is used on both sides; the default name is then foreign."""
    wire = encode_json_field('{"a":1}', {"traceparent": TRACEPARENT}, field="tc")
    assert wire == '{"tc":{"traceparent":"' + TRACEPARENT + '"},"a":1}'
    assert decode_json_field(wire, field="tc") == Decoded('{"a":1}', {"traceparent": TRACEPARENT})
    assert decode_json_field(wire) == Decoded(wire, None)


@pytest.mark.parametrize("payload", ["", "   ", "[1]", '"{"', "1", "null", "x{}", "\ufeff{}", b"", b"[]", b"\x00{"])
def test_json_field_non_objects_pass_through(payload: str | bytes) -> None:
    """A payload that is not a JSON object cannot carry the member and is sent unchanged."""
    assert encode_json_field(payload, REALISTIC) is payload
    assert decode_json_field(payload) == Decoded(payload, None)


@pytest.mark.parametrize(
    "wire",
    [
        '{ "_wstrace":{"a":"b"},"x":1}',
        '{"_wstrace" :{"a":"b"},"x":1}',
        '{"_wstrace": {"a":"b"},"x":1}',
        '{"x":1,"_wstrace":{"a":"b"}}',
        '{"_wstrace":{"A":"b"},"x":1}',
        '{"_wstrace":{"a b":"c"},"x":1}',
        '{"_wstrace":{"a":1},"x":1}',
        '{"_wstrace":{"a":null}}',
        '{"_wstrace":{"a":{"b":"c"}}}',
        '{"_wstrace":[],"x":1}',
        '{"_wstrace":"a=b","x":1}',
        '{"_wstrace":{"a":"b"}',
        '{"_wstrace":{"a":"b"',
        '{"_wstrace":{"a":"b"} ,"x":1}',
        '{"_wstrace":{"a":"b"}x',
        '{"_wstrace":{"a":"b"}]',
        '{"_wstrace":',
        '{"_wstrace"',
        '{"other":{"a":"b"}}',
        b'{"_wstrace":{"a":"\xc3\xbc"}}',
        b'{"_wstrace":{"a":"\xff"},"x":1}',
    ],
)
def test_json_field_non_canonical_passes_through(wire: str | bytes) -> None:
    """Only the exact canonical member is removed; anything else is delivered as it came."""
    assert decode_json_field(wire) == Decoded(wire, None)


def test_json_field_deep_nesting_does_not_raise() -> None:
    """A deeply nested member value is foreign input, not a crash (no RecursionError)."""
    for wire in ('{"_wstrace":' + "[" * 5000, '{"_wstrace":{"a":' + "[" * 5000, b'{"_wstrace":' + b"{" * 5000):
        assert decode_json_field(wire) == Decoded(wire, None)


# Property tests --------------------------------------------------------------


@PROPERTY
@given(payload=texts, carrier=carriers)
def test_property_text_round_trip(payload: str, carrier: dict[str, str] | None) -> None:
    """Any str payload and valid carrier come back exactly from a text envelope."""
    decoded = decode(encode(payload, carrier))
    assert type(decoded.payload) is str
    assert decoded.payload == payload
    assert decoded.carrier == expected(carrier)


@PROPERTY
@given(payload=blobs, carrier=carriers)
def test_property_bytes_text_round_trip(payload: bytes, carrier: dict[str, str] | None) -> None:
    """Any bytes sent with the text framing come back exactly, as bytes."""
    decoded = decode(encode(payload, carrier, text=True))
    assert type(decoded.payload) is bytes
    assert decoded.payload == payload
    assert decoded.carrier == expected(carrier)


@PROPERTY
@given(payload=blobs, carrier=carriers)
def test_property_binary_round_trip(payload: bytes, carrier: dict[str, str] | None) -> None:
    """Any bytes payload and valid carrier come back exactly from a binary envelope."""
    decoded = decode(encode(payload, carrier))
    assert type(decoded.payload) is bytes
    assert decoded.payload == payload
    assert decoded.carrier == expected(carrier)


@PROPERTY
@given(payload=json_objects, carrier=carriers, as_bytes=st.booleans())
def test_property_json_object_round_trip(payload: str, carrier: dict[str, str] | None, as_bytes: bool) -> None:
    """Any payload starting with a brace gets the member and loses exactly it again."""
    sent: str | bytes = payload.encode("utf-8") if as_bytes else payload
    wire = encode_json_field(sent, carrier)
    assert type(wire) is type(sent)
    assert wire != sent
    assert is_canonical_json(wire)
    decoded = decode_json_field(wire)
    assert type(decoded.payload) is type(sent)
    assert decoded.payload == sent
    assert decoded.carrier == expected(carrier)


@PROPERTY
@given(payload=json_blobs, carrier=carriers)
def test_property_json_object_round_trip_any_bytes(payload: bytes, carrier: dict[str, str] | None) -> None:
    """Arbitrary (even non-UTF-8) bytes after the brace survive the JSON-field form."""
    decoded = decode_json_field(encode_json_field(payload, carrier))
    assert decoded.payload == payload
    assert decoded.carrier == expected(carrier)


@PROPERTY
@given(payload=texts | st.text(), carrier=carriers)
def test_property_json_non_object_unchanged(payload: str, carrier: dict[str, str] | None) -> None:
    """A payload whose first non-blank character is not a brace is never changed."""
    if payload.lstrip(JSON_WS).startswith("{"):
        payload = "[" + payload
    assert encode_json_field(payload, carrier) is payload
    raw = payload.encode("utf-8")
    assert encode_json_field(raw, carrier) is raw


@FUZZ
@given(wire=texts | st.text())
def test_property_foreign_text_passes_through(wire: str) -> None:
    """Text that does not start with the version 1 prefix is delivered unchanged."""
    if not is_foreign_text(wire):
        wire = "x" + wire
    assert decode(wire) == Decoded(wire, None)
    assert parse(wire) == Decoded(wire, None)


@FUZZ
@given(wire=blobs | st.binary())
def test_property_foreign_bytes_pass_through(wire: bytes) -> None:
    """Bytes that start with neither version 1 prefix are delivered unchanged."""
    if not is_foreign_bytes(wire):
        wire = b"x" + wire
    assert decode(wire) == Decoded(wire, None)
    assert parse(wire) == Decoded(wire, None)


@FUZZ
@given(wire=json_objects | texts | st.text(), as_bytes=st.booleans())
def test_property_json_foreign_passes_through(wire: str, as_bytes: bool) -> None:
    """A payload that does not open with the canonical member is delivered unchanged."""
    if is_canonical_json(wire):
        wire = "[" + wire
    sent: str | bytes = wire.encode("utf-8") if as_bytes else wire
    assert decode_json_field(sent) == Decoded(sent, None)


@PROPERTY
@given(
    payload=st.text(max_size=20),
    carrier=st.dictionaries(keys, st.text(max_size=30), max_size=3),
    cap=st.integers(0, 120),
    form=st.sampled_from(["text", "bytes-text", "binary", "json"]),
)
def test_property_small_caps_refuse_or_round_trip(payload: str, carrier: dict[str, str], cap: int, form: str) -> None:
    """Near the cap an encoder either refuses the carrier or writes what the decoder reads back."""
    sent: str | bytes
    try:
        if form == "json":
            sent = "{" + payload
            wire = encode_json_field(sent, carrier, max_header=cap)
        else:
            sent = payload if form == "text" else payload.encode()
            wire = encode(sent, carrier, text=form != "binary", max_header=cap)
    except EnvelopeEncodeError:
        return
    decoded = decode_json_field(wire, max_header=cap) if form == "json" else decode(wire, max_header=cap)
    assert decoded == Decoded(sent, carrier)


def check_never_lossy(wire: Any, decoded: Decoded) -> None:
    """A decoder either delivers the frame unchanged or a well-formed carrier."""
    if decoded.carrier is None:
        assert decoded.payload == wire
        assert type(decoded.payload) is type(wire)
    else:
        assert type(decoded.payload) is type(wire)
        assert all(KEY_RE.match(k) and isinstance(v, str) for k, v in decoded.carrier.items())
        assert len(decoded.payload) < len(wire)


@FUZZ
@given(wire=texts | json_objects | st.text(), cap=st.sampled_from([0, 5, 64, DEFAULT_MAX_HEADER_BYTES]))
def test_fuzz_text_decoders_never_raise(wire: str, cap: int) -> None:
    """``decode`` and ``decode_json_field`` never raise on arbitrary text."""
    check_never_lossy(wire, decode(wire, max_header=cap))
    check_never_lossy(wire, decode_json_field(wire, max_header=cap))


@FUZZ
@given(wire=blobs | json_blobs | st.binary(), cap=st.sampled_from([0, 5, 64, DEFAULT_MAX_HEADER_BYTES]))
def test_fuzz_bytes_decoders_never_raise(wire: bytes, cap: int) -> None:
    """``decode`` and ``decode_json_field`` never raise on arbitrary bytes."""
    check_never_lossy(wire, decode(wire, max_header=cap))
    check_never_lossy(wire, decode_json_field(wire, max_header=cap))


@FUZZ
@given(
    payload=st.binary(max_size=20),
    carrier=carriers,
    form=st.sampled_from(["text", "binary", "json"]),
    data=st.data(),
)
def test_fuzz_damaged_envelopes_never_raise(
    payload: bytes, carrier: dict[str, str] | None, form: str, data: Any
) -> None:
    """Truncated or corrupted envelopes decode without raising and never lose bytes silently."""
    if form == "json":
        wire = encode_json_field(b"{" + payload, carrier)
    else:
        wire = encode(payload, carrier, text=form == "text")
    assert isinstance(wire, bytes)
    cut = data.draw(st.integers(0, len(wire)))
    at = data.draw(st.integers(0, len(wire) - 1))
    flipped = wire[:at] + bytes([wire[at] ^ data.draw(st.integers(1, 255))]) + wire[at + 1 :]
    for damaged in (wire[:cut], flipped):
        check_never_lossy(damaged, decode(damaged))
        check_never_lossy(damaged, decode_json_field(damaged))


# Malformed, truncated and oversized envelopes --------------------------------

OVERSIZED_TEXT = TEXT_MAGIC + "a=" + "x" * (DEFAULT_MAX_HEADER_BYTES - 1) + "\x1epayload"
OVERSIZED_BINARY = BINARY_MAGIC + (DEFAULT_MAX_HEADER_BYTES + 1).to_bytes(2, "big") + b"a=" + b"x" * 8191 + b"payload"

MALFORMED = [
    TEXT_MAGIC,
    TEXT_MAGIC + "traceparent=" + TRACEPARENT,
    TEXT_MAGIC + "TRACEPARENT=x\x1epayload",
    TEXT_MAGIC + "a\x1epayload",
    TEXT_MAGIC + "=b\x1epayload",
    TEXT_MAGIC + "-a=b\x1epayload",
    TEXT_MAGIC + "a=1&a=2\x1epayload",
    TEXT_MAGIC + "a=1&\x1epayload",
    TEXT_MAGIC + "&\x1epayload",
    TEXT_MAGIC + "a=b c\x1epayload",
    TEXT_MAGIC + "a=b\tc\x1epayload",
    TEXT_MAGIC + 'a="b"\x1epayload',
    TEXT_MAGIC + "a=\x7f\x1epayload",
    TEXT_MAGIC + "a=ü\x1epayload",
    TEXT_MAGIC + "a=%ff\x1epayload",
    TEXT_MAGIC + "a=%C3\x1epayload",
    OVERSIZED_TEXT,
    TEXT_MAGIC.encode(),
    TEXT_MAGIC.encode() + b"a=b",
    TEXT_MAGIC.encode() + b"a=\xc3\xbc\x1epayload",
    TEXT_MAGIC.encode() + b"a=%ff\x1epayload",
    OVERSIZED_TEXT.encode(),
    BINARY_MAGIC,
    BINARY_MAGIC + b"\x00",
    BINARY_MAGIC + b"\x00\x05a=b",
    BINARY_MAGIC + b"\x00\x03a=\xff",
    BINARY_MAGIC + b"\x00\x03A=b",
    BINARY_MAGIC + b"\x00\x01=",
    BINARY_MAGIC + b"\x00\x07a=1&a=2",
    BINARY_MAGIC + b"\xff\xff" + b"a=" + b"x" * 0xFFFD,
    OVERSIZED_BINARY,
]


@pytest.mark.parametrize("wire", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_envelope_is_delivered_unchanged(wire: str | bytes) -> None:
    """``decode`` returns a malformed frame as it came and never raises."""
    decoded = decode(wire)
    assert decoded.payload is wire
    assert decoded.carrier is None
    assert not decoded.enveloped


@pytest.mark.parametrize("wire", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_envelope_is_refused_by_parse(wire: str | bytes) -> None:
    """``parse`` raises ``EnvelopeDecodeError``, which is also a ``ValueError`` and a ``WstraceError``."""
    with pytest.raises(EnvelopeDecodeError) as info:
        parse(wire)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, WstraceError)
    assert isinstance(info.value, EnvelopeError)


def test_parse_refuses_non_payload_types() -> None:
    """A frame that is neither text nor bytes is refused by ``parse`` and passed through by ``decode``."""
    with pytest.raises(EnvelopeDecodeError):
        parse(123)  # type: ignore[arg-type]
    assert decode(None) == Decoded(None, None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "wire",
    [
        "\x1ewt2a=b\x1epayload",
        "\x1ewt0\x1epayload",
        "\x1eWT1a=b\x1epayload",
        b"\x1ewt\x02\x00\x03a=bpayload",
        b"\x1ewt\x00\x00\x00",
        b"\x1ewt2a=b\x1epayload",
        "\x1ewt\x01\x00\x00payload",
    ],
)
def test_unknown_version_passes_through(wire: str | bytes) -> None:
    """A frame with an envelope-like prefix of another version is not an envelope at all."""
    assert decode(wire) == Decoded(wire, None)
    assert parse(wire) == Decoded(wire, None)


def test_header_exactly_at_cap_is_accepted() -> None:
    """A header of exactly ``max_header`` bytes is written and read in every framing."""
    carrier = {"a": "x" * (DEFAULT_MAX_HEADER_BYTES - 2)}
    for payload in ("p", b"p"):
        assert decode(encode(payload, carrier)).carrier == carrier
    assert decode(encode(b"p", carrier, text=True)).carrier == carrier
    small = {"a": "b" * 8}
    assert decode(encode("p", small, max_header=10), max_header=10) == Decoded("p", small)
    assert decode(encode("p", small, max_header=10), max_header=9) == Decoded(encode("p", small), None)
    assert decode(encode(b"p", small, max_header=10), max_header=9).carrier is None


def test_hard_maximum_header() -> None:
    """A 65535-byte header fits the binary length field; the cap cannot go above that."""
    carrier = {"a": "x" * (0xFFFF - 2)}
    wire = encode(b"p", carrier, max_header=0xFFFF)
    assert wire[4:6] == b"\xff\xff"
    assert decode(wire, max_header=0xFFFF) == Decoded(b"p", carrier)
    assert decode(wire) == Decoded(wire, None)
    for cap in (-1, 0x10000):
        with pytest.raises(EnvelopeEncodeError):
            encode(b"p", {"a": "b"}, max_header=cap)


@pytest.mark.parametrize(
    "encoder",
    [
        lambda c, cap: encode("p", c, max_header=cap),
        lambda c, cap: encode(b"p", c, max_header=cap),
        lambda c, cap: encode(b"p", c, text=True, max_header=cap),
        lambda c, cap: encode_json_field('{"a":1}', c, max_header=cap),
        lambda c, cap: encode_json_field(b"{}", c, max_header=cap),
    ],
    ids=["text", "binary", "bytes-text", "json", "json-bytes"],
)
def test_header_over_cap_is_refused(encoder: Any) -> None:
    """Encoders refuse a carrier whose header would exceed ``max_header``."""
    with pytest.raises(EnvelopeEncodeError) as info:
        encoder({"a": "x" * (DEFAULT_MAX_HEADER_BYTES - 1)}, DEFAULT_MAX_HEADER_BYTES)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, WstraceError)
    with pytest.raises(EnvelopeEncodeError):
        encoder({"a": "ü" * 6}, 35)  # "a=" and 36 bytes of percent-encoded value
    with pytest.raises(EnvelopeEncodeError):
        encoder(REALISTIC, 64)


def test_json_carrier_over_cap_is_refused() -> None:
    """The JSON form refuses a carrier object longer than the cap, which its decoder would ignore."""
    carrier = {"ab": "cdefg"}  # header "ab=cdefg" is 8 bytes, the object '{"ab":"cdefg"}' is 14
    with pytest.raises(EnvelopeEncodeError):
        encode_json_field('{"x":1}', carrier, max_header=10)
    controls = {"a": "\x01" * 20}  # 62 bytes percent-encoded, 128 as JSON escapes
    with pytest.raises(EnvelopeEncodeError):
        encode_json_field('{"x":1}', controls, max_header=100)
    wire = encode_json_field('{"x":1}', carrier, max_header=14)
    assert decode_json_field(wire, max_header=14) == Decoded('{"x":1}', carrier)
    assert decode_json_field(wire, max_header=13) == Decoded(wire, None)


@pytest.mark.parametrize(
    "carrier",
    [
        {"Traceparent": TRACEPARENT},
        {"trace parent": "x"},
        {"": "x"},
        {"-a": "x"},
        {"_a": "x"},
        {".a": "x"},
        {"a/b": "x"},
        {"a=b": "x"},
        {"a&b": "x"},
        {"ü": "x"},
        {"a\n": "x"},
        {1: "x"},
        {b"traceparent": "x"},
        {None: "x"},
        {"a": 1},
        {"a": b"x"},
        {"a": None},
        {"a": "\ud800"},
    ],
)
def test_bad_carrier_is_refused(carrier: dict[Any, Any]) -> None:
    """Keys must be lowercase tokens and values UTF-8-encodable str, in every form."""
    for encoder in (
        lambda: encode("p", carrier),
        lambda: encode(b"p", carrier),
        lambda: encode_text(b"p", carrier),
        lambda: encode_binary(b"p", carrier),
        lambda: encode_json_field("{}", carrier),
    ):
        with pytest.raises(EnvelopeEncodeError):
            encoder()


def test_bad_payload_types_are_refused() -> None:
    """Encoders refuse payloads that are neither text nor bytes."""
    with pytest.raises(EnvelopeEncodeError):
        encode_text(123, None)  # type: ignore[arg-type]
    with pytest.raises(EnvelopeEncodeError):
        encode_binary("text", None)  # type: ignore[arg-type]
    with pytest.raises(EnvelopeEncodeError):
        encode_json_field(None, None)  # type: ignore[arg-type]


@pytest.mark.parametrize("wrap", [bytearray, memoryview], ids=["bytearray", "memoryview"])
def test_buffer_payloads_encode_like_bytes(wrap: Any) -> None:
    """bytearray and memoryview payloads produce the same frames as bytes."""
    for raw in (b"", b"\x00abc\xff", BINARY_MAGIC):
        for carrier in (None, REALISTIC):
            assert encode(wrap(raw), carrier) == encode(raw, carrier)
            assert encode(wrap(raw), carrier, text=True) == encode(raw, carrier, text=True)
            assert encode_binary(wrap(raw), carrier) == encode_binary(raw, carrier)
            assert encode_text(wrap(raw), carrier) == encode_text(raw, carrier)
            assert type(encode(wrap(raw), carrier)) is bytes
            assert decode(encode(wrap(raw), carrier)) == Decoded(raw, expected(carrier))


# The frame type decides the layout (protocol 1.1, sections 5 and 8) ------------------------------

LAYOUTS = [
    ("text", lambda payload, carrier: encode(payload, carrier, text=True)),
    ("binary", lambda payload, carrier: encode(payload, carrier, text=False)),
]


@pytest.mark.parametrize("carrier", CARRIERS, ids=CARRIER_IDS)
@pytest.mark.parametrize("payload", [b"", b"bin", BINARY_MAGIC + b"\x00\x00x", TEXT_MAGIC.encode() + b"\x1ex"])
def test_only_the_frame_types_own_layout_is_an_envelope(payload: bytes, carrier: dict[str, str] | None) -> None:
    """A text-layout envelope in a binary frame, or a binary one in a text frame, is delivered unchanged."""
    text_wire = encode(payload, carrier, text=True)
    binary_wire = encode(payload, carrier, text=False)
    assert decode(text_wire, text=True) == Decoded(payload, expected(carrier))
    assert decode(binary_wire, text=False) == Decoded(payload, expected(carrier))
    assert decode(text_wire, text=False) == Decoded(text_wire, None)
    assert decode(binary_wire, text=True) == Decoded(binary_wire, None)
    # parse agrees: the other type's layout is not even an envelope prefix, so it is no error either.
    assert parse(text_wire, text=False) == Decoded(text_wire, None)
    assert parse(binary_wire, text=True) == Decoded(binary_wire, None)
    # Not knowing the frame type, bytes are read in either layout.
    assert decode(text_wire) == decode(text_wire, text=True)
    assert decode(binary_wire) == decode(binary_wire, text=False)


def test_the_reported_defect_a_text_layout_in_a_binary_frame() -> None:
    """``1e 77 74 31 traceparent=… 1e bin`` in a binary frame is not ``bin`` with a context."""
    wire = b"\x1ewt1traceparent=" + TRACEPARENT.encode() + b"\x1ebin"
    assert decode(wire, text=False) == Decoded(wire, None)
    assert not decode(wire, text=False).enveloped
    assert decode(wire, text=True) == Decoded(b"bin", {"traceparent": TRACEPARENT})


def test_a_str_is_never_a_binary_frame() -> None:
    """With ``text=False`` a str (which no binary frame is) is returned as it came, prefix or not."""
    for wire in (encode("x", {"traceparent": TRACEPARENT}), "\x1ewt\x01\x00\x00x", "plain"):
        assert decode(wire, text=False) == Decoded(wire, None)
        assert parse(wire, text=False) == Decoded(wire, None)


@pytest.mark.parametrize("text", [True, False])
def test_parse_still_refuses_a_malformed_envelope_of_the_frames_type(text: bool) -> None:
    wire = TEXT_MAGIC.encode() + b"A=b\x1ex" if text else BINARY_MAGIC + b"\x00\x03A=bx"
    with pytest.raises(EnvelopeDecodeError):
        parse(wire, text=text)
    assert decode(wire, text=text) == Decoded(wire, None)


@PROPERTY
@given(payload=st.binary(max_size=30), carrier=carriers, text=st.booleans())
def test_property_each_type_reads_only_its_own_layout(
    payload: bytes, carrier: dict[str, str] | None, text: bool
) -> None:
    wire = encode(payload, carrier, text=text)
    assert decode(wire, text=text) == Decoded(payload, expected(carrier))
    assert decode(wire, text=not text) == Decoded(wire, None)


# The header grammar is exact (protocol 1.1, sections 7 and 8) ---------------------------------

STRICT_HEADERS = [
    "k=%ZZ",  # 1.0 took a stray % literally
    "k=%4",
    "k=%",
    'k="v"',  # section 7 allowed it, section 8 refused it: now outside the grammar in both
    "k=a+b",
    "k=a!b",
    "k=a*b",
    "k=a(b)",
    "k=a'b",
    "k=a/b",
    "k=a:b",
    "k=a=b",
    "k=a,b",
    "k=a;b",
    "k=a@b",
    "k=a#b",
    "k=a[b]",
    "k=a{b}",
    "k=a|b",
    "k=a^b",
    "k=a`b",
    "k=a$b",
    "k=a\\b",
]


@pytest.mark.parametrize("header", STRICT_HEADERS)
def test_characters_outside_the_value_grammar_are_refused(header: str) -> None:
    """Every receiver reads a header the same way: a character no sender writes makes it foreign."""
    for wire in (TEXT_MAGIC + header + "\x1ep", BINARY_MAGIC + len(header).to_bytes(2, "big") + header.encode() + b"p"):
        assert decode(wire) == Decoded(wire, None)
        with pytest.raises(EnvelopeDecodeError):
            parse(wire)


def test_the_value_grammar_accepts_what_it_should() -> None:
    """Unreserved characters as they are or escaped, lowercase hex, empty values."""
    wire = TEXT_MAGIC + "a=AZaz09-._~&b=%41%7e%c3%bc&c=&d-1.x_y=%25" + "\x1ep"
    assert decode(wire) == Decoded("p", {"a": "AZaz09-._~", "b": "A~ü", "c": "", "d-1.x_y": "%"})


# The JSON format (protocol 1.1, section 6) ---------------------------------------------------------

TP_MEMBER = '"traceparent":"' + TRACEPARENT + '"'


@pytest.mark.parametrize(
    ("wire", "why"),
    [
        ('{"_wstrace":{"a":"1","a":"2"},"x":1}', "a key that repeats, as in the framed format"),
        ('{"_wstrace":{' + TP_MEMBER + "," + TP_MEMBER + "}}", "the same key twice with the same value"),
        ('{"_wstrace":{"trace\\u0070arent":"' + TRACEPARENT + '"},"x":1}', "an escaped key"),
        ('{"_wstrace":{"\\u0061":"b"}}', "an escaped key that decodes to a valid one"),
        ('{"_wstrace":{"a": "b"},"x":1}', "a blank inside the carrier object"),
        ('{"_wstrace":{ "a":"b"},"x":1}', "a blank after its brace"),
        ('{"_wstrace":{"a":"b" },"x":1}', "a blank before its closing brace"),
        ('{"_wstrace":{"a":"b",\n"c":"d"},"x":1}', "a newline between members"),
        ('{"_wstrace":{"a":"ü"}}', "raw non-ASCII in a text frame"),
        ('{"_wstrace":{"a":"\x7f"}}', "raw DEL"),
        ('{"_wstrace":{"a":"\\ud800"}}', "an escaped lone surrogate"),
        ('{"_wstrace":{"a":"\\udc00\\ud800"}}', "escaped surrogates in the wrong order"),
        ('{"_wstrace":{"a":"\\u00"}}', "a short \\u escape"),
        ('{"_wstrace":{"a":"\\a"}}', "an escape JSON does not have"),
        ('{"_wstrace":{},}', "a comma the encoder would not write before a closing brace"),
        ('{"_wstrace":{}, \n}', "the same, with blanks"),
        ('{"_wstrace":{"a":"b"},}', "the same, with a carrier"),
    ],
)
def test_json_non_canonical_carrier_objects_pass_through(wire: str, why: str) -> None:
    assert decode_json_field(wire) == Decoded(wire, None), why
    raw = wire.encode("utf-8", "surrogatepass")
    assert decode_json_field(raw) == Decoded(raw, None), why


def test_json_values_decode_every_rfc8259_escape() -> None:
    wire = '{"_wstrace":{"a":"\\"\\\\\\/\\b\\f\\n\\r\\t\\u0041\\u00FC\\ud83d\\ude80"},"x":1}'
    assert decode_json_field(wire) == Decoded('{"x":1}', {"a": '"\\/\b\f\n\r\tAü🚀'})


MEMBER_WIRES = st.builds(
    lambda lead, obj, after, rest: lead + '{"_wstrace":' + obj + after + rest,
    st.text(JSON_WS, max_size=2),
    st.sampled_from(["{}", '{"a":"b"}', '{"a":"b","c":""}', '{"a":"b","a":"c"}', '{"a" :"b"}', '{"a":"\\u00fc"}']),
    st.sampled_from(["", ",", " ", "}", " }", ",}", ", }", ",,", "]"]),
    st.text(max_size=8),
)


@FUZZ
@given(wire=MEMBER_WIRES, as_bytes=st.booleans())
def test_property_json_decoding_undoes_exactly_one_encoding(wire: str, as_bytes: bool) -> None:
    """A wire the decoder accepts is exactly the encoding of what it returns: no two wires for one message."""
    sent: str | bytes = wire.encode() if as_bytes else wire
    decoded = decode_json_field(sent)
    if decoded.carrier is None:
        assert decoded.payload == sent
        return
    reencoded = encode_json_field(decoded.payload, decoded.carrier)
    if "\\" not in wire:  # an escape may be spelled another way (\u00FC for \u00fc)
        assert reencoded == sent
    assert decode_json_field(reencoded) == decoded


def test_json_cap_is_the_carrier_objects_length_only() -> None:
    """1.1: a carrier whose header form is over the cap but whose JSON object fits is sent."""
    carrier = {"baggage": "a=1,b=2,c=3,d=4"}  # header "baggage=a%3D1%2Cb..." is 41 bytes, the object 29
    wire = encode_json_field("{}", carrier, max_header=29)
    assert wire == '{"_wstrace":{"baggage":"a=1,b=2,c=3,d=4"}}'
    assert decode_json_field(wire, max_header=29) == Decoded("{}", carrier)
    with pytest.raises(EnvelopeEncodeError):
        encode("x", carrier, max_header=29)  # the framed format still caps its header
    with pytest.raises(EnvelopeEncodeError):
        encode_json_field("{}", carrier, max_header=28)


def test_a_carrier_merely_too_big_is_told_apart_from_a_bad_one() -> None:
    """Over the cap: a ``_CarrierTooLarge`` (an ``EnvelopeEncodeError``), so a sender can log it quietly."""
    from wstrace.envelope import _CarrierTooLarge  # noqa: PLC0415 - private on purpose

    for too_big in (
        lambda: encode("x", {"a": "x" * 20}, max_header=10),
        lambda: encode(b"x", {"a": "x" * 20}, max_header=10),
        lambda: encode_json_field("{}", {"a": "x" * 20}, max_header=10),
    ):
        with pytest.raises(_CarrierTooLarge):
            too_big()
    for bad in (
        lambda: encode("x", {"A": "x"}, max_header=10),
        lambda: encode_json_field("{}", {"A": "x"}, max_header=10),
        lambda: encode_json_field("{}", {"a": "\ud800"}),
    ):
        with pytest.raises(EnvelopeEncodeError) as info:
            bad()
        assert not isinstance(info.value, _CarrierTooLarge)
