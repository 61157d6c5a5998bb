"""The per-connection facade that turns WebSocket events into telemetry.

An adapter (or your own code, for a library wstrace has no adapter for) makes one
:class:`ConnectionTracer` per connection with :meth:`~ConnectionTracer.client` or
:meth:`~ConnectionTracer.server` and reports what happens to it, in the order of
``docs/howto/custom-library.md``. The rules live in the modules below it
(``docs/architecture.md``). Methods called from instrumented paths never raise into
the caller; they log the first failure and carry on, and the payload always gets through.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from opentelemetry import context as otel_context, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanContext

from wstrace import _close, _handshake as hs, propagation
from wstrace._close import Initiator
from wstrace._context import Attachment, attach, current as current_context
from wstrace._counting import LOCK as COUNT_LOCK
from wstrace._log import plain_peer, warn_once
from wstrace._opening import Opening, Side
from wstrace._replies import NOTHING_TO_END, OWNER, Fragmented, Inbound, Replies, SendHandle
from wstrace._spans import record_error, size
from wstrace._wire import split_wire
from wstrace.config import Config
from wstrace.metrics import Instruments
from wstrace.streams import StreamRecorder


__all__ = ["NOTHING_TO_END", "ConnectionTracer", "SendHandle", "Side"]


# The key suppress_instrumentation() sets; read from the same context lookup as OWNER.
_SUPPRESS = otel_context._SUPPRESS_INSTRUMENTATION_KEY
_lock, _unlock = COUNT_LOCK.acquire, COUNT_LOCK.release
_monotonic_ns = time.monotonic_ns


class ConnectionTracer(Opening):
    """Telemetry for one WebSocket connection, seen from one side. Build it with :meth:`client` or :meth:`server`.

    The handshake's events and state are :class:`~wstrace._opening.Opening`'s; the messages and the close are here.
    """

    __slots__ = (
        "_closing",
        "_last_inbound",
        "_plain_seen",
        "_received",
        "_recv",
        "_recv_ends_stream",
        "_recv_span",
        "_replies",
        "_sent",
    )

    def __init__(
        self,
        side: Side,
        tracer: trace.Tracer,
        config: Config,
        *,
        route: Optional[str],
        session_id: Optional[str] = None,
        instruments: Optional[Instruments] = None,
    ) -> None:
        super().__init__(side, tracer, config, route=route, session_id=session_id, instruments=instruments)
        self._sent = self._received = 0
        self._recv_span: Optional[Span] = None
        self._recv: Optional[Attachment] = None
        self._last_inbound: Optional[SpanContext] = None
        """The span context of the message this end handled last: what a push with no context links to."""
        self._recv_ends_stream: Optional[StreamRecorder] = None
        self._replies: Optional[Replies] = None
        self._closing: Optional[_close.Closing] = None
        self._plain_seen = False
        """A message without an envelope arrived while one is in force (warned once, under ``always``)."""

    # Messages ----------------------------------------------------------------

    def send_start(
        self,
        payload: Any,
        *,
        text: Optional[bool] = None,
        record: bool = True,
        split: bool = False,
        fragment: bool = False,
    ) -> tuple[Any, SendHandle]:
        """Start tracing an outbound message; returns the frame to put on the wire (``payload``, unless the
        envelope is in force) and the handle for :meth:`send_end` (which :data:`NOTHING_TO_END` lets you skip).

        ``text``: the frame type, when the library lets the caller choose it (default: ``str`` is text).
        ``record=False``, like ``suppress_instrumentation()``, still applies the envelope. ``split=True``: the
        library can send fragments, so a payload of ``_wire.SPLIT_AT`` or more comes back as
        :class:`~wstrace._wire.Parts` (prefix, payload) instead of copied behind the prefix. ``fragment=True``:
        ``payload`` is a message's first fragment; pass the whole message's size to :meth:`send_end`.
        """
        replies = self._replies
        if replies is not None and record and not split and not fragment:
            lane = replies.lane
            if lane is not None and lane.ctx() is current_context():
                # The next chunk of the stream under way, under the very same context: Lane's rules, written
                # out here, where every chunk of every stream passes (a call would cost as much as the rest).
                stats = lane.stats
                now = _monotonic_ns()
                gap = now - stats.last_ns
                count = stats.count
                kind = type(payload)
                if (
                    (kind is str or kind is bytes)
                    and (kind is str if text is None else text) == lane.is_text
                    and gap <= lane.gap_limit
                    and now <= lane.until_ns
                    and not lane.stream.ended
                ):
                    request = lane.request
                    if request is not None:
                        request.start_ns = now  # a reply to a run answers its latest message
                    stats.count = count + 1
                    stats.size += len(payload) if kind is bytes or payload.isascii() else (size(payload) or 0)
                    stats.last_ns = now
                    if gap > stats.max_gap_ns:  # stats.add_gap(gap), written out as the rest is
                        stats.max_gap_ns = gap
                    shift = gap.bit_length() - 7
                    key = gap if shift <= 0 else (shift << 6) + (gap >> shift)
                    gaps = stats.gaps
                    gaps[key] = gaps.get(key, 0) + 1
                    self._sent += 1
                    prefix = lane.prefix
                    if prefix is not None and kind is str:
                        return prefix + payload, NOTHING_TO_END
                    wire = lane.wire
                    if wire is None:
                        return payload, NOTHING_TO_END
                    try:
                        return lane.frame(payload), NOTHING_TO_END
                    except Exception as exc:  # as the full path: the payload goes, in an empty envelope
                        warn_once("tracing an outbound message", exc)
                        return wire.wrap_empty(payload, lane.is_text), NOTHING_TO_END
        is_text = isinstance(payload, str) if text is None else text
        if fragment:
            return self._first_fragment(payload, is_text, record, split)
        wire = self._wire
        if split and wire is not None:
            wire = split_wire(wire)
        handle = NOTHING_TO_END
        try:
            current = current_context()
            carrier: Optional[dict[str, str]] = None
            if not record or current.get(_SUPPRESS) or self._closed:
                pass
            elif not self._recording:
                self._count(is_text, payload)
            else:
                owner: Optional[Inbound] = current.get(OWNER)  # type: ignore[assignment]
                replies = self._replies
                if replies is not None and (sent := replies.again(current, owner, wire, payload, is_text)) is not None:
                    self._sent += 1  # the hot path: a chunk of a stream under way, counted by its stream
                    return sent
                self._sent += 1
                if owner is not None and owner.replies is replies:
                    # A chunk of the reply stream to the message being handled (an owner is only ever made on
                    # a sampled connection), with no span of its own.
                    return owner.replies.reply_chunk(owner, wire, payload, is_text, self._sent)
                config = self.config
                if config.message_spans and config.streams:  # counted where it goes: a run, or a span
                    client = self.side == "client"
                    replies = self._ensure_replies()
                    return replies.outbound(
                        current, wire, payload, is_text, self._sent, size(payload), client, self._last_inbound
                    )
                body_size = self._count(is_text, payload)
                if config.message_spans:
                    span = self._spans.send(payload, is_text, self._sent, body_size, current)
                    handle = SendHandle(span)
                    if wire is not None:
                        carrier = propagation.inject(trace.set_span_in_context(span))
                elif wire is not None:
                    carrier = propagation.inject(current)  # without message spans the current context still travels
            if wire is not None:
                payload = wire.wrap(payload, is_text, carrier)
        except Exception as exc:
            warn_once("tracing an outbound message", exc)
            if wire is not None:
                payload = wire.wrap_empty(payload, is_text)
        return payload, handle

    def _first_fragment(self, payload: Any, is_text: bool, record: bool, split: bool) -> tuple[Any, SendHandle]:
        """:meth:`send_start` for a message's first fragment: a handle that takes the message's size at its end."""
        replies = self._replies
        if replies is not None:
            replies.sent_to = None
            replies.lane = None  # the full path: it tells which stream the fragment joined (sent_to)
        counted = record and not self._closed and not otel_context.get_value(_SUPPRESS)
        frame, handle = self.send_start(payload, text=is_text, record=record, split=split)
        replies = self._replies
        stream = replies.sent_to if replies is not None else None
        if replies is not None:
            replies.sent_to = None
        # A chunk's bytes are counted by its stream: the rest of the message is added to the stream's size.
        slot = (1 if is_text else 0) if counted and stream is None else -1
        return frame, Fragmented(handle, stream, size(payload) or 0, slot)

    def send_end(
        self, handle: SendHandle, error: Optional[BaseException] = None, *, size: Optional[int] = None
    ) -> None:
        """The outbound message was handed to the transport, or failed with ``error``.

        ``size``: the whole size of a message sent as fragments (see :meth:`send_start`), when
        more than its first fragment's.
        """
        if size is not None and isinstance(handle, Fragmented):
            handle.whole(size, self._counts)
        span, stream = handle.span, handle.stream
        if span is None and stream is None:
            return
        try:
            if span is not None:
                if error is not None:
                    record_error(span, error)
                span.end()
            if stream is not None and (error is not None or handle.ends_stream):
                stream.end(error)
        except Exception as exc:
            warn_once("ending a send span", exc)

    def received(self, wire: Any, *, text: Optional[bool] = None, record: bool = True, type_known: bool = True) -> Any:
        """A message arrived: strip the envelope, start its span and make it current; returns the payload.

        Call :meth:`receive_done` when the application is done with it. ``text``: the frame type, for
        libraries that hand text frames over as bytes (default: ``str`` is text); only that type's envelope
        layout is stripped. ``type_known=False``: the library's return type does not tell the frame type
        (websockets' ``recv(decode=...)``). ``record=False`` (or ``suppress_instrumentation()``) strips only.
        """
        payload = wire
        replies = self._replies
        if replies is not None and replies.orphans:
            replies.end_orphans()
        try:
            carrier = None
            is_text = isinstance(wire, str) if text is None else text
            if self._wire is not None:
                payload, carrier = self._wire.strip(wire, is_text if type_known else None)
                if carrier is None and not self._plain_seen:
                    self._plain_seen = True
                    if self.config.envelope == "always":
                        plain_peer(self.side, self.session_id)
            if record and not self._closed and not current_context().get(_SUPPRESS):
                if self._recording:
                    self._start_receive(payload, carrier, is_text)
                else:  # sampled out: counted, nothing else
                    self._count(2 + is_text, payload)
        except Exception as exc:
            warn_once("tracing an inbound message", exc)
        return payload

    def _start_receive(self, payload: Any, carrier: Optional[dict[str, str]], is_text: bool) -> None:
        body_size = self._count(2 + is_text, payload)
        config = self.config
        if not config.message_spans:
            return
        self._received += 1
        ambient = current_context()
        now = time.monotonic_ns()
        if config.streams:
            replies = self._ensure_replies()
            span, ctx, own, self._recv_ends_stream = replies.inbound(
                self.side == "client", payload, carrier, is_text, self._received, body_size, now, ambient
            )
            if self.side == "server":
                ctx = otel_context.set_value(OWNER, Inbound(replies, ctx, now), ctx)
        else:
            sender = hs.remote(config, carrier)
            span, base = self._spans.receive(payload, is_text, self._received, body_size, sender, ambient)
            ctx, own = trace.set_span_in_context(span, base), True
        self._last_inbound = span.get_span_context()
        self._recv_span = span if own or config.chunk_spans else None
        self._recv = attach(ctx)

    def hand_off(self) -> Optional[Context]:
        """Detach the context :meth:`received` made current, here, and return it (``None`` if it made none).

        For a library that handles each message in another task than the one that received it (Django
        Channels' consumers receive in a task of their own and dispatch in theirs): the adapter attaches the
        returned context where the message is handled, and drops it when that is done, so that its reply
        stream ends then. The receive span still ends at :meth:`receive_done`.
        """
        attached, self._recv = self._recv, None
        if attached is None:
            return None
        attached.detach()
        return attached.ctx

    def receive_done(self, error: Optional[BaseException] = None) -> None:
        """The application finished handling the last message (it asks for the next one).

        ``error`` is an exception the application's handler raised, recorded on the span.
        """
        span, attached, ending = self._recv_span, self._recv, self._recv_ends_stream
        if span is None and attached is None and ending is None:
            return
        self._recv_span = self._recv_ends_stream = None
        replies = self._replies
        try:
            # Detached only in the task (the contextvars.Context) that attached it, and only if
            # nothing was attached since; otherwise left to that task, or to its end.
            if attached is not None and attached.detach():
                self._recv = None
            if span is not None and span.is_recording():
                if error is not None:
                    record_error(span, error)
                span.end()
            if ending is not None:
                ending.end(error)
        except Exception as exc:
            warn_once("ending a receive span", exc)
        if replies is not None:
            # Usually the last reference to the message's context: its reply stream is complete,
            # and is ended right here rather than on the next loop turn.
            replies.flush_pending = True
            attached = None
            replies.flush_pending = False
            if replies.orphans:
                replies.end_orphans()

    # Streams and counts ----------------------------------------------------------

    def _ensure_replies(self) -> Replies:
        if self._replies is None:
            self._replies = Replies(self._spans, self._instruments, self._counts, self.side == "client")
        return self._replies

    def _count(self, slot: int, payload: Any) -> Optional[int]:
        """Count a message and return its size; ``slot``: sent binary 0, sent text 1, received binary 2,
        received text 3 (``_counting.slot``, written out by the callers as this runs for every message)."""
        # ASCII text, the usual message, measured here: a call less on the sampled-out path.
        body_size = len(payload) if type(payload) is str and payload.isascii() else size(payload)
        counts = self._counts
        if counts is not None:
            # The lock's own methods, not ``with``: half the instructions, and this runs for every message.
            _lock()
            try:
                counts[slot] += 1
                if body_size:
                    counts[slot + 4] += body_size
            finally:
                _unlock()
        return body_size

    # Close -------------------------------------------------------------------

    def close_sent(self, code: Optional[int] = None, reason: str = "") -> None:
        """This end sent a close frame (``code`` ``None``: a frame without a status code)."""
        self._close_frames().sent(code, reason)

    def close_received(self, code: Optional[int] = None, reason: str = "") -> None:
        """The peer's close frame arrived. Report frames in the order they went by: the first
        one's sender is the close's initiator."""
        self._close_frames().received(code, reason)

    def _close_frames(self) -> _close.Closing:
        if self._closing is None:
            self._closing = _close.Closing()
        return self._closing

    def closed(
        self,
        *,
        error: Optional[BaseException] = None,
        local_end: bool = False,
        code: Optional[int] = None,
        reason: str = "",
        initiator: Optional[Initiator] = None,
    ) -> None:
        """The connection ended (idempotent): every open span ends, marked as an error if the close was abnormal.

        Report the close frames first (:meth:`close_sent`, :meth:`close_received`); ``docs/semantic-conventions.md``
        says how they give the close's code, initiator and status. ``error``: what ended the connection.
        ``local_end``: this end dropped it on purpose without a closing handshake (an ASGI app that returned).
        A library that tells only at the end passes ``code``, ``reason`` and ``initiator`` (who sent the first
        close frame of a completed closing handshake; ``None``: the TCP connection dropped) instead.
        """
        if self._closed:
            return
        self._closed = True
        if self._replies is not None:
            self._replies.lane = None  # no chunk after the close takes the short way
        try:
            closing = self._close_frames()
            if not closing.reported:
                local_end = _close.summarised(closing, code, reason, initiator) or local_end
            end = _close.outcome(closing, error=error, local_end=local_end)
            failure = (error or str(end.code)) if end.abnormal else None
            span = self._recv_span
            if span is not None and span.is_recording():
                if failure is not None:  # what ended the connection ended the message's handling too
                    record_error(span, failure, f"WebSocket closed with code {end.code}")
                span.end()
            self._recv_span = self._recv_ends_stream = None  # the attachment stays: only its own task may detach it
            if self._replies is not None:
                self._replies.end_all(f"close {end.code}" if end.abnormal else None)
            if self._instruments is not None and self._opened_ns:
                seconds = (time.monotonic_ns() - self._opened_ns) / 1e9
                self._instruments.connection_closed(self._metric_attributes(), end.code, seconds)
            if self._recording:
                self._spans.close(end.code, end.reason, end.initiator, failure, error)
        except Exception as exc:
            warn_once("recording the close", exc)
