"""The application's message-size limit on an enveloped connection (wstrace._limits).

``overhead`` must bound every envelope a receiver strips, whatever the carrier, so that raising a library's
limit by it never refuses a payload within the application's limit; ``Limit`` must measure exactly what the
application gets, and judge it by the library's own rule.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from wstrace import envelope
from wstrace._limits import Limit, in_force, overhead
from wstrace._wire import wire_for
from wstrace.config import Config


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
keys = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,12}", fullmatch=True)
carriers = st.dictionaries(keys, st.text(max_size=200), max_size=6)


def _full_carrier(cap: int) -> dict[str, str]:
    """A carrier whose header is exactly ``cap`` bytes: the largest envelope a sender may write."""
    value = "v" * (cap - len("k="))
    return {"k": value}


@pytest.mark.parametrize("cap", [0, 3, 100, envelope.DEFAULT_MAX_HEADER_BYTES, 65535])
def test_framed_overhead_is_the_largest_envelope(cap: int) -> None:
    config = Config.load(max_envelope_bytes=cap)
    carrier = _full_carrier(cap) if cap >= 2 else None
    assert len(envelope.encode(b"payload", carrier, text=False, max_header=cap)) - 7 == overhead(config, "frame")
    text = envelope.encode("payload", carrier, text=True, max_header=cap)
    assert len(text.encode()) - 7 == overhead(config, "frame") - 1  # text framing is one byte shorter


@pytest.mark.parametrize("field", ["_wstrace", "ctx", 'we"ird\u00e9'])
def test_json_overhead_is_the_largest_member(field: str) -> None:
    cap = 200
    config = Config.load(max_envelope_bytes=cap, json_field=field)
    obj_budget = cap - len('{"k":""}')
    carrier = {"k": "v" * obj_budget}
    assert len(json.dumps(carrier, separators=(",", ":"))) == cap
    wire = envelope.encode_json_field('{"a":1}', carrier, field=field, max_header=cap)
    assert len(wire.encode()) - len('{"a":1}') == overhead(config, "json")


def test_no_envelope_no_overhead() -> None:
    assert overhead(Config.load(), None) == 0


@settings(max_examples=200, deadline=None)
@given(carrier=carriers, payload=st.binary(max_size=50), text=st.booleans())
def test_overhead_bounds_every_envelope(carrier: dict[str, str], payload: bytes, text: bool) -> None:
    config = Config.load()
    cap = config.max_envelope_bytes
    try:
        message = envelope.encode(payload.decode("latin-1") if text else payload, carrier, text=text, max_header=cap)
    except envelope.EnvelopeEncodeError:
        return  # over the cap: a sender sends an empty envelope instead
    wire = message.encode() if isinstance(message, str) else message
    sent = payload.decode("latin-1").encode() if text else payload
    assert len(wire) - len(sent) <= overhead(config, "frame")


def test_in_force_reads_the_answer_as_opened_does() -> None:
    config = Config.load()
    assert in_force(config, [("wstrace-envelope", "frame/1")]) == "frame"
    assert in_force(config, [("wstrace-envelope", "json/1")]) == "json"
    assert in_force(config, [("wstrace-envelope", "frame/9")]) is None
    assert in_force(config, ()) is None
    assert in_force(Config.load(envelope="always", envelope_format="json"), ()) == "json"
    assert in_force(Config.load(envelope="off"), [("wstrace-envelope", "frame/1")]) is None


def _enveloped(payload: str | bytes, fmt: str = "frame") -> str | bytes:
    carrier = {"traceparent": TRACEPARENT}
    if fmt == "json":
        return envelope.encode_json_field(payload, carrier)
    return envelope.encode(payload, carrier, text=isinstance(payload, str))


@pytest.mark.parametrize("fmt", ["frame", "json"])
@pytest.mark.parametrize("kind", [str, bytes, bytearray])
def test_payload_size_is_what_the_application_gets(fmt: str, kind: type) -> None:
    config = Config.load()
    limit = Limit(10)
    limit.settle(config, fmt)  # type: ignore[arg-type]
    body = '{"k":"ü"}'
    message = _enveloped(body if kind is str else body.encode(), fmt)
    if kind is bytearray:
        message = bytearray(message)  # type: ignore[arg-type]
    assert limit.payload_size(message) == len(body.encode())
    assert limit.wire is wire_for(config, fmt)  # type: ignore[arg-type]


def test_without_an_envelope_the_whole_message_counts() -> None:
    limit = Limit(10)
    looks = envelope.encode(b"x", {"traceparent": TRACEPARENT}, text=False)
    assert limit.payload_size(looks) == len(looks)  # not in force: nothing is stripped
    limit.settle(Config.load(), None)
    assert limit.wire is None
    assert limit.payload_size("é") == 2


@pytest.mark.parametrize("inclusive", [False, True])
def test_exceeded_at_the_limit_follows_the_library_rule(inclusive: bool) -> None:
    limit = Limit(8, inclusive=inclusive)
    limit.settle(Config.load(), "frame")
    assert limit.exceeded(_enveloped(b"1234567")) is None
    assert limit.exceeded(_enveloped(b"12345678")) == (8 if inclusive else None)
    assert limit.exceeded(_enveloped(b"123456789")) == 9
    assert limit.exceeded(b"1234567") is None  # a bare frame shorter than the limit: not even measured
    assert limit.exceeded(b"12345678") == (8 if inclusive else None)  # a bare frame on an enveloped connection
    assert limit.exceeded(_enveloped("ü" * 4)) == (8 if inclusive else None)  # UTF-8 bytes, not characters
    assert limit.exceeded(_enveloped("ü" * 5)) == 10
    assert limit.exceeded("ab") is None
    assert limit.exceeded(memoryview(b"123456789")) == 9
    assert limit.exceeded(12345678) is None  # not a message


def test_payload_size_never_raises() -> None:
    limit = Limit(1)
    limit.settle(Config.load(), "frame")
    assert limit.payload_size("\ud800" * 3) == 9  # a lone surrogate counts as its surrogatepass bytes
