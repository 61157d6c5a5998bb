"""``examples/device_uplink.py`` over loopback: a device streams a voice turn under its own span."""

from __future__ import annotations

import asyncio
from types import ModuleType

from opentelemetry.sdk.trace import ReadableSpan

from tests.conftest import Telemetry
from tests.examples import shapes
from tests.examples.shapes import tree
from tests.instrumentation import contract


def load_example() -> ModuleType:
    return shapes.load_example("device_uplink")


def child_of(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return sorted(
        (s for s in spans if contract.parent_id(s) == contract.span_id(parent)), key=lambda s: s.start_time or 0
    )


def test_a_voice_turn_is_one_trace_of_streams(telemetry: Telemetry) -> None:
    """The device's 50 frames and end marker are one run under "voice turn" (51 chunks); the server receives
    them as a span for the first frame plus one receive stream of all 51, answers with a reply stream under
    that receive stream, and the device reads the answer as one receive stream: one trace, no span per frame."""
    example = load_example()
    played = asyncio.run(example.main(telemetry.provider))
    assert played == example.REPLY_CHUNKS * 640
    contract.no_open_spans(telemetry)

    (turn,) = telemetry.named("voice turn")
    spans = [s for s in telemetry.spans if contract.trace_id(s) == contract.trace_id(turn)]
    receive = ("wstrace", "CONSUMER", "receive /voice", ())
    reply = ("wstrace", "PRODUCER", "send /voice", (receive,))
    assert tree(spans) == (
        "device",
        "INTERNAL",
        "voice turn",
        (("wstrace", "PRODUCER", "send /voice", (receive, ("wstrace", "CONSUMER", "receive /voice", (reply,)))),),
    )
    chunks = example.FRAMES + 1  # the frames and the end marker
    uplink_size = example.FRAMES * len(example.FRAME) + len(example.END)

    # The device: one run, child of "voice turn", with no time to first chunk (it answers nothing).
    (uplink,) = child_of(spans, turn)
    assert uplink.attributes["wstrace.stream.chunk_count"] == chunks
    assert uplink.attributes["wstrace.stream.size"] == uplink_size
    assert "wstrace.stream.time_to_first_chunk" not in uplink.attributes

    # The server: a receive span for the first frame, then one receive stream of all 51, dated from the first.
    first, stream = sorted(child_of(spans, uplink), key=lambda s: "wstrace.stream.chunk_count" in s.attributes)
    assert "wstrace.stream.chunk_count" not in first.attributes
    assert first.attributes["messaging.message.body.size"] == len(example.FRAME)
    assert stream.attributes["wstrace.stream.chunk_count"] == chunks
    assert stream.attributes["wstrace.stream.size"] == uplink_size
    # Dated from the first frame's arrival: wstrace reads the monotonic clock as the frame arrives and dates the
    # stream from that reading (converted to wall time), while the first frame's span starts when it is made,
    # so the two agree to well within a frame's interval, not to the nanosecond.
    assert abs((stream.start_time or 0) - (first.start_time or 0)) < 5_000_000, "dated from the first frame"
    assert (stream.end_time or 0) > (first.end_time or 0), "and it counts every frame after it"

    # The server's answer: a reply stream under the receive stream, timed from the end marker's arrival
    # (the end of the user's speech), not from the first frame.
    (answer,) = child_of(spans, stream)
    assert answer.attributes["wstrace.stream.chunk_count"] == example.REPLY_CHUNKS + 1
    ttfc = answer.attributes["wstrace.stream.time_to_first_chunk"]
    uplink_seconds = ((answer.start_time or 0) - (stream.start_time or 0)) / 1e9
    assert 0 < ttfc < uplink_seconds - 0.04, (ttfc, uplink_seconds)

    # The device reads the answer as one receive stream, continuing the server's.
    (heard,) = child_of(spans, answer)
    assert heard.attributes["wstrace.stream.chunk_count"] == example.REPLY_CHUNKS + 1

    # Nothing else: handshakes and closes aside, every message span is in the turn's trace.
    messages = [s for s in telemetry.spans if s.name.startswith(("send", "receive"))]
    assert len(messages) == 5 and all(contract.trace_id(s) == contract.trace_id(turn) for s in messages)
