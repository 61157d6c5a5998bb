"""Reply streams: which messages answer which, and when a stream is over.

A server's messages sent while it handles an inbound message form that
message's reply stream; a client's messages received after it sent one form
that request's reply stream (``docs/streams.md``). This module keeps the
bookkeeping: the inbound message in flight (:class:`Inbound`, offered through
the context to whatever sends while it is handled), the requests a client
sent (:class:`Request`), and a connection's open streams (:class:`Replies`),
which end at the idle gap, the next request, close, or when nothing can
reply any more.
"""

from __future__ import annotations

import asyncio
import functools
import time
import weakref
from collections import OrderedDict
from typing import Any, Callable, Hashable, Optional, cast

from opentelemetry import context as otel_context, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind

from wstrace import _handshake as hs, propagation
from wstrace._counting import LOCK as COUNT_LOCK, MessageTotals
from wstrace._log import warn_once
from wstrace._spans import ConnectionSpans, link, size
from wstrace._wire import Prefixes, Wire
from wstrace.metrics import Instruments
from wstrace.semconv import MESSAGING_MESSAGE_BODY_SIZE
from wstrace.streams import StreamRecorder, StreamStats, wall_ns


__all__ = [
    "InRun",
    "NOTHING_TO_END",
    "OWNER",
    "Fragmented",
    "REQUEST",
    "Inbound",
    "Outbound",
    "Replies",
    "Request",
    "Run",
    "SendHandle",
    "safe_key",
    "safe_predicate",
]

OWNER = otel_context.create_key("wstrace-inbound")
"""Context key under which a message being handled offers itself as the owner of replies."""
REQUEST = otel_context.create_key("wstrace-request")
"""Context key under which a client's reply stream, while current, names the request it answers."""

_MAX_PENDING_REQUESTS = 1024
_NO_LIMIT = 1 << 62  # ns: a run_limit of 0
# Shared by every connection with no open stream and no orphan, and never written to: an idle connection
# holds no dict or list of its own for them.
_NO_STREAMS: dict[StreamStats, StreamRecorder] = {}  # written to only after an `is` test
_NO_ORPHANS: tuple[StreamRecorder, ...] = ()
# Open streams per connection: beyond this the oldest ends at its last chunk, so a
# server answering faster than stream_idle cannot pile up open spans until close.
_MAX_OPEN_STREAMS = 1024
_SWEEP_FLOOR = 64


def safe_predicate(predicate: Callable[[Any], object], payload: Any) -> bool:
    """``stream_end``'s verdict on ``payload``: any truthy result ends the stream; ``False`` if it fails."""
    # ``object``, not ``bool``: a predicate may return any truthy value, and compiled code checks the declared type.
    try:
        return bool(predicate(payload))
    except Exception as exc:
        warn_once("the stream_end predicate", exc)
        return False


def safe_key(key_of: Callable[[Any], Optional[Hashable]], payload: Any) -> Optional[Hashable]:
    """``stream_key``'s key for ``payload``; ``None`` (not a keyed message) if it fails or is unhashable."""
    try:
        key = key_of(payload)
        hash(key)  # a message-made key (a JSON list as an "id") must not break the lookups
    except Exception as exc:
        warn_once("the stream_key function", exc)
        return None
    return key


class SendHandle:
    """An outbound message in flight, opaque to adapters: pass it back to ``send_end``."""

    __slots__ = ("ends_stream", "span", "stream")

    def __init__(
        self, span: Optional[Span], stream: Optional[StreamRecorder] = None, ends_stream: bool = False
    ) -> None:
        self.span = span
        self.stream = stream
        self.ends_stream = ends_stream


NOTHING_TO_END = SendHandle(None)
"""The handle of a send that needs no ``send_end`` (a stream chunk, or nothing recorded)."""


class Fragmented(SendHandle):
    """The handle of a message the application sends as fragments: at its end it gets the whole message's size
    (its span's body size, its stream's bytes and the byte count; its start counted the first fragment)."""

    __slots__ = ("first", "slot")

    def __init__(self, handle: SendHandle, stream: Optional[StreamRecorder], first: int, slot: int) -> None:
        # With its stream, a chunk's failure ends that stream with the error, as a failed last chunk would.
        super().__init__(handle.span, handle.stream or stream, handle.ends_stream)
        self.first = first
        """The first fragment's size, already counted."""
        self.slot = slot
        """The counts slot of the message (``_counting.slot``), -1 if it was not counted."""

    def whole(self, total: int, counts: Optional[list[int]]) -> None:
        """The message is over, ``total`` bytes in all: add what its first fragment did not count."""
        extra = total - self.first
        if extra <= 0:
            return
        try:
            if counts is not None and self.slot >= 0:
                with COUNT_LOCK:
                    counts[self.slot + 4] += extra
            span, stream = self.span, self.stream
            if span is not None and span.is_recording():
                span.set_attribute(MESSAGING_MESSAGE_BODY_SIZE, total)
            if stream is not None and not stream.ended:
                stream.stats.size += extra
        except Exception as exc:  # pragma: no cover - defensive
            warn_once("recording the size of a fragmented message", exc)


class Outbound(StreamRecorder):
    """A stream this end sends (a reply or a run). Its chunks are messages, which the stream counts (``stats``)
    on the path every chunk takes; they join the route's message counts when it ends (``_counting``)."""

    __slots__ = ("counts", "index", "other_size", "others", "totals")
    counts: Optional[list[int]]
    index: int
    """The counts slot of the first chunk's type (``_counting.slot``): sent binary 0, sent text 1."""
    others: int
    other_size: int
    """The chunks of the other type, and their bytes."""
    totals: Optional[MessageTotals]

    def partial(self) -> tuple[list[int], int, int, int, int, int]:
        """``_counting.Counted``: its chunks so far, most of them of the first chunk's type."""
        stats, others, other_size = self.stats, self.others, self.other_size
        assert self.counts is not None  # only a stream with counts is ever open in the totals
        return self.counts, self.index, stats.count - others, stats.size - other_size, others, other_size

    def end(self, error: Optional[BaseException | str] = None, *, at_last_chunk: bool = False, end_ns: int = 0) -> None:
        if not self.ended and self.totals is not None:
            self.totals.fold(self)  # first: the messages count even if ending the span fails
        super().end(error, at_last_chunk=at_last_chunk, end_ns=end_ns)


class Inbound:
    """A message being handled on the server: the owner of the reply stream sent while it is current.

    Only contexts hold it (the handling task's, and those of tasks it started). Once none does, no
    chunk can join its stream any more: the stream is handed to its connection's :class:`Replies`
    to end at its last chunk.
    """

    __slots__ = ("ctx", "prefixes", "replies", "start_ns", "stream")

    def __init__(self, replies: Replies, ctx: Context, start_ns: int) -> None:
        self.replies = replies
        self.ctx = ctx
        self.start_ns = start_ns
        self.stream: Optional[Outbound] = None
        self.prefixes: Optional[Prefixes] = None

    def __del__(self) -> None:
        # Called wherever the last reference goes (a detach, a task's end, a GC pass): never SDK work here.
        stream = self.stream
        if stream is not None and not stream.ended:
            self.replies.release(stream)


class Request:
    """A message (or run of messages) a client sent: the messages answering it form its reply stream."""

    __slots__ = ("base", "below", "ctx", "done", "key", "replies", "start_ns", "stream")

    def __init__(self, replies: Replies, ctx: Context, start_ns: int, key: Optional[Hashable] = None) -> None:
        self.replies = replies
        self.ctx = ctx
        self.start_ns = start_ns
        """When the request was sent (a run: its latest chunk), where the reply's time to first chunk starts."""
        self.key = key
        self.stream: Optional[StreamRecorder] = None
        self.base: Optional[Context] = None
        self.below: Optional[Context] = None
        """The application's own context beneath the reply stream's, while that is current."""
        self.done = False


class Run:
    """Messages this end sends in a row under one context, neither replies nor keyed requests: one stream.

    The context is a span of the application's own (a device's "voice turn"), or none at all (a worker's or
    a timer's pushes). ``key`` is that span's id, 0 for none.
    """

    __slots__ = ("ctx", "key", "prefixes", "request", "stream")

    def __init__(self, key: int, stream: Outbound) -> None:
        self.key = key
        self.stream = stream
        self.prefixes: Optional[Prefixes] = None
        self.request: Optional[Request] = None
        """On a client, the request the run is: the messages answering it form its reply stream."""
        self.ctx: Optional[Context] = None
        """The context object the run's last message was sent under, when that sent it as a plain run chunk
        (no request it answers, no fresh start): the same object again (contexts are immutable) means the
        same parent and the same decision, so the next message skips the lookups."""


class InRun:
    """Messages received in a row that carry one sender context: the peer's run (or stream), one receive stream.

    The first such message gets a receive span of its own, since nothing tells yet that more will follow;
    from the second on they are chunks of one receive stream, which counts the first one too.
    """

    __slots__ = ("base", "first_ns", "first_size", "key", "stream")

    def __init__(self, key: int, first_ns: int, first_size: Optional[int]) -> None:
        self.key = key
        self.first_ns = first_ns
        self.first_size = first_size
        self.stream: Optional[StreamRecorder] = None
        self.base: Optional[Context] = None


class Lane:
    """The stream the last chunk joined, for the next chunk sent under the very same context object.

    :meth:`Replies.again` keeps one per connection once a stream is under way; ``ConnectionTracer.send_start``
    tries it before anything else, so a chunk of a long stream skips the context lookups and the owner and run
    rules (the same context object means the same owner, run and decision: contexts are immutable). What can
    change between two chunks is tested there again: the stream's end, the idle gap and stall limit
    (``gap_limit``), the run limit (``until_ns``) and the frame type.
    """

    __slots__ = ("ctx", "gap_limit", "is_text", "prefix", "prefixes", "request", "stats", "stream", "until_ns", "wire")

    def __init__(
        self,
        ctx: Context,
        holder: Inbound | Run,
        stream: Outbound,
        wire: Optional[Wire],
        is_text: bool,
        replies: Replies,
    ) -> None:
        # A weak reference: the message being handled must be able to go when the last context holding it
        # goes (``Inbound.__del__`` releases its stream); so the lane holds neither that context nor the owner.
        self.ctx = weakref.ref(ctx)
        self.stream = stream
        self.stats = stats = stream.stats
        self.wire = wire
        self.is_text = is_text
        self.gap_limit = min(replies.idle_ns, stats.stall_limit)
        run = holder if type(holder) is Run else None
        self.until_ns = stats.first_ns + replies.limit_ns if run is not None else _NO_LIMIT
        self.request = run.request if run is not None else None
        prefixes = holder.prefixes
        if prefixes is None:
            prefixes = holder.prefixes = Prefixes()
        self.prefixes = prefixes
        # Wire.in_stream's first case: a text stream's chunk is its prefix and itself.
        self.prefix = prefixes.text if is_text and type(wire) is Wire else None

    def frame(self, payload: Any) -> Any:
        """A chunk in its envelope, when that is more than the text prefix before it."""
        wire = self.wire
        assert wire is not None  # only called with one
        return wire.in_stream(self.prefixes, self.stream.span, payload, self.is_text)


class Replies:
    """One connection's open reply streams and, on a client, its requests in flight."""

    __slots__ = (
        "counts",
        "flush_pending",
        "idle_ns",
        "inrun",
        "instruments",
        "keyed",
        "lane",
        "last_request",
        "limit_ns",
        "loop",
        "orphans",
        "plain",
        "requests",
        "run",
        "runs_again",
        "sent_to",
        "spans",
        "streams",
        "sweep_at",
    )

    def __init__(
        self,
        spans: ConnectionSpans,
        instruments: Optional[Instruments],
        counts: Optional[list[int]] = None,
        client: bool = False,
    ) -> None:
        self.spans = spans
        self.instruments = instruments
        self.counts = counts
        """The route's message counts (``_counting``), where the messages sent through here are counted."""
        config = spans.config
        self.idle_ns = _ns(config.stream_idle)
        self.limit_ns = _ns(config.run_limit) or _NO_LIMIT
        self.plain = config.stream_end is None and not config.chunk_spans
        """Chunks need no end-marker test and no span of their own: the common case, on the hot path."""
        self.keyed = config.stream_key is not None
        self.runs_again = not (client and self.keyed)
        """A message sent under its run's context continues the run (:meth:`again`); not on a client with a
        ``stream_key``, where each send may be a request of its own."""
        self.streams: dict[StreamStats, StreamRecorder] = _NO_STREAMS
        """Open streams, oldest first; a stream leaves when it ends."""
        self.orphans: list[StreamRecorder] | tuple[StreamRecorder, ...] = _NO_ORPHANS
        """Server reply streams whose message no context holds any more: they are complete."""
        self.flush_pending = False
        """An ``end_orphans`` call is scheduled on the event loop, or about to run here."""
        self.loop = _running_loop()
        """The event loop the connection runs on, if any: where released reply streams are ended."""
        self.last_request: Optional[Request] = None
        self.requests: Optional[OrderedDict[Hashable, Request]] = None
        """Requests in flight by key (client, with ``stream_key``); made on first use."""
        self.run: Optional[Run] = None
        """The run this end is sending, if any."""
        self.inrun: Optional[InRun] = None
        """The run the peer is sending, as far as this end has received it."""
        self.sweep_at = _SWEEP_FLOOR
        self.lane: Optional[Lane] = None
        """The stream under way and the context its chunks are sent under: the next chunk's short way."""
        self.sent_to: Optional[StreamRecorder] = None
        """The stream the last chunk sent joined (for a message sent as fragments, whose size is known at its end)."""

    # Chunks ------------------------------------------------------------------

    def reply_chunk(
        self, owner: Inbound, wire: Optional[Wire], payload: Any, is_text: bool, ordinal: int
    ) -> tuple[Any, SendHandle]:
        """Server side: a message sent while ``owner`` is handled joins its reply stream; returns the frame."""
        now = time.monotonic_ns()
        stream = owner.stream
        if stream is not None and not stream.ended:
            if now - stream.stats.last_ns <= self.idle_ns:
                return self._chunk(stream, owner, wire, payload, is_text, ordinal, size(payload), now)
            stream.end(at_last_chunk=True)  # an idle gap ends a stream; this chunk starts the next
        span = self.spans.reply(owner.ctx, payload, is_text, ordinal, wall_ns(now))
        stream = owner.stream = self.outbound_stream(span, owner.start_ns, is_text)
        owner.prefixes = None
        return self._chunk(stream, owner, wire, payload, is_text, ordinal, size(payload), now)

    def outbound(
        self,
        current: Context,
        wire: Optional[Wire],
        payload: Any,
        is_text: bool,
        ordinal: int,
        body_size: Optional[int],
        client: bool,
        last_inbound: Optional[trace.SpanContext],
    ) -> tuple[Any, SendHandle]:
        """A message sent outside any reply (message spans and streams on): the frame and its handle.

        It joins the run sent under the same context; a keyed request, or a message of an exchange still open
        (its ``stream_key``), has a span of its own. On a client whose reply stream is current, a send that
        does not continue that exchange is a new request: it leaves the reply's trace for the application's
        own context, linked to the exchange before.
        """
        previous: Optional[trace.SpanContext] = None
        fresh = False
        request: Optional[Request] = current.get(REQUEST)  # type: ignore[assignment]
        key_of = self.spans.config.stream_key if client else None
        key = safe_key(key_of, payload) if key_of is not None else None
        if request is not None and request.replies is self:
            if key is not None and key == request.key and not request.done:
                # A message of the open exchange (a tool result mid-stream): stays in its trace.
                return self._own_span(current, wire, payload, is_text, ordinal, body_size, None)
            if request.stream is not None:
                previous = request.stream.span.get_span_context()
            current = request.below if request.below is not None else Context()
            fresh = True
        if key is not None:  # a keyed request is a span (and a trace) of its own
            return self._own_span(current, wire, payload, is_text, ordinal, body_size, key_of)
        frame, handle, new = self.run_chunk(
            current, wire, payload, is_text, ordinal, body_size, fresh, previous, last_inbound
        )
        if new is not None and client:
            new.request = self.track_request(trace.set_span_in_context(new.stream.span), payload, None)
        if not fresh and self.run is not None:
            self.run.ctx = current  # the same context object next time takes the fast path (again)
        return frame, handle

    def _own_span(
        self,
        current: Context,
        wire: Optional[Wire],
        payload: Any,
        is_text: bool,
        ordinal: int,
        body_size: Optional[int],
        key_of: Optional[Callable[[Any], Optional[Hashable]]],
    ) -> tuple[Any, SendHandle]:
        """A message with a span of its own; with ``key_of``, a request whose answers form its reply stream."""
        if self.counts is not None and self.instruments is not None:
            self.instruments.totals.add(self.counts, 1 if is_text else 0, body_size)
        span = self.spans.send(payload, is_text, ordinal, body_size, current)
        ctx = trace.set_span_in_context(span)
        if key_of is not None:
            self.track_request(ctx, payload, key_of)
        return (wire.wrap(payload, is_text, propagation.inject(ctx)) if wire is not None else payload), SendHandle(span)

    def run_chunk(
        self,
        current: Context,
        wire: Optional[Wire],
        payload: Any,
        is_text: bool,
        ordinal: int,
        body_size: Optional[int],
        fresh: bool = False,
        previous: Optional[trace.SpanContext] = None,
        last_inbound: Optional[trace.SpanContext] = None,
    ) -> tuple[Any, SendHandle, Optional[Run]]:
        """A message sent under ``current`` (no reply, no keyed request) joins the run sent under the same
        context, or starts a new one (returned); ``fresh`` always starts a new one (a new request, linked to
        the exchange before it, ``previous``). A new run with no context links to ``last_inbound``, the
        message the connection handled last. Returns the frame and the handle."""
        now = time.monotonic_ns()
        parent = trace.get_current_span(current).get_span_context()
        key = parent.span_id if parent.is_valid else 0
        run = self.run
        if run is not None:
            stream = run.stream
            stats = stream.stats
            if fresh or run.key != key or stream.ended or now - stats.last_ns > self.idle_ns:
                stream.end(at_last_chunk=True)  # another context, or an idle gap: this message starts a new run
                run = self.run = None
            elif now - stats.first_ns > self.limit_ns:
                stream.end(at_last_chunk=True)  # long enough: export it, and chain the next run to it
                previous, run = stream.span.get_span_context(), None
                self.run = None
        new = None
        if run is None:
            # Links are made only here, for the run's one span: never per message.
            links: tuple[Link, ...] = ()
            if previous is not None:
                links = (link(previous, "previous"),)
            elif not key and last_inbound is not None:
                links = (link(last_inbound, "inbound"),)
            span = self.spans.send(payload, is_text, ordinal, None, current, links, wall_ns(now))
            run = new = self.run = Run(key, self.outbound_stream(span, now, is_text, answers=False))
            self._watch(run, self.idle_ns)
        elif run.request is not None:
            run.request.start_ns = now  # a reply to a run answers its latest message
        payload, handle = self._chunk(run.stream, run, wire, payload, is_text, ordinal, body_size, now)
        return payload, handle, new

    def _watch(self, run: Run, delay_ns: int) -> None:
        """End ``run`` once idle (see :meth:`_watch_stream`)."""
        self._watch_stream(run.stream, delay_ns)

    def _watch_stream(self, stream: StreamRecorder, delay_ns: int) -> None:
        """End ``stream`` once idle, on the connection's own loop: a run that nothing follows would otherwise
        stay open (and unexported) until the connection's next event. Without a loop (a thread-based
        library) the next event, or the close, ends it."""
        loop = self.loop
        if loop is None:
            return
        try:
            if asyncio.get_running_loop() is loop:
                loop.call_later(delay_ns / 1e9, self._check_idle, stream)
        except RuntimeError:  # not on a loop here
            pass

    def _check_idle(self, stream: StreamRecorder) -> None:
        if stream.ended:
            return
        gap = time.monotonic_ns() - stream.stats.last_ns
        if gap < self.idle_ns:
            self._watch_stream(stream, self.idle_ns - gap)
            return
        try:
            stream.end(at_last_chunk=True)
        except Exception as exc:
            warn_once("ending an idle run", exc)
        if self.run is not None and self.run.stream is stream:
            self.run = None
        if self.inrun is not None and self.inrun.stream is stream:
            self.inrun = None

    def inbound(
        self,
        client: bool,
        payload: Any,
        carrier: Optional[dict[str, str]],
        is_text: bool,
        ordinal: int,
        body_size: Optional[int],
        now: int,
        ambient: Context,
    ) -> tuple[Span, Context, bool, Optional[StreamRecorder]]:
        """An inbound message, with streams on: the span to make current, the context to attach, whether that span
        is the message's own (to end when it is handled) and the stream it ends (``stream_end``), if any.

        On a client, a message answering a request joins the request's reply stream; else a message carrying
        the same sender context as the one before joins the peer's run; else it gets a receive span of its own.
        """
        config = self.spans.config
        request = self.request_for(payload, now, config.stream_key, carrier) if client else None
        self.end_push()
        if request is not None:
            span, base, ends = self.reply_received(request, payload, carrier, is_text, ordinal, body_size, now, ambient)
            if request.below is None:  # the application's context when its reply began
                request.below = ambient
            return span, otel_context.set_value(REQUEST, request, trace.set_span_in_context(span, base)), False, ends
        sender = hs.remote(config, carrier)
        chunk = (
            None if config.chunk_spans else self.received(sender, payload, is_text, ordinal, body_size, now, ambient)
        )
        if chunk is not None:
            return chunk[0], trace.set_span_in_context(*chunk), False, None
        span, base = self.spans.receive(payload, is_text, ordinal, body_size, sender, ambient)
        return span, trace.set_span_in_context(span, base), True, None

    def received(
        self,
        sender: tuple[Optional[Context], Optional[trace.SpanContext]],
        payload: Any,
        is_text: bool,
        ordinal: int,
        body_size: Optional[int],
        now: int,
        ambient: Context,
    ) -> Optional[tuple[Span, Context]]:
        """A message received outside any reply: a chunk of the peer's run (the stream span and the context to
        attach it in) when it carries the same sender context as the message before it, else ``None`` (a
        receive span of its own)."""
        sender_span = sender[1]
        key = sender_span.span_id if sender_span is not None else 0
        run = self.inrun
        if run is not None:
            stream = run.stream
            last_ns = stream.stats.last_ns if stream is not None else run.first_ns
            if run.key != key or now - last_ns > self.idle_ns or (stream is not None and stream.ended):
                if stream is not None:
                    stream.end(at_last_chunk=True)
                run = self.inrun = None
        if key == 0:
            return None  # no sender context: nothing ties this message to the one before
        if run is None:
            self.inrun = InRun(key, now, body_size)
            return None
        stream = run.stream
        if stream is None:
            # The second message of the peer's run: one receive stream from here on, from its first message.
            # Its ordinal is the first message's: the two arrived in a row, in this direction.
            span, run.base = self.spans.receive(
                payload, is_text, ordinal - 1, None, sender, ambient, None, wall_ns(run.first_ns)
            )
            stream = run.stream = self.start(span, run.first_ns, "inbound", answers=False)
            stream.chunk(run.first_size or 0, run.first_ns)
            self._watch_stream(stream, self.idle_ns)
        stream.chunk(body_size or 0, now)
        return stream.span, run.base if run.base is not None else ambient

    def end_push(self) -> None:
        """The connection received a message: a run sent with no context (pushes) is over."""
        run = self.run
        if run is not None and run.key == 0:
            run.stream.end(at_last_chunk=True)
            self.run = None

    def again(
        self, current: Context, owner: Optional[Inbound], wire: Optional[Wire], payload: Any, is_text: bool
    ) -> Optional[tuple[Any, SendHandle]]:
        """The usual chunk of a stream under way, the frame to send, or ``None`` for any other message.

        On the path every chunk takes: the next chunk of the reply stream to ``owner`` (the message being
        handled), or of the run last sent under the very same context object (contexts are immutable: the
        same object means the same parent, request and decision), with no end marker, no chunk span, no
        idle gap, stall or run limit, after the stream's second chunk. The rules of
        :meth:`reply_chunk`, :meth:`outbound`, :meth:`_chunk` and ``StreamStats.add`` for that case, written
        out in one function.
        """
        run = None
        if owner is not None:
            if owner.replies is not self:
                return None
            holder: Inbound | Run = owner
            stream = owner.stream
            if stream is None:
                return None
        else:
            run = self.run
            if run is None or current is not run.ctx or not self.runs_again:
                return None
            holder, stream = run, run.stream
        if stream.ended or not self.plain:
            return None
        now = time.monotonic_ns()
        stats = stream.stats
        gap = now - stats.last_ns
        count = stats.count
        if not (gap <= self.idle_ns and count > 1 and gap <= stats.stall_limit and is_text == stream.index):
            return None
        if run is not None:
            if now - stats.first_ns > self.limit_ns:
                return None
            request = run.request
            if request is not None:
                request.start_ns = now  # a reply to a run answers its latest message
        stats.count = count + 1
        kind = type(payload)
        if kind is bytes or (kind is str and payload.isascii()):
            stats.size += len(payload)
        else:
            stats.size += size(payload) or 0
        stats.last_ns = now
        stats.add_gap(gap)
        self.sent_to = stream
        lane = self.lane
        if (lane is None or lane.ctx() is not current or lane.stream is not stream) and (
            wire is None or type(wire) is Wire  # not a SplitWire: the lane serves calls that take no Parts
        ):
            self.lane = Lane(current, holder, stream, wire, is_text, self)
        if wire is None:
            return payload, NOTHING_TO_END
        prefixes = holder.prefixes
        if prefixes is not None and prefixes.text is not None and kind is str and is_text and type(wire) is Wire:
            return prefixes.text + payload, NOTHING_TO_END  # Wire.in_stream's first case: a text stream's chunk
        return _in_stream(wire, holder, stream, payload, is_text), NOTHING_TO_END

    def _chunk(
        self,
        stream: Outbound,
        holder: Inbound | Run,
        wire: Optional[Wire],
        payload: Any,
        is_text: bool,
        ordinal: int,
        body_size: Optional[int],
        now: int,
    ) -> tuple[Any, SendHandle]:
        """Count a chunk of ``stream`` and put it in its envelope (the stream's prefix, kept by ``holder``)."""
        body = body_size or 0
        gap = stream.stats.add(body, now)  # the stream is open: its callers checked
        if gap:
            stream.stalled(gap)
        if is_text != stream.index:  # a chunk of the other type than the first (rare): counted apart
            stream.others += 1
            stream.other_size += body
        self.sent_to = stream
        if self.plain:
            return (payload if wire is None else _in_stream(wire, holder, stream, payload, is_text)), NOTHING_TO_END
        spans = self.spans
        config = spans.config
        handle = NOTHING_TO_END
        if config.stream_end is not None and safe_predicate(config.stream_end, payload):
            handle = SendHandle(None, stream, ends_stream=True)
        if config.chunk_spans:
            chunk = spans.chunk(SpanKind.PRODUCER, stream.span, payload, is_text, ordinal, body_size, None)
            handle = SendHandle(chunk, handle.stream, handle.ends_stream)
            if wire is not None:
                payload = wire.wrap(payload, is_text, propagation.inject(trace.set_span_in_context(chunk)))
        elif wire is not None:
            payload = _in_stream(wire, holder, stream, payload, is_text)
        return payload, handle

    def reply_received(
        self,
        request: Request,
        payload: Any,
        carrier: Optional[dict[str, str]],
        is_text: bool,
        ordinal: int,
        body_size: Optional[int],
        now: int,
        ambient: Context,
    ) -> tuple[Span, Context, Optional[StreamRecorder]]:
        """Client side: a message answering ``request`` joins its reply stream.

        Returns the span to make current, the context to attach it in, and the
        stream if this message ends it (``stream_end``).
        """
        spans = self.spans
        config = spans.config
        stream = request.stream
        sender = hs.remote(config, carrier) if stream is None or config.chunk_spans else (None, None)
        if stream is None:
            # Without the server's context, the reply still belongs to the request.
            span, request.base = spans.receive(
                payload, is_text, ordinal, None, sender, ambient, request.ctx, wall_ns(now)
            )
            stream = request.stream = self.start(span, request.start_ns, "inbound")
        stream.chunk(body_size or 0, now)
        ends = None
        if config.stream_end is not None and safe_predicate(config.stream_end, payload):
            request.done = True
            ends = stream
        base = request.base or ambient
        if config.chunk_spans:
            chunk = spans.chunk(SpanKind.CONSUMER, stream.span, payload, is_text, ordinal, body_size, sender[1])
            return chunk, base, ends
        return stream.span, base, ends

    # Streams -----------------------------------------------------------------

    def outbound_stream(self, span: Span, start_ns: int, is_text: bool, answers: bool = True) -> Outbound:
        """A stream this end sends on ``span`` (:meth:`start`), its messages counted by type from ``is_text``,
        its first chunk's type."""
        stream = cast(Outbound, self.start(span, start_ns, "outbound", answers, Outbound))
        stream.counts = counts = self.counts
        stream.index = 1 if is_text else 0
        stream.others = stream.other_size = 0
        stream.totals = None
        if counts is not None and self.instruments is not None:
            stream.totals = totals = self.instruments.totals
            totals.open[stream] = None  # one dict operation, no lock: see MessageTotals.open
        return stream

    def start(
        self,
        span: Span,
        start_ns: int,
        direction: str,
        answers: bool = True,
        kind: type[StreamRecorder] = StreamRecorder,
    ) -> StreamRecorder:
        """A stream on ``span``: a reply timed from its request at ``start_ns``, or a run (``answers=False``)."""
        stream = kind(
            span,
            StreamStats(start_ns, self.spans.config.stall_threshold),
            instruments=self.instruments,
            metric_attributes=self.spans.names.stream_metrics[direction],
            body_size=True,
            on_end=self.forget,
            brief_single=True,
            answers=answers,
        )
        streams = self.streams
        if streams is _NO_STREAMS:
            streams = self.streams = {}
        streams[stream.stats] = stream
        if len(self.streams) > self.sweep_at:
            self.sweep(time.monotonic_ns())
        if len(self.streams) > _MAX_OPEN_STREAMS:
            next(iter(self.streams.values())).end(at_last_chunk=True)  # the oldest; it leaves the registry
        return stream

    def forget(self, stats: StreamStats) -> None:
        """A stream ended (its ``on_end``)."""
        # An ended stream, its span with it, is not kept for an idle connection.
        sent_to = self.sent_to
        if sent_to is not None and sent_to.stats is stats:
            self.sent_to = None
        lane = self.lane
        if lane is not None and lane.stats is stats:
            self.lane = None
        streams = self.streams
        streams.pop(stats, None)
        if not streams:
            # A dict keeps the room it grew to: an idle connection should not keep room for streams.
            self.streams = _NO_STREAMS

    def release(self, stream: StreamRecorder) -> None:
        """No context holds the stream's message any more: end it on the loop's next turn, or at the next event.

        A reply task the library started (tornado's write) may outlive the handler, and ending its
        stream when the next message arrives would put that work on the next round trip. Only on
        the connection's own loop thread: a context dropped in a worker thread (or on another loop)
        leaves the stream to the connection's next event.
        """
        try:
            orphans = self.orphans
            if isinstance(orphans, list):
                orphans.append(stream)
            else:
                self.orphans = [stream]
            loop = self.loop
            if loop is not None and not self.flush_pending and asyncio.get_running_loop() is loop:
                self.flush_pending = True
                loop.call_soon(self.end_orphans)
        except Exception:  # no running loop in this thread, a closed loop, interpreter shutdown
            pass

    def end_orphans(self) -> None:
        self.flush_pending = False
        orphans, self.orphans = self.orphans, _NO_ORPHANS
        try:
            for stream in orphans:
                stream.end(at_last_chunk=True)
        except Exception as exc:
            warn_once("ending a reply stream", exc)

    def sweep(self, now: int) -> None:
        """End idle streams at their last chunk.

        A server's reply stream otherwise ends only when its owner sends again
        after an idle gap, or at close: on a long-lived connection every reply
        would stay an open span in memory. Amortised: the next sweep waits
        until the registry has doubled.
        """
        idle = self.idle_ns
        for stream in list(self.streams.values()):
            if now - stream.stats.last_ns > idle and stream.stats.count:
                stream.end(at_last_chunk=True)  # leaves self.streams
        self.sweep_at = max(_SWEEP_FLOOR, 2 * len(self.streams))

    def end_all(self, error: Optional[str]) -> None:
        """The connection closed: every open stream ends, failed with ``error`` if the close was abnormal."""
        self.lane = None
        for stream in list(self.streams.values()):
            if not stream.ended:
                stream.end(error, at_last_chunk=error is None)
        self.streams = _NO_STREAMS
        self.orphans = _NO_ORPHANS

    # Client requests ---------------------------------------------------------

    def track_request(
        self, ctx: Context, payload: Any, key_of: Optional[Callable[[Any], Optional[Hashable]]]
    ) -> Optional[Request]:
        """A request was sent: the messages that answer it form its reply stream."""
        key = safe_key(key_of, payload) if key_of is not None else None
        request = Request(self, ctx, time.monotonic_ns(), key)
        if key_of is None:
            previous = self.last_request
            if previous is not None and previous.stream is not None:
                previous.stream.end(at_last_chunk=True)  # "up to the next send"
            self.last_request = request
            return request
        if key is None:
            return None
        requests = self.requests
        if requests is None:
            requests = self.requests = OrderedDict()
        old = requests.pop(key, None)
        if old is not None and old.stream is not None:
            old.stream.end(at_last_chunk=True)
        requests[key] = request
        if len(requests) > _MAX_PENDING_REQUESTS:
            _, evicted = requests.popitem(last=False)
            if evicted.stream is not None:
                evicted.stream.end(at_last_chunk=True)
        return request

    def _in_trace(self, carrier: Optional[dict[str, str]], ctx: Context) -> bool:
        sender = hs.remote(self.spans.config, carrier)[1] if carrier is not None else None
        return sender is not None and sender.trace_id == trace.get_current_span(ctx).get_span_context().trace_id

    def request_for(
        self,
        payload: Any,
        now: int,
        key_of: Optional[Callable[[Any], Optional[Hashable]]],
        carrier: Optional[dict[str, str]] = None,
    ) -> Optional[Request]:
        """The request an inbound message answers, if it is still streaming.

        A first answer that comes more than ``stream_idle`` after the request is taken as its reply only if
        the message's envelope (``carrier``) puts its sender in the request's trace: after such a gap, a
        message with no such proof is as likely a push (a notification, a timer) as a slow answer.
        """
        if key_of is None:
            request = self.last_request
        else:
            key = safe_key(key_of, payload)
            request = self.requests.get(key) if key is not None and self.requests is not None else None
        if request is None or request.done:
            return None
        stream = request.stream
        if stream is None:
            if now - request.start_ns > self.idle_ns and not self._in_trace(carrier, request.ctx):
                request.done = True
                return None
        elif stream.ended or now - stream.stats.last_ns > self.idle_ns:
            stream.end(at_last_chunk=True)
            request.done = True
            return None
        return request


@functools.lru_cache(maxsize=64)
def _ns(seconds: float) -> int:
    """``seconds`` in ns, one int object per value for every connection (an idle one holds a few)."""
    return int(seconds * 1e9)


def _in_stream(wire: Wire, holder: Inbound | Run, stream: StreamRecorder, payload: Any, is_text: bool) -> Any:
    """A chunk in its envelope, with the stream's prefix (encoded once, kept by ``holder``)."""
    prefixes = holder.prefixes
    if prefixes is None:
        prefixes = holder.prefixes = Prefixes()
    return wire.in_stream(prefixes, stream.span, payload, is_text)


def _running_loop() -> Optional[asyncio.AbstractEventLoop]:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # a thread-based library (websockets sync, websocket-client)
        return None
