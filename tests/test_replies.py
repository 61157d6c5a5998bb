"""Reply streams (wstrace._replies): which messages answer which, and when a stream is over."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from typing import Any, Optional

from opentelemetry import context as otel_context, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from tests.conftest import Telemetry
from wstrace._replies import (
    NOTHING_TO_END,
    OWNER,
    REQUEST,
    Fragmented,
    Inbound,
    Replies,
    Request,
    safe_key,
    safe_predicate,
)
from wstrace._spans import ConnectionSpans, route
from wstrace._wire import wire_for
from wstrace.config import Config
from wstrace.streams import StreamRecorder, gap_bucket, wall_ns


IDLE_NS = 5_000_000_000  # stream_idle = 5 s, the default
SEC = 1_000_000_000


def _new(idle_ns: int = IDLE_NS) -> Replies:
    """A connection's replies registry (a no-op tracer: these tests start their spans themselves)."""
    config = Config.load({}, stream_idle=idle_ns / SEC)
    return Replies(ConnectionSpans(trace.NoOpTracer(), config, route("/chat"), "0" * 32), None)


def _start(
    telemetry: Telemetry, replies: Replies, name: str = "send /chat", start_ns: Optional[int] = None
) -> StreamRecorder:
    span = telemetry.provider.get_tracer("wstrace").start_span(name)
    return replies.start(span, time.monotonic_ns() if start_ns is None else start_ns, "outbound")


def _finished(telemetry: Telemetry, name: str = "send /chat") -> list[ReadableSpan]:
    return telemetry.named(name)


# Streams -----------------------------------------------------------------------------------------


def test_a_stream_is_tracked_until_it_ends(telemetry: Telemetry) -> None:
    replies = _new()
    stream = _start(telemetry, replies)
    assert list(replies.streams.values()) == [stream]
    stream.chunk(10)
    stream.end(at_last_chunk=True)
    assert replies.streams == {}
    [span] = _finished(telemetry)
    assert (span.attributes or {})["wstrace.stream.chunk_count"] == 1
    assert (span.attributes or {})["messaging.message.body.size"] == 10


def test_sweep_ends_idle_streams_at_their_last_chunk(telemetry: Telemetry) -> None:
    replies = _new()
    now = time.monotonic_ns()
    idle = _start(telemetry, replies, "idle", now - 20 * SEC)
    idle.chunk(1, now - 19 * SEC)
    idle.chunk(1, now - 10 * SEC)
    busy = _start(telemetry, replies, "busy", now - SEC)
    busy.chunk(1, now - SEC)
    empty = _start(telemetry, replies, "no chunk yet", now - 20 * SEC)  # still waiting for its first chunk
    replies.sweep(now)
    assert idle.ended and not busy.ended and not empty.ended
    assert set(replies.streams.values()) == {busy, empty}
    [span] = telemetry.named("idle")
    assert span.end_time == wall_ns(now - 10 * SEC)  # at the last chunk, not when the idle gap was noticed
    assert (span.attributes or {})["wstrace.stream.chunk_count"] == 2
    assert span.status.status_code is StatusCode.UNSET


def test_starting_streams_sweeps_once_the_registry_has_grown(telemetry: Telemetry) -> None:
    replies = _new()
    old = time.monotonic_ns() - 60 * SEC
    streams = []
    for _ in range(64):
        stream = _start(telemetry, replies, start_ns=old)
        stream.chunk(1, old)
        streams.append(stream)
    assert not any(s.ended for s in streams)  # no sweep yet: amortised
    fresh = _start(telemetry, replies)  # the 65th: time to look
    assert all(s.ended for s in streams)
    assert list(replies.streams.values()) == [fresh]
    assert len(_finished(telemetry)) == 64
    assert replies.sweep_at == 64


def test_at_most_1024_streams_stay_open_the_oldest_end_first(telemetry: Telemetry) -> None:
    replies = _new()
    now = time.monotonic_ns()
    streams = []
    for n in range(1030):
        stream = _start(telemetry, replies, f"s{n}", now)
        stream.chunk(1, now)  # none is idle
        streams.append(stream)
    assert len(replies.streams) == 1024
    assert [s.ended for s in streams[:6]] == [True] * 6
    assert not any(s.ended for s in streams[6:])
    assert sorted(s.name for s in telemetry.spans) == sorted(f"s{n}" for n in range(6))


def test_the_open_stream_cap_is_kept_without_explicit_sweeps(telemetry: Telemetry) -> None:
    replies = _new()
    most = 0
    for _ in range(2100):
        _start(telemetry, replies).chunk(1)  # none idle: a server answering fast
        most = max(most, len(replies.streams))
    assert most <= 1024


def test_end_all_after_a_normal_close(telemetry: Telemetry) -> None:
    replies = _new()
    now = time.monotonic_ns()
    stream = _start(telemetry, replies, start_ns=now - SEC)
    stream.chunk(5, now - SEC // 2)
    replies.release(stream)  # no loop here: it waits among the orphans for the connection's next event
    assert list(replies.orphans) == [stream]
    replies.end_all(None)
    assert stream.ended and replies.streams == {} and not replies.orphans
    [span] = _finished(telemetry)
    assert span.status.status_code is StatusCode.UNSET
    assert span.end_time == wall_ns(now - SEC // 2)


def test_end_all_after_an_abnormal_close_fails_the_open_streams(telemetry: Telemetry) -> None:
    replies = _new()
    partial = _start(telemetry, replies, "partial")
    partial.chunk(3)
    partial.chunk(4)
    done = _start(telemetry, replies, "done")
    done.chunk(1)
    done.end(at_last_chunk=True)
    replies.end_all("close 1006")
    [span] = telemetry.named("partial")
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == "close 1006"
    assert (span.attributes or {})["wstrace.stream.chunk_count"] == 2  # partial figures kept
    assert (span.attributes or {})["wstrace.stream.size"] == 7
    [finished] = telemetry.named("done")
    assert finished.status.status_code is StatusCode.UNSET


# Orphans: a server reply stream whose message no context holds any more -----------------------------


def _inbound(telemetry: Telemetry, replies: Replies) -> Inbound:
    inbound = Inbound(replies, Context(), time.monotonic_ns())
    # A reply stream is an Outbound, as the server's send path makes it (the compiled core checks the type).
    span = telemetry.provider.get_tracer("wstrace").start_span("send /chat")
    inbound.stream = replies.outbound_stream(span, time.monotonic_ns(), is_text=False)
    inbound.stream.chunk(2)
    return inbound


def test_released_on_a_running_loop_the_stream_ends_on_its_next_turn(telemetry: Telemetry) -> None:
    async def main() -> None:
        replies = _new()
        assert replies.loop is asyncio.get_running_loop()
        first, second = _inbound(telemetry, replies), _inbound(telemetry, replies)
        streams = [first.stream, second.stream]
        del first, second  # the last references go: nothing can join these streams any more
        gc.collect()
        assert replies.flush_pending
        assert not any(s.ended for s in streams)  # not on the path of whatever dropped them
        await asyncio.sleep(0)
        assert all(s.ended for s in streams)
        assert not replies.orphans and not replies.flush_pending
        assert replies.streams == {}

    asyncio.run(main())
    spans = _finished(telemetry)
    assert len(spans) == 2 and all(s.status.status_code is StatusCode.UNSET for s in spans)


def test_a_reply_task_holding_the_message_keeps_its_stream_open(telemetry: Telemetry) -> None:
    async def main() -> None:
        replies = _new()
        inbound = _inbound(telemetry, replies)
        stream = inbound.stream
        assert stream is not None
        release = asyncio.Event()

        async def late_reply() -> None:
            await release.wait()
            owner = otel_context.get_value(OWNER)
            assert isinstance(owner, Inbound) and owner.stream is stream
            stream.chunk(3)

        token = otel_context.attach(otel_context.set_value(OWNER, inbound))
        task = asyncio.create_task(late_reply())  # inherits the context holding the message
        otel_context.detach(token)
        del inbound
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not stream.ended  # the task still holds the message
        release.set()
        await task
        del task
        # Once the loop lets go of the finished task, nothing holds the message: its stream ends a turn later.
        for _ in range(10):
            gc.collect()
            await asyncio.sleep(0)
            if stream.ended:
                break
        assert stream.ended
        assert stream.stats.count == 2

    asyncio.run(main())
    [span] = _finished(telemetry)
    assert (span.attributes or {})["wstrace.stream.chunk_count"] == 2


def test_released_in_a_worker_thread_the_stream_waits_for_the_next_event(telemetry: Telemetry) -> None:
    async def main() -> None:
        replies = _new()
        holder = [_inbound(telemetry, replies)]
        stream = holder[0].stream
        assert stream is not None
        worker = threading.Thread(target=holder.clear)  # the last reference goes in another thread
        worker.start()
        worker.join()
        gc.collect()
        assert replies.orphans == [stream]
        assert not replies.flush_pending
        await asyncio.sleep(0)
        assert not stream.ended  # no SDK work was scheduled from the worker
        replies.end_orphans()  # what the connection's next event does
        assert stream.ended and not replies.orphans

    asyncio.run(main())
    assert len(_finished(telemetry)) == 1


def test_released_without_an_event_loop(telemetry: Telemetry) -> None:
    replies = _new()  # a thread-based library: no loop
    assert replies.loop is None
    inbound = _inbound(telemetry, replies)
    stream = inbound.stream
    del inbound
    gc.collect()
    assert replies.orphans == [stream] and stream is not None and not stream.ended
    replies.end_orphans()
    assert stream.ended


def test_a_message_whose_stream_already_ended_is_not_an_orphan(telemetry: Telemetry) -> None:
    replies = _new()
    inbound = _inbound(telemetry, replies)
    assert inbound.stream is not None
    inbound.stream.end(at_last_chunk=True)
    silent = Inbound(replies, Context(), time.monotonic_ns())  # no reply at all
    del inbound, silent
    gc.collect()
    assert not replies.orphans


class _BrokenSpan(trace.NonRecordingSpan):
    def end(self, end_time: Optional[int] = None) -> None:
        raise RuntimeError("exporter exploded")


def test_ending_orphans_never_raises() -> None:
    replies = _new()
    stream = replies.start(_BrokenSpan(trace.INVALID_SPAN_CONTEXT), time.monotonic_ns(), "outbound")
    stream.chunk(1)
    replies.release(stream)
    replies.end_orphans()
    assert not replies.orphans and not replies.flush_pending


# Client requests ---------------------------------------------------------------------------------


def _request_span(telemetry: Telemetry) -> Context:
    span = telemetry.provider.get_tracer("wstrace").start_span("send /chat")
    span.end()
    return trace.set_span_in_context(span)


def _answer(telemetry: Telemetry, replies: Replies, request: Request) -> StreamRecorder:
    stream = request.stream = _start(telemetry, replies, "receive /chat", request.start_ns)
    stream.chunk(1)
    return stream


def test_replies_without_a_key_belong_to_the_last_request(telemetry: Telemetry) -> None:
    replies = _new()
    assert replies.request_for("early", time.monotonic_ns(), None) is None  # nothing sent yet
    ctx = _request_span(telemetry)
    replies.track_request(ctx, "q1", None)
    first = replies.request_for("a1", time.monotonic_ns(), None)
    assert first is not None and first.ctx is ctx
    stream = _answer(telemetry, replies, first)
    assert replies.request_for("a2", time.monotonic_ns(), None) is first  # same stream
    replies.track_request(_request_span(telemetry), "q2", None)  # "up to the next send"
    assert stream.ended
    second = replies.request_for("b1", time.monotonic_ns(), None)
    assert second is not None and second is not first


def test_request_for_after_the_end_marker_or_an_idle_gap(telemetry: Telemetry) -> None:
    replies = _new()
    replies.track_request(_request_span(telemetry), "q", None)
    request = replies.request_for("a", time.monotonic_ns(), None)
    assert request is not None
    stream = _answer(telemetry, replies, request)
    # An idle gap: the stream ends at its last chunk and later messages are no longer part of it.
    late = stream.stats.last_ns + IDLE_NS + 1
    assert replies.request_for("late", late, None) is None
    assert stream.ended and request.done
    [span] = _finished(telemetry, "receive /chat")
    assert span.end_time == wall_ns(stream.stats.last_ns)
    # The end marker was seen: done.
    replies.track_request(_request_span(telemetry), "q2", None)
    again = replies.request_for("x", time.monotonic_ns(), None)
    assert again is not None
    again.done = True
    assert replies.request_for("y", time.monotonic_ns(), None) is None


def test_request_for_a_stream_that_ended_elsewhere(telemetry: Telemetry) -> None:
    replies = _new()
    replies.track_request(_request_span(telemetry), "q", None)
    request = replies.request_for("a", time.monotonic_ns(), None)
    assert request is not None
    _answer(telemetry, replies, request).end(at_last_chunk=True)  # swept, say
    assert replies.request_for("b", time.monotonic_ns(), None) is None
    assert request.done


def _key(payload: Any) -> Any:
    return payload.get("id")


def test_replies_in_flight_are_paired_by_stream_key(telemetry: Telemetry) -> None:
    replies = _new()
    ctx_a, ctx_b = _request_span(telemetry), _request_span(telemetry)
    replies.track_request(ctx_a, {"id": "a"}, _key)
    replies.track_request(ctx_b, {"id": "b"}, _key)
    now = time.monotonic_ns()
    for_b = replies.request_for({"id": "b", "token": "x"}, now, _key)
    for_a = replies.request_for({"id": "a", "token": "y"}, now, _key)
    assert for_a is not None and for_a.ctx is ctx_a
    assert for_b is not None and for_b.ctx is ctx_b
    assert replies.request_for({"id": "zzz"}, now, _key) is None
    assert replies.request_for({"event": "no id"}, now, _key) is None
    # Sending a request with the same key again ends the old one's stream.
    stream_a = _answer(telemetry, replies, for_a)
    replies.track_request(_request_span(telemetry), {"id": "a"}, _key)
    assert stream_a.ended
    renewed = replies.request_for({"id": "a"}, now, _key)
    assert renewed is not None and renewed is not for_a
    assert replies.last_request is None  # keyed requests do not touch the unkeyed one


def test_a_message_without_a_key_opens_no_request() -> None:
    replies = _new()
    replies.track_request(Context(), {"no": "id"}, _key)
    assert replies.requests is None
    assert replies.request_for({"no": "id"}, time.monotonic_ns(), _key) is None


def test_a_stream_key_that_raises_means_no_key() -> None:
    replies = _new()

    def broken(payload: Any) -> Any:
        raise KeyError("id")

    replies.track_request(Context(), "q", broken)
    assert replies.requests is None
    assert replies.request_for("a", time.monotonic_ns(), broken) is None
    assert safe_key(broken, "x") is None
    assert safe_key(_key, {"id": 3}) == 3


def test_at_most_1024_requests_are_kept_in_flight(telemetry: Telemetry) -> None:
    replies = _new()
    replies.track_request(_request_span(telemetry), {"id": 0}, _key)
    oldest = replies.request_for({"id": 0}, time.monotonic_ns(), _key)
    assert oldest is not None
    stream = _answer(telemetry, replies, oldest)
    for n in range(1, 1025):
        replies.track_request(Context(), {"id": n}, _key)
    assert replies.requests is not None and len(replies.requests) == 1024
    assert stream.ended  # the evicted request's stream ended at its last chunk
    assert replies.request_for({"id": 0}, time.monotonic_ns(), _key) is None
    assert replies.request_for({"id": 1}, time.monotonic_ns(), _key) is not None
    replies.track_request(Context(), {"id": 1025}, _key)  # evicting one without a stream
    assert replies.request_for({"id": 1}, time.monotonic_ns(), _key) is None


def test_an_unhashable_stream_key_means_no_key() -> None:
    replies = _new()
    replies.track_request(Context(), {"id": [1, 2]}, _key)
    assert replies.request_for({"id": [1, 2]}, time.monotonic_ns(), _key) is None


def test_safe_predicate() -> None:
    assert safe_predicate(lambda p: p.endswith("[DONE]"), "data [DONE]") is True
    assert safe_predicate(lambda p: p.endswith("[DONE]"), "data") is False
    assert safe_predicate(lambda p: 1, "x") is True  # truthy is true

    def broken(payload: Any) -> bool:
        raise ValueError("bad json")

    assert safe_predicate(broken, "x") is False  # treated as "not the end"


# Chunks --------------------------------------------------------------------------------------------


def _connection(telemetry: Telemetry, **options: Any) -> Replies:
    config = Config.load({}, **options)
    spans = ConnectionSpans(telemetry.provider.get_tracer("wstrace"), config, route("/chat"), "a" * 32)
    return Replies(spans, None)


def _handled(telemetry: Telemetry, replies: Replies) -> Inbound:
    receive = telemetry.provider.get_tracer("wstrace").start_span("receive /chat")
    return Inbound(replies, trace.set_span_in_context(receive), time.monotonic_ns())


def test_reply_chunks_form_one_stream_under_the_message_with_one_envelope_prefix(telemetry: Telemetry) -> None:
    replies = _connection(telemetry)
    owner = _handled(telemetry, replies)
    wire = wire_for(replies.spans.config, "frame")
    frames = [replies.reply_chunk(owner, wire, f"token {n}", True, n + 1)[0] for n in range(3)]
    stream = owner.stream
    assert stream is not None and stream.stats.count == 3 and len(replies.streams) == 1
    prefix = frames[0][: -len("token 0")]
    assert all(f == prefix + f"token {n}" for n, f in enumerate(frames)), "one prefix, encoded once"
    payload, carrier = wire.strip(frames[2])
    assert payload == "token 2" and carrier is not None
    assert carrier["traceparent"].split("-")[2] == f"{stream.span.get_span_context().span_id:016x}"
    stream.end()
    (span,) = telemetry.named("send /chat")
    assert span.attributes["wstrace.stream.chunk_count"] == 3
    assert span.parent is not None


def test_a_fragmented_chunk_gets_its_whole_size_in_its_stream(telemetry: Telemetry) -> None:
    """A reply sent as fragments is one chunk; its Fragmented handle adds the rest of its size when it ends, to
    the stream, the chunk span (chunk_spans) and the counts; a failure ends the stream with the error."""
    replies = _connection(telemetry, chunk_spans=True)
    owner = _handled(telemetry, replies)
    replies.sent_to = None
    _, handle = replies.reply_chunk(owner, None, "ab", True, 1)
    stream = replies.sent_to
    assert stream is owner.stream and stream is not None
    counts = [0] * 8
    whole = Fragmented(handle, stream, 2, 1)
    assert whole.stream is stream and whole.span is handle.span
    whole.whole(2, counts)  # nothing beyond the first fragment
    assert counts == [0] * 8 and stream.stats.size == 2
    whole.whole(10, counts)
    assert counts[5] == 8 and stream.stats.size == 10
    uncounted = Fragmented(NOTHING_TO_END, None, 2, -1)
    uncounted.whole(5, counts)
    assert counts[5] == 8
    assert whole.span is not None
    whole.span.end()
    (chunk,) = [s for s in telemetry.named("send /chat") if s.attributes.get("wstrace.stream.chunk_count") is None]
    assert chunk.attributes["messaging.message.body.size"] == 10
    stream.end(ValueError("the rest of the fragments failed"))
    assert stream.stats.size == 10
    whole.whole(20, None)  # the stream has ended: its size stays
    assert stream.stats.size == 10


def test_a_reply_after_the_idle_gap_starts_a_new_stream(telemetry: Telemetry) -> None:
    replies = _connection(telemetry, stream_idle=0.001)
    owner = _handled(telemetry, replies)
    replies.reply_chunk(owner, None, b"first", False, 1)
    first = owner.stream
    time.sleep(0.01)
    replies.reply_chunk(owner, None, b"second", False, 2)
    assert first is not None and first.ended and owner.stream is not first


def test_the_end_marker_hands_the_stream_to_send_end_and_chunk_spans_get_their_own(telemetry: Telemetry) -> None:
    replies = _connection(telemetry, chunk_spans=True, stream_end=lambda p: p == "done")
    owner = _handled(telemetry, replies)
    wire = wire_for(replies.spans.config, "frame")
    frame, handle = replies.reply_chunk(owner, wire, "token", True, 1)
    assert handle.span is not None and handle.stream is None
    chunk_carrier = wire.strip(frame)[1]
    assert chunk_carrier is not None
    assert chunk_carrier["traceparent"].split("-")[2] == f"{handle.span.get_span_context().span_id:016x}"
    _, last = replies.reply_chunk(owner, None, "done", True, 2)
    assert last.ends_stream and last.stream is owner.stream and last.span is not None


def test_a_client_reply_joins_its_request_stream_and_the_end_marker_ends_it(telemetry: Telemetry) -> None:
    replies = _connection(telemetry, stream_end=lambda p: p == "done")
    request_span = telemetry.provider.get_tracer("wstrace").start_span("send /chat")
    replies.track_request(trace.set_span_in_context(request_span), "prompt", None)
    request = replies.last_request
    assert request is not None
    server = telemetry.provider.get_tracer("server").start_span("server reply")
    carrier = {
        "traceparent": f"00-{server.get_span_context().trace_id:032x}-{server.get_span_context().span_id:016x}-01"
    }
    ambient = Context()
    span, base, ends = replies.reply_received(request, "a", carrier, True, 1, 1, time.monotonic_ns(), ambient)
    again, _, _ = replies.reply_received(request, "b", None, True, 2, 1, time.monotonic_ns(), ambient)
    assert again is span and ends is None and base is not None
    _, _, ends = replies.reply_received(request, "done", None, True, 3, 4, time.monotonic_ns(), ambient)
    assert ends is request.stream and request.done
    ends.end()
    (received,) = telemetry.named("receive /chat")
    assert received.parent is not None and received.parent.span_id == server.get_span_context().span_id
    assert received.attributes["wstrace.stream.chunk_count"] == 3


def test_client_chunk_spans_link_to_the_senders_chunk(telemetry: Telemetry) -> None:
    replies = _connection(telemetry, chunk_spans=True)
    replies.track_request(Context(), "prompt", None)
    request = replies.last_request
    assert request is not None
    sender = telemetry.provider.get_tracer("server").start_span("chunk")
    sc = sender.get_span_context()
    carrier = {"traceparent": f"00-{sc.trace_id:032x}-{sc.span_id:016x}-01"}
    chunk, _, _ = replies.reply_received(request, "a", carrier, True, 1, 1, time.monotonic_ns(), Context())
    assert request.stream is not None and chunk is not request.stream.span
    chunk.end()
    (recorded,) = [s for s in telemetry.named("receive /chat") if s.links]
    assert recorded.links[0].context.span_id == sc.span_id


# Runs and the messages sent outside any reply ------------------------------------------------------------


def _sent(replies: Replies, current: Context, payload: Any, ordinal: int, **kw: Any) -> Any:
    return replies.outbound(
        current, kw.get("wire"), payload, True, ordinal, len(payload), kw.get("client", False), kw.get("last")
    )


def test_sends_under_one_context_are_one_run_and_another_context_starts_the_next(telemetry: Telemetry) -> None:
    replies = _connection(telemetry)
    tracer = telemetry.provider.get_tracer("app")
    turn = trace.set_span_in_context(tracer.start_span("voice turn"))
    for n in range(3):
        frame, handle = _sent(replies, turn, f"frame {n}", n + 1)
        assert frame == f"frame {n}" and handle.span is None  # no envelope in force; no span of its own
    other = trace.set_span_in_context(tracer.start_span("next turn"))
    _sent(replies, other, "frame 3", 4)
    first = next(s for s in telemetry.named("send /chat"))
    assert first.attributes["wstrace.stream.chunk_count"] == 3
    assert "wstrace.stream.time_to_first_chunk" not in first.attributes  # a run answers nothing
    assert first.parent is not None and first.parent.span_id == trace.get_current_span(turn).get_span_context().span_id
    assert replies.run is not None and replies.run.stream.stats.count == 1


def test_the_same_context_object_continues_its_run_until_a_gap_an_end_or_a_reply_is_current(
    telemetry: Telemetry,
) -> None:
    """A run remembers the context object of its last message (contexts are immutable) to skip the lookups
    for the next; every other rule still applies to that object: the idle gap, a run ended elsewhere, and on a
    client a reply stream current in it (each send is then a new request)."""
    replies = _connection(telemetry, stream_idle=0.05)
    turn = trace.set_span_in_context(telemetry.provider.get_tracer("app").start_span("voice turn"))
    _sent(replies, turn, "a", 1)
    first = replies.run
    assert first is not None and first.ctx is turn
    _sent(replies, turn, "b", 2)
    assert replies.run is first and first.stream.stats.count == 2
    time.sleep(0.06)
    _sent(replies, turn, "c", 3)  # the same object after the idle gap: a new run
    assert replies.run is not first and first.stream.ended
    second = replies.run
    assert second is not None
    second.stream.end(at_last_chunk=True)  # ended elsewhere (the open-stream cap, a sweep)
    _sent(replies, turn, "d", 4)
    assert replies.run is not second and replies.run is not None and replies.run.stream.stats.count == 1
    assert [s.attributes["wstrace.stream.chunk_count"] for s in telemetry.named("send /chat")] == [2, 1]

    client = _connection(telemetry)
    _sent(client, Context(), "prompt", 1, client=True)
    request = client.last_request
    assert request is not None and request.replies is client
    reading = otel_context.set_value(REQUEST, request, Context())  # the reply stream is current
    _sent(client, reading, "again", 2, client=True)
    run = client.run
    assert run is not None and run.ctx is None  # a fresh start is not remembered
    _sent(client, reading, "and again", 3, client=True)
    assert client.run is not run  # still a new request each time, as without the shortcut


def test_a_push_links_to_the_last_inbound_message_and_ends_at_the_next(telemetry: Telemetry) -> None:
    replies = _connection(telemetry)
    inbound = telemetry.provider.get_tracer("t").start_span("receive /chat").get_span_context()
    _sent(replies, Context(), "token a", 1, last=inbound)
    _sent(replies, Context(), "token b", 2, last=inbound)
    replies.end_push()
    replies.end_push()  # nothing open: nothing to do
    (run,) = telemetry.named("send /chat")
    assert run.parent is None and run.attributes["wstrace.stream.chunk_count"] == 2
    assert [lk.context.span_id for lk in run.links if lk.attributes["wstrace.link.kind"] == "inbound"] == [
        inbound.span_id
    ]


def test_a_client_run_is_a_request_and_a_keyed_send_is_not_a_run(telemetry: Telemetry) -> None:
    replies = _connection(telemetry, stream_key=lambda p: p.split(":")[0] if ":" in p else None)
    _sent(replies, Context(), "plain", 1, client=True)
    assert replies.run is not None and replies.run.request is replies.last_request is not None
    first_request = replies.last_request
    _sent(replies, Context(), "again", 2, client=True)
    assert first_request.start_ns <= replies.run.stream.stats.last_ns  # a reply to a run answers its latest message
    frame, handle = _sent(replies, Context(), "7:ask", 3, client=True)  # a keyed request: a span of its own
    assert frame == "7:ask" and handle.span is not None and handle.stream is None
    assert replies.requests is not None and list(replies.requests) == ["7"]  # its answers form its reply stream
    handle.span.end()
    assert telemetry.named("send /chat")[-1].attributes["websocket.message.ordinal"] == 3


def test_idle_runs_end_on_the_loop(telemetry: Telemetry) -> None:
    async def scenario() -> None:
        replies = _connection(telemetry, stream_idle=0.03)
        _sent(replies, Context(), "a", 1)
        await asyncio.sleep(0.01)
        _sent(replies, Context(), "b", 2)  # the first check finds it still going and looks again later
        await asyncio.sleep(0.1)
        assert replies.run is None
        (run,) = telemetry.named("send /chat")
        assert run.attributes["wstrace.stream.chunk_count"] == 2

    asyncio.run(scenario())
    replies = _connection(telemetry)  # no loop: nothing is scheduled, the next event (or close) ends it
    _sent(replies, Context(), "c", 1)
    assert replies.run is not None and not replies.run.stream.ended


def test_messages_with_one_sender_context_become_one_receive_stream(telemetry: Telemetry) -> None:
    """The first message stands alone; from the second on the peer's run is one stream counting the first."""
    replies = _connection(telemetry, stream_idle=5)
    peer = telemetry.provider.get_tracer("peer").start_span("peer run")
    sender = (trace.set_span_in_context(peer), peer.get_span_context())
    now = time.monotonic_ns()
    assert replies.received(sender, "a", True, 1, 1, now, Context()) is None  # nothing says more will follow
    span, base = replies.received(sender, "bb", True, 2, 2, now + 1000, Context()) or (None, None)
    assert span is not None and base is not None
    again = replies.received(sender, "ccc", True, 3, 3, now + 2000, Context())
    assert again is not None and again[0] is span
    other = telemetry.provider.get_tracer("peer").start_span("other run")
    assert replies.received((None, other.get_span_context()), "d", True, 4, 1, now + 3000, Context()) is None
    (stream,) = telemetry.named("receive /chat")
    assert stream.attributes["wstrace.stream.chunk_count"] == 3
    assert stream.attributes["wstrace.stream.size"] == 6
    assert stream.attributes["websocket.message.ordinal"] == 1
    assert replies.received((None, None), "e", True, 5, 1, now + 4000, Context()) is None  # no sender context


def test_the_same_sender_context_after_the_idle_gap_starts_afresh(telemetry: Telemetry) -> None:
    replies = _connection(telemetry, stream_idle=1)
    peer = telemetry.provider.get_tracer("peer").start_span("peer run")
    sender = (trace.set_span_in_context(peer), peer.get_span_context())
    now = time.monotonic_ns()
    assert replies.received(sender, "a", True, 1, 1, now, Context()) is None
    assert replies.received(sender, "b", True, 2, 1, now + 2 * SEC, Context()) is None  # long after: alone again
    assert replies.received(sender, "c", True, 3, 1, now + 2 * SEC + 1000, Context()) is not None


def test_a_first_answer_after_an_idle_gap_needs_the_requests_trace(telemetry: Telemetry) -> None:
    """Later than ``stream_idle`` after the request, a first message is its reply only if its envelope puts the
    sender in the request's trace; else it is a push, and the request is over."""
    replies = _connection(telemetry, stream_idle=0.5)
    request_span = telemetry.provider.get_tracer("wstrace").start_span("send /chat")
    ctx = trace.set_span_in_context(request_span)
    sent = request_span.get_span_context()
    late = 10**9  # 1 s in ns: twice the idle gap
    replies.track_request(ctx, "q1", None)
    request = replies.last_request
    assert request is not None
    assert replies.request_for("soon", request.start_ns + 1000, None) is request  # within the gap: no proof needed
    same_trace = {"traceparent": f"00-{sent.trace_id:032x}-{'1' * 16}-01"}
    other_trace = {"traceparent": f"00-{'2' * 32}-{'1' * 16}-01"}
    assert replies.request_for("slow answer", request.start_ns + late, None, same_trace) is request
    assert replies.request_for("push", request.start_ns + late, None, other_trace) is None
    assert request.done  # over: what follows is not its reply either
    replies.track_request(ctx, "q2", None)
    second = replies.last_request
    assert second is not None and replies.request_for("push", second.start_ns + late, None) is None


def test_a_run_longer_than_the_limit_ends_and_the_next_one_links_to_it(telemetry: Telemetry) -> None:
    """A steady sender (a heartbeat that nothing answers) gets spans it can export as it goes, chained."""
    replies = _connection(telemetry, run_limit=0.05)
    _sent(replies, Context(), "beat 1", 1)
    _sent(replies, Context(), "beat 2", 2)  # within the limit: the same run
    time.sleep(0.06)
    _sent(replies, Context(), "beat 3", 3)  # past it: a new run
    (first,) = telemetry.named("send /chat")  # the first run ended, and was exported
    assert first.attributes["wstrace.stream.chunk_count"] == 2
    assert replies.run is not None
    replies.run.stream.end(at_last_chunk=True)
    second = telemetry.named("send /chat")[-1]
    assert second.parent is None and second.attributes["wstrace.stream.chunk_count"] == 1
    assert [(lk.context.span_id, lk.attributes["wstrace.link.kind"]) for lk in second.links] == [
        (first.context.span_id, "previous")
    ]


def test_a_run_limit_of_zero_is_no_limit(telemetry: Telemetry) -> None:
    replies = _connection(telemetry, run_limit=0)
    _sent(replies, Context(), "a", 1)
    time.sleep(0.01)
    _sent(replies, Context(), "b", 2)
    assert not telemetry.named("send /chat") and replies.run is not None
    assert replies.run.stream.stats.count == 2


# The usual chunk (Replies.again) -------------------------------------------------------------------------


def test_again_continues_a_reply_stream_as_reply_chunk_would(telemetry: Telemetry) -> None:
    """From a stream's third chunk, ``again`` counts the chunk and frames it exactly as the full path does."""
    replies = _connection(telemetry)
    owner = _handled(telemetry, replies)
    wire = wire_for(replies.spans.config, "frame")
    assert replies.again(Context(), owner, wire, "token 0", True) is None  # no stream yet
    slow = [replies.reply_chunk(owner, wire, f"token {n}", True, n + 1)[0] for n in range(2)]
    stream = owner.stream
    assert stream is not None
    sent = replies.again(Context(), owner, wire, "token 2", True)
    assert sent is not None and sent[1] is NOTHING_TO_END
    assert sent[0] == slow[0][: -len("token 0")] + "token 2", "the stream's prefix, as reply_chunk put it"
    assert replies.again(Context(), owner, None, b"\x00\x01", False) is None  # the other type: the full path
    assert replies.again(Context(), owner, None, "token 3", True) == ("token 3", NOTHING_TO_END)
    stats = stream.stats
    assert (stats.count, stats.size, sum(stats.gaps.values())) == (4, 4 * len("token 0"), 3)
    assert max(stats.gaps) == gap_bucket(stats.max_gap_ns)
    assert replies.sent_to is stream
    other = _connection(telemetry)
    assert other.again(Context(), owner, None, "x", True) is None  # another connection's message
    stream.end()
    assert replies.again(Context(), owner, None, "token 4", True) is None  # an ended stream


def test_again_leaves_stalls_idle_gaps_end_markers_and_chunk_spans_to_the_full_path(telemetry: Telemetry) -> None:
    replies = _connection(telemetry, stall_threshold=0.5)
    owner = _handled(telemetry, replies)
    for n in range(2):
        replies.reply_chunk(owner, None, "t", True, n + 1)
    stream = owner.stream
    assert stream is not None
    stream.stats.last_ns -= SEC  # a second since the last chunk: a stall
    assert replies.again(Context(), owner, None, "t", True) is None
    stream.stats.last_ns -= 10 * SEC  # past the idle gap too
    assert replies.again(Context(), owner, None, "t", True) is None
    for options in ({"chunk_spans": True}, {"stream_end": lambda p: p == "done"}):
        marked = _connection(telemetry, **options)
        handled = _handled(telemetry, marked)
        for n in range(3):
            marked.reply_chunk(handled, None, "t", True, n + 1)
        assert marked.again(Context(), handled, None, "t", True) is None


def test_again_continues_a_run_under_the_same_context_object_only(telemetry: Telemetry) -> None:
    replies = _connection(telemetry)
    turn = trace.set_span_in_context(telemetry.provider.get_tracer("app").start_span("voice turn"))
    for n in range(3):
        _sent(replies, turn, f"frame {n}", n + 1)
    run = replies.run
    assert run is not None and run.ctx is turn
    assert replies.again(turn, None, None, "frame 3", True) == ("frame 3", NOTHING_TO_END)
    assert run.stream.stats.count == 4
    same_span_other_object = trace.set_span_in_context(trace.get_current_span(turn))
    assert replies.again(same_span_other_object, None, None, "frame 4", True) is None
    run.stream.stats.first_ns -= 61 * SEC  # the run has lasted its limit (run_limit, 60 s)
    assert replies.again(turn, None, None, "frame 4", True) is None
    keyed = _connection(telemetry, stream_key=lambda p: None)
    keyed_client = Replies(keyed.spans, None, None, client=True)
    for n in range(3):
        _sent(keyed_client, turn, f"frame {n}", n + 1, client=True)
    assert keyed_client.again(turn, None, None, "frame 3", True) is None  # each send may be a request


def test_an_ended_stream_is_not_kept_by_the_connection(telemetry: Telemetry) -> None:
    """The stream the last chunk joined is remembered (for a message sent as fragments) only while it is open:
    an idle connection must not keep its last reply, and that reply's span, alive."""
    replies = _connection(telemetry)
    owner = _handled(telemetry, replies)
    replies.reply_chunk(owner, None, "only", True, 1)
    stream = owner.stream
    assert stream is not None and replies.sent_to is stream
    stream.end()
    assert replies.sent_to is None and not replies.streams
    assert replies not in gc.get_referrers(stream)  # nothing of the connection holds it any more
