"""Socket.IO streams: a run of emits of one event to one destination is one ``send`` span with the stream metrics.

The owner of a stream is what the emits answer (``docs/adapters/socketio.md``, "Streams"):

* the inbound event being handled (:class:`Handled`, current while its handler runs, and in the tasks it starts):
  its streams answer it, so their time to first and last chunk start when the handler started; they end when
  the handler returns;
* otherwise the current span of the application (a run under it), or nothing (a context-less task's run), kept
  per emitter (server or client) in :class:`Runs`: a run answers nothing (no time to first or last chunk).

An owner has at most one open stream: an emit of another event or to another destination ends it and starts
the next. A stream also ends at the idle gap (``stream_idle``), the end marker (``stream_end(data)``), when a run
has lasted ``run_limit``, and when the emitter's connection (a client's, or any of a server's) closes. The
bookkeeping is :class:`wstrace.streams.StreamRecorder`'s, as for WebSocket streams.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from typing import Any, Optional, Sequence

from opentelemetry import context as otel_context, trace
from opentelemetry.trace import Span, SpanKind

from wstrace import semconv as sc
from wstrace._log import warn_once
from wstrace._replies import safe_predicate
from wstrace._spans import OUT, record_error
from wstrace.connection import ConnectionTracer
from wstrace.instrumentation._instrumentor import Settings, is_instrumentation_enabled
from wstrace.instrumentation.socketio._common import (
    RECIPIENTS,
    ROOMS,
    SYSTEM,
    Call,
    Emit,
    EmitCall,
    InSpan,
    attributes,
    carrier_arg,
    data_size,
    event_payload,
    given,
    held,
    message_hook,
    rooms_of,
)
from wstrace.instrumentation.socketio._receiving import InStream
from wstrace.streams import StreamRecorder, StreamStats


__all__ = ["Handled", "Runs", "chunk_emit", "closed", "fold", "handled", "handling_streams"]

ATTR_RUNS = "_wstrace_runs"
"""Emitter (server or client) attribute: its :class:`Runs`."""

_MAX_RUNS = 1024
"""Open runs per emitter; beyond it the oldest ends at its last chunk."""
_SWEEP_FLOOR = 64

_METRIC_ATTRIBUTES = {sc.MESSAGING_SYSTEM: SYSTEM, sc.STREAM_DIRECTION: "outbound"}

_LOCK = threading.Lock()
"""Guards the owners' open streams (a threaded handler may emit from several threads)."""


class Open:
    """An open stream: its recorder, its destination, the context its chunks are sent in and their carrier."""

    __slots__ = ("carrier", "context", "count", "destination", "encoded", "recipients", "recorder")

    def __init__(
        self, recorder: StreamRecorder, destination: tuple[Any, ...], context: otel_context.Context, count: bool
    ) -> None:
        self.recorder = recorder
        self.destination = destination
        self.context = context
        self.count = count
        """Whether the stream span counts its recipients (a server's emits)."""
        self.recipients = 0
        """The most recipients one of its emits reached."""
        # The carrier is the stream span's, encoded once for all its chunks.
        self.carrier = carrier_arg(context) if recorder.span.get_span_context().is_valid else None
        self.encoded = Emit(recorder.span, context, self.carrier).encoded() if self.carrier is not None else None

    def end(self, error: Optional[BaseException] = None) -> None:
        try:
            self.recorder.end(error, at_last_chunk=error is None)
        except Exception as exc:
            warn_once("ending a Socket.IO stream", exc)


class Owner:
    """What a stream answers: the holder of at most one open stream."""

    __slots__ = ("answers", "open", "start_ns")

    def __init__(self, start_ns: int, answers: bool) -> None:
        self.start_ns = start_ns
        self.answers = answers
        self.open: Optional[Open] = None

    def end(self) -> None:
        with _LOCK:
            found, self.open = self.open, None
        if found is not None:
            found.end()


class Handled(Owner):
    """The inbound event whose handler is running: its emits are its reply streams."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        super().__init__(time.monotonic_ns(), True)
        self.done = False


_HANDLED: contextvars.ContextVar[Optional[Handled]] = contextvars.ContextVar("wstrace_socketio_handled", default=None)


class handled(Call):
    """Around a handler (``inner``, the handler's span call): the event it handles owns the streams its emits make,
    which end when it returns."""

    __slots__ = ("_emitter", "_inner", "_owner", "_token")

    def __init__(self, inner: Call, emitter: Any) -> None:
        super().__init__(inner.args, inner.kwargs)
        self._inner = inner
        self._emitter = emitter
        self._owner = Handled()
        self._token: Optional[contextvars.Token[Optional[Handled]]] = None

    def __enter__(self) -> handled:
        try:
            # The emitter received an event: its context-less run is over (a worker's answers to successive
            # requests are separate runs, as on WebSocket).
            runs = self._emitter.__dict__.get(ATTR_RUNS)
            if runs is not None:
                runs.end(0)
        except Exception as error:
            warn_once("ending a Socket.IO run", error)
        self._inner.__enter__()
        self._token = _HANDLED.set(self._owner)
        return self

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        try:
            self._owner.done = True
            self._owner.end()
            if self._token is not None:
                _HANDLED.reset(self._token)
        except Exception as error:  # another context: leave it
            warn_once("ending a Socket.IO handler's streams", error)
        self._inner.__exit__(exc_type, exc, tb)


class Runs:
    """An emitter's runs: emits outside a handler, per owning span (0: no context)."""

    __slots__ = ("owners", "sweep_at")

    def __init__(self) -> None:
        self.owners: dict[int, Owner] = {}
        self.sweep_at = _SWEEP_FLOOR

    def owner(self, key: int) -> Owner:
        owners = self.owners
        found = owners.get(key)
        if found is None:
            if len(owners) >= self.sweep_at:
                # Owners whose run ended (idle timer, end marker) are dropped, amortised: the next sweep waits
                # until the registry has doubled.
                for old in [k for k, o in owners.items() if o.open is None or o.open.recorder.ended]:
                    owners.pop(old, None)
                self.sweep_at = max(_SWEEP_FLOOR, 2 * len(owners))
            found = owners[key] = Owner(0, False)
            if len(owners) > _MAX_RUNS:
                oldest = next(iter(owners))
                owners.pop(oldest).end()
        return found

    def end(self, key: int) -> None:
        owner = self.owners.pop(key, None)
        if owner is not None:
            owner.end()

    def end_all(self) -> None:
        owners, self.owners = self.owners, {}
        for owner in owners.values():
            owner.end()


def _runs(emitter: Any) -> Runs:
    return held(emitter, ATTR_RUNS, Runs)


def closed(emitter: Any) -> None:
    """A connection of ``emitter`` closed: its runs end (a server's runs may go to any of its connections)."""
    try:
        runs = emitter.__dict__.get(ATTR_RUNS)
        if runs is not None:
            runs.end_all()
    except Exception as exc:
        warn_once("ending a Socket.IO emitter's runs", exc)


def _send_attributes(
    event: Any, namespace: str, rooms: Optional[list[str]], session_id: Optional[str]
) -> dict[str, Any]:
    attrs = attributes(event, namespace, "send", session_id)
    if rooms:
        attrs[ROOMS] = rooms
        attrs[sc.MESSAGING_DESTINATION_NAME] = rooms[0] if len(rooms) == 1 else ",".join(rooms)
    return attrs


class chunk_emit(EmitCall):
    """Around an emit that is a chunk of a stream: the stream span (or, with ``chunk_spans``, the chunk's own
    span under it) current for the emit's sends, then the chunk counted."""

    __slots__ = ("_chunk", "_data", "_ends", "_open", "_owner")

    def __init__(
        self,
        settings: Settings,
        owner: Owner,
        stream: Open,
        data: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        chunk: Optional[tuple[str, dict[str, Any]]],
    ) -> None:
        super().__init__(args, kwargs)
        self._owner = owner
        self._open = stream
        self._data = data
        config = settings.config
        self._ends = config.stream_end is not None and safe_predicate(config.stream_end, data)
        self._chunk = None
        if chunk is not None:  # chunk_spans: a span per emit, under the stream's
            self._chunk = settings.tracer.start_span(
                chunk[0], stream.context, kind=SpanKind.PRODUCER, attributes=chunk[1]
            )
            self.emit = Emit(self._chunk, trace.set_span_in_context(self._chunk, stream.context))
        else:
            self.emit = Emit(stream.recorder.span, stream.context, stream.carrier, stream.encoded)

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        stream = self._open
        try:
            recorder = stream.recorder
            if self._chunk is not None:
                if self._open.count and self._chunk.is_recording():
                    self._chunk.set_attribute(RECIPIENTS, self.emit.recipients)
                if exc is not None:
                    record_error(self._chunk, exc)
                self._chunk.end()
            ended = exc is not None or self._ends
            with _LOCK:
                if not recorder.ended:
                    gap = recorder.stats.add(data_size(self._data), time.monotonic_ns())
                    if gap:
                        recorder.stalled(gap)
                    if stream.count and self.emit.recipients > stream.recipients and recorder.span.is_recording():
                        stream.recipients = self.emit.recipients
                        recorder.span.set_attribute(RECIPIENTS, stream.recipients)
                if ended and self._owner.open is stream:
                    self._owner.open = None
            if ended:
                stream.end(exc)
        except Exception as error:
            warn_once("counting a Socket.IO stream chunk", error)
        self.leave()


def streaming(
    settings: Settings,
    emitter: Any,
    event: Any,
    namespace: str,
    room: Any,
    data: Any,
    session_id: Optional[str],
    count: bool,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> chunk_emit:
    """The emit as a chunk of its owner's stream to its destination, opening the stream if none is open."""
    current = otel_context.get_current()
    handling = _HANDLED.get()
    owner: Owner
    if handling is not None and not handling.done:
        owner = handling
    else:  # a run, per current span (a task the handler started and that outlived it: the handler's span)
        span_context = trace.get_current_span(current).get_span_context()
        owner = _runs(emitter).owner(span_context.span_id if span_context.is_valid else 0)
    rooms = rooms_of(room)
    destination = (str(event), namespace, tuple(rooms) if rooms else None)
    name = f"send {event} {namespace}"
    config = settings.config
    now = time.monotonic_ns()
    stale: Optional[Open] = None
    started: Optional[Span] = None
    with _LOCK:
        stream = owner.open
        if stream is not None:
            stats = stream.recorder.stats
            if (
                stream.recorder.ended
                or stream.destination != destination
                or (stats.count and now - stats.last_ns > config.stream_idle * 1e9)
                or (
                    not owner.answers
                    and config.run_limit
                    and stats.count
                    and now - stats.first_ns > config.run_limit * 1e9
                )
            ):
                stale, stream = stream, None
        if stream is None:
            attrs = _send_attributes(event, namespace, rooms, session_id)
            if count:
                attrs[RECIPIENTS] = 0
            span = started = settings.tracer.start_span(name, current, kind=SpanKind.PRODUCER, attributes=attrs)
            recorder = StreamRecorder(
                span,
                StreamStats(owner.start_ns if owner.answers else now, config.stall_threshold),
                instruments=settings.instruments,
                metric_attributes=_METRIC_ATTRIBUTES,
                brief_single=True,
                answers=owner.answers,
            )
            stream = owner.open = Open(recorder, destination, trace.set_span_in_context(span, current), count)
            if not owner.answers:
                _watch(owner, stream, config.stream_idle)
    if stale is not None:
        stale.end()
    if started is not None and config.message_hook is not None:  # a stream's span: with its first emit, as on WebSocket
        message_hook(config, started, event_payload(event, data), OUT)
    chunk = (name, _send_attributes(event, namespace, rooms, session_id)) if config.chunk_spans else None
    return chunk_emit(settings, owner, stream, data, args, kwargs, chunk)


def _watch(owner: Owner, stream: Open, idle: float) -> None:
    """End a run at the idle gap even if nothing is emitted after it: checked once per ``stream_idle``."""
    if idle <= 0:
        return

    def check() -> None:
        try:
            recorder = stream.recorder
            if recorder.ended:
                return
            left = idle - (time.monotonic_ns() - recorder.stats.last_ns) * 1e-9 if recorder.stats.count else idle
            if left > 0:
                _later(left, check)
                return
            with _LOCK:
                if owner.open is stream:
                    owner.open = None
            stream.end()
        except Exception as exc:
            warn_once("ending an idle Socket.IO run", exc)

    _later(idle, check)


def _later(delay: float, then: Any) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # a thread: a daemon timer
        timer = threading.Timer(delay, then)
        timer.daemon = True
        timer.start()
        return
    loop.call_later(delay, then)


def fold(
    settings: Settings,
    emitter: Any,
    names: Sequence[str],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    ct: Optional[ConnectionTracer] = None,
    count: bool = True,
) -> Optional[tuple[chunk_emit, dict[str, Any]]]:
    """An emit (a server's or a client's, whose parameters are ``names``) as a chunk of a stream, with its
    arguments by name; ``None`` when it is not one: streams off, no event spans, or an emit with an ack callback
    (a request, whose ack stays in its own emit's trace)."""
    config = settings.config
    if not (config.streams and config.message_spans) or not is_instrumentation_enabled():
        return None
    try:
        found = given(names, args, kwargs)
        if found.get("callback") is not None:
            return None
        call = streaming(
            settings,
            emitter,
            found.get("event"),
            found.get("namespace") or "/",
            found.get("to") or found.get("room"),
            found.get("data"),
            ct.session_id if ct is not None else None,
            count,
            args,
            kwargs,
        )
    except Exception as exc:
        warn_once("starting a Socket.IO stream chunk", exc)
        return None
    return call, found


def handling_streams(settings: Settings, emitter: Any, inner: Optional[Call]) -> Optional[Call]:
    """Around a handler of ``emitter`` (server or client): ``inner`` (its span), and, with streams on, the event
    owning its emits' streams."""
    config = settings.config
    if inner is None or not (config.streams and config.message_spans) or not isinstance(inner, (InSpan, InStream)):
        return inner
    return handled(inner, emitter)
