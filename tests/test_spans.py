"""Connection spans (wstrace._spans): names per route, message attributes, errors, parents and links, bodies."""

from __future__ import annotations

import array
import base64
from typing import Any, Optional

import pytest
from opentelemetry import baggage, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from tests.conftest import Telemetry
from wstrace import propagation
from wstrace._spans import (
    IN,
    OUT,
    ConnectionSpans,
    Route,
    captured,
    link,
    message_attributes,
    receive_parent,
    record_error,
    route,
    size,
)
from wstrace.config import Config


SESSION = "0123456789abcdef0123456789abcdef"
SENDER_TRACE, SENDER_SPAN = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331
SENDER = {"traceparent": f"00-{SENDER_TRACE:032x}-{SENDER_SPAN:016x}-01", "baggage": "user=alice"}


def _sender() -> tuple[Context, trace.SpanContext]:
    ctx = propagation.extract(dict(SENDER))
    span_context = propagation.remote_span_context(ctx)
    assert span_context is not None
    return ctx, span_context


def _kinds(span: ReadableSpan) -> list[tuple[int, Optional[str]]]:
    return [(lk.context.span_id, (lk.attributes or {}).get("wstrace.link.kind")) for lk in span.links]


# Names per route -------------------------------------------------------------------------------


def test_span_names_with_a_route() -> None:
    names = route("/chat")
    assert (names.handshake, names.send, names.receive, names.close, names.connection) == (
        "GET /chat",
        "send /chat",
        "receive /chat",
        "close /chat",
        "websocket /chat",
    )
    assert names.stream_metrics == {
        "outbound": {"http.route": "/chat", "wstrace.stream.direction": "outbound"},
        "inbound": {"http.route": "/chat", "wstrace.stream.direction": "inbound"},
    }


@pytest.mark.parametrize("name", [None, ""])
def test_span_names_without_a_route(name: Optional[str]) -> None:
    names = route(name)
    assert (names.handshake, names.send, names.receive, names.close, names.connection) == (
        "GET",
        "send",
        "receive",
        "close",
        "websocket",
    )
    assert names.stream_metrics["outbound"] == {"wstrace.stream.direction": "outbound"}
    assert all("http.route" not in attributes for attributes in names.message_metrics)


def test_message_metric_attributes_by_slot() -> None:
    assert [(a["websocket.message.direction"], a["websocket.message.type"]) for a in route("/m").message_metrics] == [
        (OUT, "binary"),
        (OUT, "text"),
        (IN, "binary"),
        (IN, "text"),
    ]
    assert all(a["http.route"] == "/m" for a in route("/m").message_metrics)


def test_routes_are_cached_and_stay_right_beyond_the_cap() -> None:
    assert route("/cached") is route("/cached")
    made = {f"/r{n}": route(f"/r{n}") for n in range(1500)}  # a user's route function gone wild
    for name, names in made.items():
        assert names.send == f"send {name}"
    assert isinstance(route("/cached"), Route) and route("/cached").receive == "receive /cached"


# Attributes, links, errors ---------------------------------------------------------------------


def test_message_attributes() -> None:
    assert message_attributes(SESSION, True, 3, 11) == {
        "network.protocol.name": "websocket",
        "websocket.session.id": SESSION,
        "websocket.message.type": "text",
        "websocket.message.ordinal": 3,
        "messaging.message.body.size": 11,
    }
    binary = message_attributes(SESSION, False, 1, None)
    assert binary["websocket.message.type"] == "binary"
    assert "messaging.message.body.size" not in binary


def test_links_carry_their_kind() -> None:
    _, span_context = _sender()
    for kind in ("handshake", "creation", "remote"):
        made = link(span_context, kind)
        assert made.context is span_context
        assert dict(made.attributes or {}) == {"wstrace.link.kind": kind}


class Outer:
    class HandlerError(Exception):
        pass


def test_record_error_with_an_exception(telemetry: Telemetry) -> None:
    span = telemetry.provider.get_tracer("t").start_span("receive /chat")
    record_error(span, Outer.HandlerError("handler failed"))
    span.end()
    [done] = telemetry.spans
    assert done.status.status_code is StatusCode.ERROR
    assert done.status.description == "handler failed"
    assert (done.attributes or {})["error.type"] == "Outer.HandlerError"
    [event] = done.events
    assert event.name == "exception"
    assert (event.attributes or {})["exception.message"] == "handler failed"


def test_record_error_with_a_string_and_a_description(telemetry: Telemetry) -> None:
    tracer = telemetry.provider.get_tracer("t")
    span = tracer.start_span("close")
    record_error(span, "1006", "WebSocket closed with code 1006")
    span.end()
    other = tracer.start_span("stream")
    record_error(other, "close 1011")
    other.end()
    close, stream = telemetry.spans
    assert (close.attributes or {})["error.type"] == "1006"
    assert close.status.status_code is StatusCode.ERROR
    assert close.status.description == "WebSocket closed with code 1006"
    assert not close.events  # no exception to record
    assert stream.status.description == "close 1011"


# Parents of inbound spans ------------------------------------------------------------------------


HANDSHAKE = trace.SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=trace.TraceFlags(1))


def test_receive_parent_connection_model() -> None:
    connection_ctx = trace.set_span_in_context(trace.NonRecordingSpan(HANDSHAKE))
    ambient = Context()
    remote, remote_span = _sender()
    parent, base, links = receive_parent("parent", connection_ctx, (), remote, remote_span, ambient, None)
    assert parent is connection_ctx and base is ambient
    [creation] = links
    assert creation.context is remote_span and dict(creation.attributes or {}) == {"wstrace.link.kind": "creation"}
    assert receive_parent("link", connection_ctx, (), None, None, ambient, None) == (connection_ctx, ambient, ())


def test_receive_parent_message_model() -> None:
    handshake_links = (link(HANDSHAKE, "handshake"),)
    ambient = Context()
    remote, remote_span = _sender()
    # trust=parent: the sender's context is parent and attach base (it brings the sender's baggage).
    assert receive_parent("parent", None, handshake_links, remote, remote_span, ambient, None) == (
        remote,
        remote,
        handshake_links,
    )
    # trust=link: a root, linked to the handshake and to the sender.
    parent, base, links = receive_parent("link", None, handshake_links, remote, remote_span, ambient, None)
    assert trace.get_current_span(parent).get_span_context().is_valid is False and base is ambient
    assert [lk.context for lk in links] == [HANDSHAKE, remote_span]
    assert (links[1].attributes or {})["wstrace.link.kind"] == "remote"
    # No sender context: a root, or the child of the request a client's reply answers.
    fallback = trace.set_span_in_context(trace.NonRecordingSpan(HANDSHAKE))
    assert receive_parent("parent", None, handshake_links, None, None, ambient, fallback) == (
        fallback,
        ambient,
        handshake_links,
    )
    parent, base, links = receive_parent("ignore", None, handshake_links, None, None, ambient, None)
    assert not trace.get_current_span(parent).get_span_context().is_valid and links == handshake_links


# ConnectionSpans with a real SDK -----------------------------------------------------------------


def _spans(telemetry: Telemetry, model: str = "message", trust: str = "parent", **config: Any) -> ConnectionSpans:
    spans = ConnectionSpans(
        telemetry.provider.get_tracer("wstrace"),
        Config.load(model=model, trust=trust, **config),
        route("/chat"),
        SESSION,
    )
    handshake = spans.start_handshake(Context(), (), {}, SpanKind.SERVER)
    assert spans.handshake == handshake.get_span_context()
    spans.opened(handshake, 101, None, None)
    return spans


def _handshake_id(telemetry: Telemetry) -> int:
    return telemetry.one("GET /chat").context.span_id


@pytest.mark.parametrize("trust", ["parent", "link", "ignore"])
def test_receive_in_the_message_model_under_every_trust_policy(telemetry: Telemetry, trust: str) -> None:
    spans = _spans(telemetry, trust=trust)
    # The caller gives no sender context under ignore (wstrace._handshake.remote).
    sender = _sender() if trust != "ignore" else (None, None)
    app = telemetry.provider.get_tracer("app").start_span("app work")
    ambient = trace.set_span_in_context(app)  # whatever the application has current
    span, base = spans.receive("hi", True, 1, 2, sender, ambient)
    span.end()
    app.end()
    done = telemetry.one("receive /chat")
    assert done.kind is SpanKind.CONSUMER
    assert (done.attributes or {})["websocket.message.ordinal"] == 1
    handshake = _handshake_id(telemetry)
    if trust == "parent":
        assert done.parent is not None and done.parent.span_id == SENDER_SPAN
        assert done.context.trace_id == SENDER_TRACE
        assert _kinds(done) == [(handshake, "handshake")]
        assert baggage.get_all(base) == {"user": "alice"}
    else:
        assert done.parent is None  # a root, never the application's ambient span
        expected = [(handshake, "handshake")] + ([(SENDER_SPAN, "remote")] if trust == "link" else [])
        assert _kinds(done) == expected
        assert base is ambient
        assert baggage.get_all(base) == {}


@pytest.mark.parametrize("trust", ["parent", "link", "ignore"])
def test_receive_in_the_connection_model_under_every_trust_policy(telemetry: Telemetry, trust: str) -> None:
    spans = _spans(telemetry, model="connection", trust=trust)
    sender = _sender() if trust != "ignore" else (None, None)
    span, _ = spans.receive(b"x", False, 1, 1, sender, Context())
    span.end()
    assert spans.connection is not None
    spans.connection.end()
    done = telemetry.one("receive /chat")
    connection = telemetry.one("websocket /chat")
    assert done.parent is not None and done.parent.span_id == connection.context.span_id
    assert _kinds(done) == ([] if trust == "ignore" else [(SENDER_SPAN, "creation")])


def test_a_clients_reply_stream_answers_its_request(telemetry: Telemetry) -> None:
    spans = _spans(telemetry)
    request = spans.send("q", True, 1, 1, Context())
    span, _ = spans.receive("a", True, 1, None, (None, None), Context(), trace.set_span_in_context(request), 123)
    span.end()
    request.end()
    reply = telemetry.one("receive /chat")
    assert reply.parent is not None and reply.parent.span_id == request.get_span_context().span_id
    assert reply.start_time == 123
    assert "messaging.message.body.size" not in (reply.attributes or {})


def test_send_in_the_message_model_takes_the_current_context(telemetry: Telemetry) -> None:
    spans = _spans(telemetry)
    app = telemetry.provider.get_tracer("app").start_span("handler")
    push = spans.send("push", True, 1, 4, Context())
    reply = spans.send(b"reply", False, 2, 5, trace.set_span_in_context(app))
    for span in (push, reply, app):
        span.end()
    first, second = telemetry.named("send /chat")
    assert first.parent is None and second.parent is not None
    assert second.parent.span_id == app.get_span_context().span_id
    assert first.kind is SpanKind.PRODUCER
    assert _kinds(first) == _kinds(second) == [(_handshake_id(telemetry), "handshake")]
    assert (second.attributes or {})["messaging.message.body.size"] == 5


def test_send_in_the_connection_model_hangs_off_the_connection_unless_in_its_trace(telemetry: Telemetry) -> None:
    spans = _spans(telemetry, model="connection")
    assert spans.connection_ctx is not None
    other = telemetry.provider.get_tracer("app").start_span("unrelated", Context())
    inside = telemetry.provider.get_tracer("app").start_span("in the connection", spans.connection_ctx)
    elsewhere = spans.send("a", True, 1, 1, trace.set_span_in_context(other))
    nested = spans.send("b", True, 2, 1, trace.set_span_in_context(inside))
    for span in (elsewhere, nested, other, inside):
        span.end()
    connection_id = spans.connection.get_span_context().span_id  # type: ignore[union-attr]
    first, second = telemetry.named("send /chat")
    assert first.parent is not None and first.parent.span_id == connection_id
    assert second.parent is not None and second.parent.span_id == inside.get_span_context().span_id
    assert first.links == () or list(first.links) == []


@pytest.mark.parametrize("model", ["message", "connection"])
def test_reply_stream_span(telemetry: Telemetry, model: str) -> None:
    spans = _spans(telemetry, model=model)
    inbound, _ = spans.receive("q", True, 1, 1, (None, None), Context())
    span = spans.reply(trace.set_span_in_context(inbound), "first chunk", True, 1, 1_000)
    span.end()
    inbound.end()
    reply = telemetry.one("send /chat")
    assert reply.parent is not None and reply.parent.span_id == inbound.get_span_context().span_id
    assert reply.start_time == 1_000
    assert _kinds(reply) == ([(_handshake_id(telemetry), "handshake")] if model == "message" else [])


def test_chunk_spans(telemetry: Telemetry) -> None:
    spans = _spans(telemetry)
    stream = spans.tracer.start_span("stream")
    _, sender = _sender()
    out = spans.chunk(SpanKind.PRODUCER, stream, "tok", True, 2, 3, None)
    inn = spans.chunk(SpanKind.CONSUMER, stream, b"pcm", False, 3, 3, sender)
    for span in (out, inn, stream):
        span.end()
    sent, received = telemetry.one("send /chat"), telemetry.one("receive /chat")
    for chunk in (sent, received):
        assert chunk.parent is not None and chunk.parent.span_id == stream.get_span_context().span_id
    assert sent.kind is SpanKind.PRODUCER and received.kind is SpanKind.CONSUMER
    assert _kinds(sent) == [] and _kinds(received) == [(SENDER_SPAN, "creation")]


def test_close_in_the_message_model_is_a_linked_root(telemetry: Telemetry) -> None:
    spans = _spans(telemetry)
    app = telemetry.provider.get_tracer("app").start_span("ambient")
    with trace.use_span(app, end_on_exit=True):
        spans.close(1006, "gone", None, "1006")
    done = telemetry.one("close /chat")
    assert done.parent is None
    assert _kinds(done) == [(_handshake_id(telemetry), "handshake")]
    assert dict(done.attributes or {}) == {
        "network.protocol.name": "websocket",
        "websocket.session.id": SESSION,
        "websocket.close.initiator": "none",
        "websocket.close.code": 1006,
        "websocket.close.reason": "gone",
        "error.type": "1006",
    }
    assert done.status.status_code is StatusCode.ERROR
    assert done.status.description == "WebSocket closed with code 1006: gone"


def test_a_normal_close_and_one_without_code(telemetry: Telemetry) -> None:
    spans = _spans(telemetry)
    spans.close(1000, "", "local", None)
    spans.close(None, "", "local", RuntimeError("handler"))
    normal, dropped = telemetry.named("close /chat")
    assert normal.status.status_code is StatusCode.UNSET
    assert (normal.attributes or {})["websocket.close.initiator"] == "local"
    assert "websocket.close.reason" not in (normal.attributes or {})
    assert "websocket.close.code" not in (dropped.attributes or {})
    assert dropped.status.description == "WebSocket closed with code None"
    assert (dropped.attributes or {})["error.type"] == "RuntimeError"


def test_close_in_the_connection_model_is_recorded_on_the_connection_span(telemetry: Telemetry) -> None:
    spans = _spans(telemetry, model="connection")
    spans.close(1011, "oops", "remote", "1011")
    assert not telemetry.named("close /chat")
    done = telemetry.one("websocket /chat")
    assert (done.attributes or {})["websocket.close.code"] == 1011
    assert (done.attributes or {})["websocket.close.initiator"] == "remote"
    assert done.status.status_code is StatusCode.ERROR


def test_message_spans_carry_the_captured_body(telemetry: Telemetry) -> None:
    spans = _spans(telemetry, capture_payload=True, capture_payload_bytes=4)
    spans.send("hello", True, 1, 5, Context()).end()
    spans.receive(b"\x00\x01\x02", False, 1, 3, (None, None), Context())[0].end()
    sent, received = telemetry.one("send /chat"), telemetry.one("receive /chat")
    assert (sent.attributes or {})["websocket.message.body"] == "hell"
    assert (sent.attributes or {})["websocket.message.body_truncated"] is True
    assert (received.attributes or {})["websocket.message.body"] == base64.b64encode(b"\x00\x01\x02").decode()
    assert (received.attributes or {})["websocket.message.body_truncated"] is False


def test_bodies_are_not_captured_by_default(telemetry: Telemetry) -> None:
    spans = _spans(telemetry)
    spans.send("secret", True, 1, 6, Context()).end()
    assert "websocket.message.body" not in (telemetry.one("send /chat").attributes or {})


# Sizes and bodies --------------------------------------------------------------------------------


def test_size() -> None:
    assert size("ascii") == 5
    assert size("café") == 5  # UTF-8 bytes
    assert size("\udc80") == 3  # a lone surrogate still has a size
    assert size(b"abc") == 3
    assert size(bytearray(4)) == 4
    assert size(memoryview(array.array("i", [1, 2, 3]))) == 3 * array.array("i").itemsize
    assert size(object()) is None
    assert size(None) is None


def _config(**overrides: Any) -> Config:
    return Config.load(capture_payload=True, **overrides)


BODY, TRUNCATED = "websocket.message.body", "websocket.message.body_truncated"


@pytest.mark.parametrize(
    ("payload", "is_text", "cap", "body", "truncated"),
    [
        ("hello", True, 256, "hello", False),
        ("hello", True, 3, "hel", True),
        ("é" * 10, True, 5, "éé", True),  # a character the cut would split is left out
        ("éé", True, 4, "éé", False),
        ("éé", True, 3, "é", True),
        (b"caf\xc3\xa9", True, 256, "café", False),  # a text frame given as bytes
        (b"bad \xff utf-8", True, 256, "bad \ufffd utf-8", False),
        ("lone \udc80", True, 256, "lone \ufffd\ufffd\ufffd", False),
        (b"\x00\xff", False, 256, base64.b64encode(b"\x00\xff").decode(), False),
        (bytearray(b"abcdef"), False, 2, base64.b64encode(b"ab").decode(), True),
        (memoryview(b"abcdef"), False, 6, base64.b64encode(b"abcdef").decode(), False),
        (memoryview(b"abcdef"), True, 3, "abc", True),
        ("text as binary", False, 4, base64.b64encode(b"text").decode(), True),
    ],
)
def test_captured_bodies(payload: Any, is_text: bool, cap: int, body: str, truncated: bool) -> None:
    assert captured(_config(capture_payload_bytes=cap), payload, is_text) == {BODY: body, TRUNCATED: truncated}


def test_a_redact_hook_decides_what_is_recorded() -> None:
    config = _config(redact=lambda p: "[redacted]" if "password" in p else p)
    assert captured(config, "my password", True) == {BODY: "[redacted]", TRUNCATED: False}
    assert captured(config, "hello", True) == {BODY: "hello", TRUNCATED: False}
    assert captured(_config(redact=lambda p: p[:2]), b"\x01\x02\x03", False) == {BODY: "AQI=", TRUNCATED: False}
    assert captured(_config(redact=lambda p: None), "anything", True) == {}


def test_the_redact_hook_cannot_change_what_is_sent() -> None:
    seen: list[Any] = []

    def redact(payload: Any) -> Any:
        seen.append(type(payload))
        payload[0:1] = b"X"  # would change the application's buffer if it were handed over
        return payload

    buffer = bytearray(b"abc")
    captured(_config(redact=redact), buffer, False)
    assert buffer == bytearray(b"abc")
    assert seen == [bytes]


def test_the_redact_hook_gets_a_copy_of_a_bytearray_or_memoryview() -> None:
    seen: list[Any] = []
    captured(_config(redact=lambda p: seen.append(p) or p), bytearray(b"ab"), False)
    captured(_config(redact=lambda p: seen.append(p) or p), memoryview(b"cd"), False)
    assert [type(p) for p in seen] == [bytes, bytes]


def test_a_redact_hook_that_raises_records_nothing() -> None:
    def boom(payload: Any) -> Any:
        raise ValueError("redactor bug")

    assert captured(_config(redact=boom), "secret", True) == {}  # never the unredacted body


@pytest.mark.parametrize("returned", [42, ["a"], {"k": "v"}, 1.5])
def test_a_redact_hook_returning_the_wrong_type_records_nothing(returned: Any) -> None:
    assert captured(_config(redact=lambda p: returned), "secret", True) == {}


def test_something_that_is_not_a_payload_records_nothing() -> None:
    assert captured(_config(), object(), True) == {}


def test_the_handshake_ends_at_the_101_with_what_was_agreed(telemetry: Telemetry) -> None:
    spans = ConnectionSpans(telemetry.provider.get_tracer("wstrace"), Config.load(), route("/chat"), SESSION)
    span = spans.start_handshake(Context(), (), {"url.path": "/chat"}, SpanKind.SERVER)
    kept = spans.opened(span, 101, "frame", "chat.v2")
    done = telemetry.one("GET /chat")
    assert kept == done.context == spans.handshake
    assert dict(done.attributes or {}) == {
        "url.path": "/chat",
        "http.response.status_code": 101,
        "websocket.envelope": "frame",
        "websocket.session.id": SESSION,
        "websocket.subprotocol": "chat.v2",
    }
    assert spans.connection is None  # the message model has no connection span


def test_wstraces_own_subprotocol_is_not_recorded(telemetry: Telemetry) -> None:
    spans = ConnectionSpans(telemetry.provider.get_tracer("wstrace"), Config.load(), route("/chat"), SESSION)
    spans.opened(spans.start_handshake(Context(), (), {}, SpanKind.SERVER), 101, None, "wstrace.tp.00-abc")
    attributes = dict(telemetry.one("GET /chat").attributes or {})
    assert "websocket.subprotocol" not in attributes and attributes["websocket.envelope"] == "none"


@pytest.mark.parametrize(
    ("client", "status", "error", "failed"),
    [(True, 403, None, True), (False, 403, None, False), (False, 503, None, True), (False, None, OSError("x"), True)],
)
def test_a_failed_handshake_is_an_error_when_it_is_this_ends_fault(
    telemetry: Telemetry, client: bool, status: Any, error: Any, failed: bool
) -> None:
    spans = ConnectionSpans(telemetry.provider.get_tracer("wstrace"), Config.load(), route("/chat"), SESSION)
    spans.failed(spans.start_handshake(Context(), (), {}, SpanKind.CLIENT), client, status, error)
    done = telemetry.one("GET /chat")
    assert (done.status.status_code is StatusCode.ERROR) is failed
    assert (done.attributes or {}).get("http.response.status_code") == status


def test_a_clean_close_that_raised_records_the_exception_only(telemetry: Telemetry) -> None:
    spans = _spans(telemetry)
    spans.close(1000, "", "local", None, RuntimeError("after close"))
    done = telemetry.one("close /chat")
    assert done.status.status_code is StatusCode.UNSET
    assert [event.name for event in done.events] == ["exception"]


def test_a_failing_hook_is_logged_once_with_its_traceback() -> None:
    """In a fresh interpreter (the warning is once per process): a hook that raises is logged once, naming it."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    probe = """
import logging
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind
from wstrace._spans import ConnectionSpans, route
from wstrace.config import Config
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
def broken(*args):
    raise RuntimeError("hook bug")
spans = ConnectionSpans(TracerProvider().get_tracer("t"), Config.load({}, message_hook=broken), route("/c"), "s")
for n in range(3):
    spans.send("x", True, n, 1, Context()).end()
print("sent")
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "sent", done.stderr
    assert done.stderr.count("wstrace: the message_hook failed; tracing continues without it") == 1
    assert "RuntimeError: hook bug" in done.stderr
