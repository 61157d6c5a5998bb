"""The JavaScript codec's own test vectors, made by the reference codec (``wstrace.envelope``).

``js/test/vectors.test.js`` runs every file shaped like ``docs/protocol/vectors.json`` (the spec's test vectors); this
one, ``js/test/fixtures/vectors.json``, exercises the runner and the codec with cases this module computes, so the
expected wires and results are the reference's, never written by hand. Regenerate it after a codec change with

    PYTHONPATH=src python -m tests.js.vectors_fixture

``tests/js/test_node.py`` checks that the committed file is what this module makes.

The cases are ones where every version of the reference agrees (no stray ``%``, no blanks inside a JSON carrier,
no layout of the other frame type).
"""

from __future__ import annotations

import base64
import inspect
import json
from pathlib import Path
from typing import Any, Optional, Union

from wstrace import envelope
from wstrace.exceptions import EnvelopeEncodeError


FIXTURE = Path(__file__).resolve().parents[2] / "js" / "test" / "fixtures" / "vectors.json"

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
DEFAULTS = {"max_header_bytes": envelope.DEFAULT_MAX_HEADER_BYTES, "json_field": envelope.DEFAULT_JSON_FIELD}

Data = Union[str, bytes]


def _data(value: Data) -> dict[str, str]:
    if isinstance(value, str):
        return {"text": value}
    return {"base64": base64.b64encode(value).decode("ascii")}


def _options(cap: Optional[int], field: Optional[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if cap is not None:
        options["max_header_bytes"] = cap
    if field is not None:
        options["json_field"] = field
    return options


def _encode_case(
    case_id: str,
    reason: str,
    fmt: str,
    kind: str,
    carrier: dict[str, str],
    payload: Data,
    cap: Optional[int] = None,
    field: Optional[str] = None,
) -> dict[str, Any]:
    case: dict[str, Any] = {"id": case_id, "reason": reason, "format": fmt, "type": kind, "carrier": carrier}
    case["payload"] = _data(payload)
    options = _options(cap, field)
    if options:
        case["options"] = options
    max_header = DEFAULTS["max_header_bytes"] if cap is None else cap
    try:
        if fmt == "frame":
            wire = envelope.encode(payload, carrier, text=kind == "text", max_header=max_header)
        else:
            wire = envelope.encode_json_field(
                payload, carrier, field=field or envelope.DEFAULT_JSON_FIELD, max_header=max_header
            )
    except EnvelopeEncodeError as exc:
        case["error"] = str(exc)
        return case
    case["wire"] = _data(wire)
    return case


def _decode(fmt: str, kind: str, wire: Data, max_header: int, field: str) -> envelope.Decoded:
    if fmt == "json":
        return envelope.decode_json_field(wire, field=field, max_header=max_header)
    if "text" in inspect.signature(envelope.decode).parameters:  # a reference that knows the frame type
        return envelope.decode(wire, text=kind == "text", max_header=max_header)  # type: ignore[call-arg]
    return envelope.decode(wire, max_header=max_header)


def _decode_case(
    case_id: str, reason: str, fmt: str, kind: str, wire: Data, cap: Optional[int] = None, field: Optional[str] = None
) -> dict[str, Any]:
    case: dict[str, Any] = {"id": case_id, "reason": reason, "format": fmt, "type": kind, "wire": _data(wire)}
    options = _options(cap, field)
    if options:
        case["options"] = options
    decoded = _decode(
        fmt,
        kind,
        wire,
        DEFAULTS["max_header_bytes"] if cap is None else cap,
        field or envelope.DEFAULT_JSON_FIELD,
    )
    if decoded.carrier is None:
        assert decoded.payload == wire, case_id
        case["expect"] = "unchanged"
    else:
        case["expect"] = {"carrier": decoded.carrier, "payload": _data(decoded.payload)}
    return case


def build() -> dict[str, Any]:
    """Every case, computed now by the reference codec."""
    baggage = {"traceparent": TP, "baggage": "city=Zürich"}
    encode = [
        _encode_case(
            "text-spec-example",
            "section 9: text frame",
            "frame",
            "text",
            {"traceparent": TP, "tracestate": "congo=t61rcWkgMzE"},
            '{"op":"ping"}',
        ),
        _encode_case(
            "binary-spec-example",
            "section 9: binary frame, baggage percent-encoded as UTF-8",
            "frame",
            "binary",
            baggage,
            b"\x00\x01\x02\x03",
        ),
        _encode_case("text-empty-carrier", "an empty carrier is an empty header", "frame", "text", {}, "hi"),
        _encode_case("binary-empty-carrier", "an empty carrier: N = 0", "frame", "binary", {}, b"\xca\xfe"),
        _encode_case(
            "text-payload-like-an-envelope",
            "a payload that starts like an envelope is wrapped like any",
            "frame",
            "text",
            {"traceparent": TP},
            "\x1ewt1a=b\x1ex",
        ),
        _encode_case(
            "text-reserved-characters",
            "everything but unreserved is %XX, uppercase, including !'()*",
            "frame",
            "text",
            {"k": "a b&c=d;e%f!'()*~_.-"},
            "x",
        ),
        _encode_case("text-empty-value", "an empty value is allowed", "frame", "text", {"k": ""}, "x"),
        _encode_case(
            "text-non-ascii-payload", "the payload is never touched", "frame", "text", {"traceparent": TP}, "héllo ✓ 😀"
        ),
        _encode_case(
            "text-as-bytes", "a text frame given as its UTF-8 bytes", "frame", "text", {"traceparent": TP}, "ü".encode()
        ),
        _encode_case(
            "text-over-the-cap", "a header over the cap is refused", "frame", "text", {"traceparent": TP}, "x", cap=16
        ),
        _encode_case("binary-bad-key", "keys are lowercase tokens", "frame", "binary", {"TraceParent": TP}, b"x"),
        _encode_case(
            "json-spec-example",
            "section 6: the member first, non-ASCII escaped",
            "json",
            "text",
            baggage,
            '{"op":"ping"}',
        ),
        _encode_case("json-empty-object", "no comma before a closing brace", "json", "text", {"traceparent": TP}, "{}"),
        _encode_case("json-blanks-kept", "blanks around the brace stay", "json", "text", {}, " { }"),
        _encode_case(
            "json-not-an-object", "not a JSON object: unchanged", "json", "text", {"traceparent": TP}, "[1,2]"
        ),
        _encode_case(
            "json-binary", "a JSON object in a binary frame", "json", "binary", {"traceparent": TP}, b'{"a":1}'
        ),
        _encode_case(
            "json-field-name", "another member name", "json", "text", {"traceparent": TP}, '{"a":1}', field="ctx"
        ),
    ]
    text_wire = envelope.encode_text('{"op":"ping"}', {"traceparent": TP, "tracestate": "congo=t61rcWkgMzE"})
    binary_wire = envelope.encode_binary(b"\x00\x01\x02\x03", baggage)
    decode = [
        _decode_case("text-spec-example", "section 9: text frame", "frame", "text", text_wire),
        _decode_case("binary-spec-example", "section 9: binary frame", "frame", "binary", binary_wire),
        _decode_case("text-empty-envelope", "an empty header", "frame", "text", "\x1ewt1\x1ehi"),
        _decode_case("binary-empty-envelope", "N = 0", "frame", "binary", b"\x1ewt\x01\x00\x00\xca\xfe"),
        _decode_case("text-plain", "no prefix", "frame", "text", "hello"),
        _decode_case("text-unterminated", "no separator ends the header", "frame", "text", "\x1ewt1traceparent=x"),
        _decode_case("text-unknown-version", "another version passes through", "frame", "text", "\x1ewt2a=b\x1ex"),
        _decode_case("binary-truncated-header", "shorter than 6 + N", "frame", "binary", b"\x1ewt\x01\x00\x09abc"),
        _decode_case("binary-too-short", "shorter than 6 bytes", "frame", "binary", b"\x1ewt\x01\x00"),
        _decode_case("text-blank-in-header", "a space breaks the grammar", "frame", "text", "\x1ewt1a b=1\x1ex"),
        _decode_case("text-repeated-key", "a key appears at most once", "frame", "text", "\x1ewt1a=1&a=2\x1ex"),
        _decode_case("text-item-without-equals", "every item has a =", "frame", "text", "\x1ewt1a=1&b\x1ex"),
        _decode_case("text-bad-utf8", "a value must decode to UTF-8", "frame", "text", "\x1ewt1a=%FF\x1ex"),
        _decode_case(
            "text-over-the-cap",
            "a header over the receiver's cap passes through",
            "frame",
            "text",
            "\x1ewt1traceparent=0123456789\x1ex",
            cap=8,
        ),
        _decode_case(
            "text-percent-decoded",
            "values are percent-decoded, payload kept whole",
            "frame",
            "text",
            "\x1ewt1baggage=city%3DZ%C3%BCrich&k=\x1e\x1epayload",
        ),
        _decode_case(
            "text-frame-as-bytes", "a text frame received as its bytes", "frame", "text", b"\x1ewt1a=1\x1e\xc3\xbc"
        ),
        _decode_case(
            "json-spec-example",
            "the member is removed with its comma",
            "json",
            "text",
            '{"_wstrace":{"traceparent":"' + TP + '","baggage":"city=Z\\u00fcrich"},"op":"ping"}',
        ),
        _decode_case("json-alone", "the member alone: blanks and brace kept", "json", "text", ' {"_wstrace":{} }'),
        _decode_case("json-not-first", "only a first member is ours", "json", "text", '{"op":1,"_wstrace":{}}'),
        _decode_case("json-non-string-value", "values are strings", "json", "text", '{"_wstrace":{"a":1},"b":2}'),
        _decode_case("json-not-an-object", "not an object", "json", "text", "[1,2]"),
        _decode_case("json-binary", "a binary frame", "json", "binary", b'{"_wstrace":{"a":"1"},"b":2}'),
        _decode_case("json-field-name", "another member name", "json", "text", '{"ctx":{"a":"1"},"b":2}', field="ctx"),
    ]
    return {"spec": "1.1", "defaults": DEFAULTS, "encode": encode, "decode": decode}


def render() -> str:
    return json.dumps(build(), indent=1, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    FIXTURE.write_text(render(), encoding="utf-8")
    print(f"wrote {FIXTURE}")
