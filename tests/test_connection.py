"""ConnectionTracer round trips in memory: a client and a server tracer talking without sockets."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from opentelemetry import baggage, context as otel_context
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode

from tests.conftest import Telemetry
from tests.tracers import Metered, connect
from wstrace import envelope as codec
from wstrace._replies import NOTHING_TO_END
from wstrace._wire import SPLIT_AT, Parts
from wstrace.streams import gap_bucket


@pytest.mark.parametrize("fmt", ["frame", "json"])
def test_message_context_round_trip(telemetry: Telemetry, fmt: str) -> None:
    """A client send continues on the server receive through either envelope format, with baggage."""
    c, s = connect(telemetry, client_options={"envelope_format": fmt})
    assert s.envelope == fmt
    token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        wire, handle = c.send_start('{"ask":"hi"}')
        c.send_end(handle)
    finally:
        otel_context.detach(token)
    assert wire != '{"ask":"hi"}'
    payload = s.received(wire)
    assert payload == '{"ask":"hi"}'
    assert baggage.get_baggage("tenant") == "acme", "the sender's baggage is current while handling"
    s.receive_done()
    assert baggage.get_baggage("tenant") is None, "receive_done restores the context"
    c.closed(code=1000, initiator="local")  # a run of sends ends with the connection, at its last message
    send = telemetry.one("send /chat")
    receive = telemetry.one("receive /chat")
    assert receive.parent is not None and receive.parent.span_id == send.context.span_id
    assert send.kind is SpanKind.PRODUCER and receive.kind is SpanKind.CONSUMER


def test_trust_link_for_messages_drops_baggage(telemetry: Telemetry) -> None:
    """With trust=link a message's context is linked, not parented, and its baggage is not applied."""
    c, s = connect(telemetry, server_options={"trust": "link"})
    token = otel_context.attach(baggage.set_baggage("user", "mallory"))
    try:
        wire, handle = c.send_start(b"\x00data")
        c.send_end(handle)
    finally:
        otel_context.detach(token)
    assert s.received(wire) == b"\x00data"
    assert baggage.get_baggage("user") is None
    s.receive_done()
    c.closed(code=1000, initiator="local")
    send, receive = telemetry.one("send /chat"), telemetry.one("receive /chat")
    assert receive.parent is None
    assert any(link.context.span_id == send.context.span_id for link in receive.links)


def test_ordinals_count_each_direction(telemetry: Telemetry) -> None:
    """Sent and received messages are numbered separately from 1."""
    c, s = connect(telemetry)
    for text in ("a", "b", "c"):
        wire, handle = c.send_start(text)
        c.send_end(handle)
        s.received(wire)
        s.receive_done()
    _reply, handle = s.send_start("r")
    s.send_end(handle)
    c.closed(code=1000, initiator="local")
    s.closed(code=1000, initiator="remote")
    ordinals = sorted(
        (span.name, span.attributes["websocket.message.ordinal"], span.kind.name)
        for span in telemetry.spans
        if span.kind in (SpanKind.PRODUCER, SpanKind.CONSUMER)
    )
    # The client's three sends are one run: the server receives the first on its own span, then a receive
    # stream of the three, whose ordinal is its first message's.
    assert [o for o in ordinals if o[2] == "CONSUMER"] == [("receive /chat", 1, "CONSUMER")] * 2
    # The client's three sends are one run (its span carries its first message's ordinal); the server's push
    # is a run of its own: message 1 in its direction.
    assert [o[1] for o in ordinals if o[2] == "PRODUCER"] == [1, 1]


def test_oversized_carrier_still_delivers_the_payload(telemetry: Telemetry) -> None:
    """Baggage over the envelope cap is dropped from the frame, never the payload."""
    c, s = connect(telemetry, client_options={"max_envelope_bytes": 200})
    token = otel_context.attach(baggage.set_baggage("big", "x" * 500))
    try:
        wire, handle = c.send_start("payload")
        c.send_end(handle)
    finally:
        otel_context.detach(token)
    assert codec.decode(wire) == codec.Decoded("payload", {})
    assert s.received(wire) == "payload"


def test_foreign_frame_on_negotiated_connection_is_delivered(telemetry: Telemetry) -> None:
    """A frame without the prefix on an enveloped connection (say, from broadcast) arrives unchanged."""
    _, s = connect(telemetry)
    assert s.received("no envelope here") == "no envelope here"
    assert s.received(b"\x1ewt\x01\xff\xff truncated") == b"\x1ewt\x01\xff\xff truncated"


@pytest.mark.parametrize(
    ("code", "initiator", "error"),
    [(1000, "remote", False), (1001, "local", False), (1011, "remote", True), (4000, "local", False)],
)
def test_close_codes(telemetry: Telemetry, code: int, initiator: Any, error: bool) -> None:
    """Close codes are recorded; protocol and server errors mark the close span as an error."""
    _, s = connect(telemetry)
    s.closed(code=code, reason="why", initiator=initiator)
    s.closed(code=1000, initiator="local")  # idempotent
    close = telemetry.one("close /chat")
    assert close.attributes["websocket.close.code"] == code
    assert close.attributes["websocket.close.reason"] == "why"
    assert (close.status.status_code is StatusCode.ERROR) is error


def test_abnormal_close_ends_open_receive_with_error(telemetry: Telemetry) -> None:
    """A dropped connection ends the receive span being handled with an error, and the connection span too."""
    c, s = connect(telemetry, server_options={"model": "connection"})
    wire, handle = c.send_start("work")
    c.send_end(handle)
    s.received(wire)
    s.closed(initiator=None)
    c.closed(initiator=None)  # the client sees the drop too: its run of sends ends with it
    s.receive_done()
    receive = telemetry.one("receive /chat")
    conn = next(x for x in telemetry.named("websocket /chat") if x.attributes["websocket.close.code"] == 1006)
    assert receive.status.status_code is StatusCode.ERROR
    assert conn.status.status_code is StatusCode.ERROR
    assert telemetry.open_spans.names() == []


def test_message_spans_off(telemetry: Telemetry) -> None:
    """message_spans=False keeps handshakes and close but makes no message spans, and still strips envelopes."""
    c, s = connect(telemetry, server_options={"message_spans": False})
    wire, handle = c.send_start("x")
    c.send_end(handle)
    assert s.received(wire) == "x"
    s.receive_done()
    assert [sp.name for sp in telemetry.spans if sp.name.startswith("receive")] == []


def test_no_context_leak_without_receive_done(telemetry: Telemetry) -> None:
    """A receive span attached then ended by close is not detached from a foreign context."""
    c, s = connect(telemetry)
    wire, handle = c.send_start("x")
    c.send_end(handle)
    s.received(wire)
    inner = otel_context.attach(otel_context.set_value("app", 1))  # the app attached something since
    s.receive_done()
    assert otel_context.get_value("app") == 1, "our stale token did not roll back the app's context"
    otel_context.detach(inner)
    assert telemetry.one("receive /chat").end_time is not None, "the span itself was ended"


def test_message_spans_off_still_carries_the_current_context(telemetry: Telemetry) -> None:
    """With message spans off, the envelope carries the span current at send, so the trace goes on."""
    c, s = connect(telemetry, client_options={"message_spans": False})
    with telemetry.provider.get_tracer("t").start_as_current_span("user-work") as work:
        wire, handle = c.send_start("x")
        c.send_end(handle)
    assert s.received(wire) == "x"
    s.receive_done()
    receive = telemetry.one("receive /chat")
    assert receive.parent is not None and receive.parent.span_id == work.get_span_context().span_id


# Metrics ----------------------------------------------------------------------


def test_metrics_count_a_sampled_out_connection() -> None:
    """Sampling decides spans, not metrics: a sampled-out connection is counted like any other."""
    telemetry = Telemetry(sampler=ALWAYS_OFF)
    metered = Metered(telemetry)
    metered.round_trips(3)
    assert metered.total("wstrace.connection.active") == 2  # both ends, open
    metered.server.closed(code=1000, initiator="remote")
    metered.client.closed(code=1000, initiator="local")
    assert telemetry.spans == []
    assert metered.total("wstrace.message.count", **{"websocket.message.direction": "sent"}) == 6
    assert metered.total("wstrace.message.count", **{"websocket.message.direction": "received"}) == 6
    assert metered.total("wstrace.message.size") == 2 * sum(len(f"ping {i}") + len(f"pong {i}") for i in range(3))
    assert metered.total("wstrace.handshake.duration") == 2
    assert metered.total("wstrace.connection.active") == 0
    assert metered.total("wstrace.connection.close.count", **{"websocket.close.code": 1000}) == 2


def test_every_collection_sees_every_message(telemetry: Telemetry) -> None:
    """A quiet connection's messages are counted as they go, not when a batch fills or the connection closes."""
    metered = Metered(telemetry)
    metered.round_trips(1)
    assert metered.total("wstrace.message.count") == 4
    metered.round_trips(2)
    assert metered.total("wstrace.message.count") == 12
    # Replies of several chunks are counted chunk by chunk too, while their stream is still open.
    wire, handle = metered.client.send_start("stream please")
    metered.client.send_end(handle)
    metered.server.received(wire)
    for chunk in ("a", "b", "c"):
        metered.server.send_end(metered.server.send_start(chunk)[1])
    assert metered.total("wstrace.message.count", **{"websocket.message.direction": "sent"}) == 6 + 1 + 3


def test_a_streams_chunks_are_counted_once_by_type_while_open_and_after_it_ends(telemetry: Telemetry) -> None:
    """A reply stream counts its chunks itself (the hot path takes no lock): every collection sees them exactly
    once, by type, before and after the stream ends, with a binary chunk in a text stream counted as binary."""
    metered = Metered(telemetry)
    wire, handle = metered.client.send_start("stream please")
    metered.client.send_end(handle)
    metered.server.received(wire)
    for chunk in ("one", b"\x00\x01", "three"):
        metered.server.send_end(metered.server.send_start(chunk)[1])

    def sent() -> tuple[int, int, int, int]:
        return (
            metered.total(
                "wstrace.message.count", **{"websocket.message.direction": "sent", "websocket.message.type": "text"}
            ),
            metered.total(
                "wstrace.message.count", **{"websocket.message.direction": "sent", "websocket.message.type": "binary"}
            ),
            metered.total(
                "wstrace.message.size", **{"websocket.message.direction": "sent", "websocket.message.type": "text"}
            ),
            metered.total(
                "wstrace.message.size", **{"websocket.message.direction": "sent", "websocket.message.type": "binary"}
            ),
        )

    expected = (1 + 2, 1, len("stream please") + len("one") + len("three"), 2)
    assert sent() == expected  # the stream is open: its chunks so far
    assert sent() == expected  # a second collection sees the same, not twice as many
    metered.server.receive_done()  # the handler is done: its reply stream ends
    assert telemetry.one("send /chat").attributes["wstrace.stream.chunk_count"] == 3
    assert sent() == expected  # folded into the route's counts, once
    metered.server.closed(code=1000, initiator="remote")
    assert sent() == expected


def test_close_metric_agrees_with_the_close_span(telemetry: Telemetry) -> None:
    """An end that drops the connection on purpose, without a close frame, has no close code in span or metric."""
    metered = Metered(telemetry)
    metered.server.closed(local_end=True)
    close = telemetry.one("close /chat")
    assert "websocket.close.code" not in close.attributes
    assert close.attributes["websocket.close.initiator"] == "local"
    assert close.status.status_code is StatusCode.UNSET
    (point,) = metered.points("wstrace.connection.close.count")
    assert "websocket.close.code" not in point.attributes
    assert point.attributes["websocket.side"] == "server"
    # The peer saw the TCP connection drop: 1006 in both of its records.
    metered.client.closed()
    codes = {p.attributes.get("websocket.close.code") for p in metered.points("wstrace.connection.close.count")}
    assert codes == {None, 1006}
    assert {s.attributes.get("websocket.close.code") for s in telemetry.named("close /chat")} == {None, 1006}


# Robustness -------------------------------------------------------------------


def test_receive_done_from_another_task_does_not_log_a_detach_failure(
    telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    """A client whose next recv() runs in a task created while the last message was current (python-socketio's
    AsyncClient does this) detaches nothing it did not attach: no "Failed to detach context" error."""

    async def scenario() -> None:
        c, s = connect(telemetry)
        wire, handle = s.send_start("pushed")
        s.send_end(handle)
        c.received(wire)  # attached in this task

        async def next_recv() -> None:
            c.receive_done()  # another task, which inherited the context as it was
            wire, handle = s.send_start("second")
            s.send_end(handle)
            c.received(wire)
            c.receive_done()

        await asyncio.create_task(next_recv())
        c.closed(code=1000, initiator="local")
        s.closed(code=1000, initiator="remote")

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    assert len(telemetry.named("receive /chat")) == 2
    assert telemetry.open_spans.names() == []


def test_a_message_sent_as_fragments_is_one_message_of_its_whole_size(telemetry: Telemetry) -> None:
    """send_start(fragment=True) takes the first fragment; send_end(size=) gives the span and the byte count the
    whole message's size. The envelope goes in front of the first fragment, so the peer gets the joined message
    with the sender's context."""
    metered = Metered(telemetry, streams=False)
    c, s = metered.client, metered.server
    first, handle = c.send_start("ab", fragment=True)
    assert first.endswith("ab") and first != "ab"
    c.send_end(handle, size=6)
    assert s.received(first + "cd" + "ef") == "abcdef"
    s.receive_done()
    send, receive = telemetry.one("send /chat"), telemetry.one("receive /chat")
    assert receive.parent is not None and receive.parent.span_id == send.context.span_id
    assert send.attributes["messaging.message.body.size"] == 6
    assert receive.attributes["messaging.message.body.size"] == 6
    assert metered.total("wstrace.message.count", **{"websocket.message.direction": "sent"}) == 1
    assert metered.total("wstrace.message.size", **{"websocket.message.direction": "sent"}) == 6
    assert metered.total("wstrace.message.size", **{"websocket.message.direction": "received"}) == 6


def test_a_large_first_fragment_comes_back_after_its_prefix(telemetry: Telemetry) -> None:
    """With split=True a large first fragment (or a large message) is not copied behind the prefix."""
    c, s = connect(telemetry, client_options={"streams": False})
    big = b"\x00" * SPLIT_AT
    parts, handle = c.send_start(big, split=True, fragment=True)
    assert type(parts) is Parts and parts[1] is big
    c.send_end(handle, size=len(big) + 3)
    assert s.received(parts[0] + big + b"end") == big + b"end"
    s.receive_done()
    assert telemetry.one("send /chat").attributes["messaging.message.body.size"] == len(big) + 3
    whole, handle = c.send_start(big, split=True)  # a whole message: the handle needs no size
    assert type(whole) is Parts and whole[1] is big
    c.send_end(handle)
    small, handle = c.send_start(b"small", split=True)
    assert s.received(small) == b"small"
    c.send_end(handle)


def test_a_message_sent_as_fragments_counts_whole_in_its_stream(telemetry: Telemetry) -> None:
    """A reply sent as fragments is one chunk of the reply stream, of the whole message's size; so is a run's."""
    metered = Metered(telemetry)
    c, s = metered.client, metered.server
    wire, handle = c.send_start("quest", fragment=True)
    c.send_end(handle, size=len("question"))
    assert s.received(wire + "ion") == "question"
    first, handle = s.send_start("ab", fragment=True)
    s.send_end(handle, size=4)
    s.send_end(s.send_start("ef")[1])
    s.receive_done()
    assert c.received(first + "cd") == "abcd"
    c.receive_done()
    reply = next(x for x in telemetry.named("send /chat") if x.attributes.get("wstrace.stream.chunk_count") == 2)
    assert reply.attributes["wstrace.stream.size"] == 6
    assert metered.total("wstrace.message.size", **{"websocket.message.direction": "sent"}) == len("question") + 6
    c.closed(code=1000, initiator="local")
    (run,) = [x for x in telemetry.named("send /chat") if x is not reply]
    assert run.attributes["wstrace.stream.size"] == len("question")


def test_a_failed_fragmented_message_records_its_error(telemetry: Telemetry) -> None:
    """The library raised mid-message: its span records the error; as a chunk, its stream ends with it."""
    c, _ = connect(telemetry, client_options={"streams": False})
    _, handle = c.send_start("ab", fragment=True)
    c.send_end(handle, ValueError("fragment 2 failed"), size=3)
    _, handle = c.send_start("cd", fragment=True)
    c.send_end(handle, size=2)  # one fragment only
    send, single = telemetry.named("send /chat")
    assert single.attributes["messaging.message.body.size"] == 2
    assert send.status.status_code is StatusCode.ERROR and send.attributes["error.type"] == "ValueError"
    assert send.attributes["messaging.message.body.size"] == 3
    c2, _ = connect(telemetry)  # streams on: the client's run is the stream
    _, handle = c2.send_start("ab", fragment=True)
    c2.send_end(handle, ValueError("broken"), size=3)
    run = [x for x in telemetry.named("send /chat") if x not in (send, single)]
    assert len(run) == 1 and run[0].status.status_code is StatusCode.ERROR
    assert run[0].attributes["wstrace.stream.size"] == 3


def test_a_suppressed_fragmented_message_is_not_counted(telemetry: Telemetry) -> None:
    """Inside suppress_instrumentation() the envelope still goes, and nothing is counted or recorded."""
    metered = Metered(telemetry, streams=False)
    token = otel_context.attach(otel_context.set_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY, True))
    try:
        wire, handle = metered.client.send_start("ab", fragment=True)
    finally:
        otel_context.detach(token)
    metered.client.send_end(handle, size=100)
    assert wire != "ab" and metered.server.received(wire) == "ab"
    assert metered.total("wstrace.message.size", **{"websocket.message.direction": "sent"}) == 0
    assert telemetry.named("send /chat") == []


def test_hand_off_moves_a_messages_context_to_the_task_that_handles_it(telemetry: Telemetry) -> None:
    """``hand_off`` detaches the receive context where ``received`` attached it and returns it: attached in
    another task, the reply sent there is the message's reply stream; ``receive_done`` still ends the span."""
    c, s = connect(telemetry)
    wire, handle = c.send_start("question")
    c.send_end(handle)

    async def scenario() -> None:
        async def receiving() -> Any:
            s.received(wire)
            ctx = s.hand_off()
            assert ctx is not None and otel_context.get_current() is not ctx, "detached in the receiving task"
            return ctx

        ctx = await asyncio.create_task(receiving())
        assert ctx is not None
        token = otel_context.attach(ctx)
        try:
            _reply, h = s.send_start("answer")
            s.send_end(h)
        finally:
            otel_context.detach(token)
        del ctx
        assert s.hand_off() is None, "handed off once"
        s.receive_done()

    asyncio.run(scenario())
    s.closed(code=1000, initiator="remote")
    receive = next(x for x in telemetry.named("receive /chat") if x.kind is SpanKind.CONSUMER)
    replies = [x for x in telemetry.named("send /chat") if x.parent and x.parent.span_id == receive.context.span_id]
    assert len(replies) == 1, "the answer is not the handed-off message's reply"


# The lane: the next chunk of the stream under way, under the same context object ---------------------------------


def test_the_lane_frames_and_counts_chunks_as_the_full_path_does(telemetry: Telemetry) -> None:
    """From a reply stream's third chunk ``send_start`` takes its short way; the peer reads the same payloads in
    the one stream's trace, and the stream counts every chunk, of either type, once."""
    c, s = connect(telemetry, {"envelope": "always"}, {"envelope": "always"})
    s.received(c.send_start("stream please")[0])
    chunks: list[Any] = [f"token {n}" for n in range(6)] + [b"\x00\x01", "token 6"]
    frames = [s.send_start(chunk)[0] for chunk in chunks]
    assert s._replies is not None and s._replies.lane is not None  # the short way was open
    stats = s._replies.lane.stats
    # Every gap is in the histogram, the largest in the top bucket (the lane writes out StreamStats.add_gap).
    assert sum(stats.gaps.values()) == len(chunks) - 1 and max(stats.gaps) == gap_bucket(stats.max_gap_ns)
    s.receive_done()
    assert s._replies.lane is None  # gone with its stream
    stream = telemetry.one("send /chat", **{"wstrace.stream.chunk_count": len(chunks)})
    assert stream.attributes["wstrace.stream.size"] == sum(len(chunk) for chunk in chunks)
    assert [c.received(frame) for frame in frames] == chunks
    c.closed(code=1000, initiator="local")
    received = [r for r in telemetry.named("receive /chat") if r.parent and r.parent.span_id == stream.context.span_id]
    assert received, "the client's receiving end continues the stream's trace"


def test_the_lane_is_not_taken_after_the_close_or_under_suppression(telemetry: Telemetry) -> None:
    metered = Metered(telemetry)
    metered.server.received(metered.client.send_start("stream please")[0])
    for n in range(4):
        metered.server.send_start(f"token {n}")
    suppressed = otel_context.attach(otel_context.set_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY, True))
    try:
        quiet, handle = metered.server.send_start("quiet")
    finally:
        otel_context.detach(suppressed)
    assert handle is NOTHING_TO_END and metered.client.received(quiet) == "quiet"
    metered.server.closed(code=1000, initiator="remote")
    late, handle = metered.server.send_start("late")
    assert handle is NOTHING_TO_END and metered.client.received(late) == "late"
    telemetry.one("send /chat", **{"wstrace.stream.chunk_count": 4})
    sent = metered.total("wstrace.message.count", **{"websocket.message.direction": "sent"})
    assert sent == 1 + 4  # the client's request and the four chunks: neither the suppressed one nor the late one


def test_the_lane_keeps_neither_the_message_nor_its_context_alive(telemetry: Telemetry) -> None:
    """The lane refers to its context weakly: when the handler is done, the last reference to the message goes and
    its reply stream ends there (``Inbound.__del__``), lane or not."""
    c, s = connect(telemetry)
    s.received(c.send_start("stream please")[0])
    for n in range(4):
        s.send_start(f"token {n}")
    lane = s._replies.lane
    assert lane is not None and lane.ctx() is otel_context.get_current()
    s.receive_done()
    assert lane.ctx() is None
    telemetry.one("send /chat", **{"wstrace.stream.chunk_count": 4})  # ended: exported


def test_a_message_sent_as_fragments_mid_stream_counts_whole_while_the_lane_is_open(telemetry: Telemetry) -> None:
    metered = Metered(telemetry)
    metered.server.received(metered.client.send_start("stream please")[0])
    for n in range(4):
        metered.server.send_start(f"t{n}")
    assert metered.server._replies is not None and metered.server._replies.lane is not None
    _, handle = metered.server.send_start("ab", fragment=True)
    metered.server.send_end(handle, size=len("abcd"))
    metered.server.send_start("t4")
    metered.server.receive_done()
    stream = telemetry.one("send /chat", **{"wstrace.stream.chunk_count": 6})
    assert stream.attributes["wstrace.stream.size"] == 5 * len("t0") + len("abcd")


def test_a_chunk_whose_envelope_fails_on_the_lane_still_goes(
    telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Fault injection: if putting a chunk in its envelope fails on the short way, the payload still goes, in an
    empty envelope, and the failure is logged, as on the full path; nothing raises into the application."""
    c, s = connect(telemetry, {"envelope": "always"}, {"envelope": "always"})
    s.received(c.send_start("stream please")[0])
    for n in range(4):
        s.send_start(b"audio %d" % n)  # a binary stream: its chunks are framed by Wire.in_stream
    assert s._replies is not None and s._replies.lane is not None

    def broken(*_args: Any) -> Any:
        raise RuntimeError("injected")

    monkeypatch.setattr("wstrace._wire.Wire.in_stream", broken)
    monkeypatch.setattr("wstrace._log._warned", set())  # logged once per process: another test may have been first
    with caplog.at_level(logging.WARNING, logger="wstrace"):
        frame, handle = s.send_start(b"still goes")
    assert handle is NOTHING_TO_END
    assert c.received(frame) == b"still goes"
    assert "injected" in caplog.text
