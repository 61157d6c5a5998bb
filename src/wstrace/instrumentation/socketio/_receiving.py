"""Socket.IO receive streams: consecutive handled events that carry one sender stream's context are one ``process``
span with the stream attributes (``docs/adapters/socketio.md``, "Streams").

The carrier says nothing of streams: each chunk of a sender's stream carries the stream span's context, exactly as a
single emit carries its own span's, so the first event of a run cannot be told from a single event when it arrives.
Its handler runs in its own ``process`` span, as without streams, and that span stays open after the handler returns
until the run is decided:

* the next event of the same name, in the same namespace, whose carrier holds the same sender span (and that has no
  ack id: a request is never a chunk) joins the run: the span becomes the receive stream's, and each handler call of
  the run runs with it current;
* anything else ends the run: an event of another name or sender span, the idle gap (``stream_idle``, also checked
  by a timer, one per connection at a time), the end marker (``stream_end``: its event is the run's last), a run that
  has lasted ``run_limit`` (the next event starts a new one, linked to it), the connection's close.

The span ends once the run is over and its last handler call has returned, at that return: a run of one is exactly
the span it was without streams (no stream attribute, no histogram), only exported later. Each connection holds at
most one run, one timer and, on a client, its latest emit (a stream in that emit's trace answers it: its time to
first and last chunk start at the emit). The bookkeeping is :class:`wstrace.streams.StreamRecorder`'s.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Callable, Optional, Protocol

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.trace import Span

from wstrace import _handshake as hs, semconv as sc
from wstrace._log import warn_once
from wstrace._replies import safe_predicate
from wstrace._spans import IN, link, record_error
from wstrace.connection import ConnectionTracer
from wstrace.instrumentation._instrumentor import Settings
from wstrace.instrumentation.socketio._common import (
    SYSTEM,
    Call,
    Fold,
    Sender,
    data_size,
    held,
    message_hook,
    process_span,
    remote_parent,
)
from wstrace.streams import StreamRecorder, StreamStats, wall_ns


__all__ = ["ATTR_RECEIVER", "ATTR_RECEIVERS", "InStream", "Receiver", "asked", "close", "folding", "receiver_of"]

ATTR_RECEIVER = "_wstrace_receiver"
"""Client attribute: its :class:`Receiver`."""
ATTR_RECEIVERS = "_wstrace_receivers"
"""Server attribute: engine.io session id → that connection's :class:`Receiver`."""

_METRIC_ATTRIBUTES = {sc.MESSAGING_SYSTEM: SYSTEM, sc.STREAM_DIRECTION: "inbound"}

_LOCK = threading.Lock()
"""Guards the receivers' runs: the threaded server runs each event's handler in a thread of its own."""


class _Cancellable(Protocol):
    def cancel(self) -> None: ...


class Received:
    """A run of received events: the first event's span (the receive stream's, from the second on), its recorder,
    and its handler calls still running."""

    __slots__ = ("active", "carrier", "ctx", "done", "key", "over", "recorder", "returned_ns")

    def __init__(
        self, key: tuple[str, str, int], carrier: dict[str, str], recorder: StreamRecorder, ctx: Context
    ) -> None:
        self.key = key
        """The event's name, its namespace and the sender's span id."""
        self.carrier = carrier
        """The first event's carrier: an event with an equal one has the same sender span."""
        self.recorder = recorder
        self.ctx = ctx
        self.active = 1
        """Handler calls of the run still running (the first is, as the run starts)."""
        self.returned_ns = 0
        """When the latest of its handler calls returned (``time.monotonic_ns()``): where the span ends."""
        self.over = False
        """No event joins it any more."""
        self.done = False

    def settled(self) -> bool:
        """Under the lock: whether the run is over with no handler call running, for the first time (the caller
        then :meth:`finish`\\ es it)."""
        if self.over and self.active == 0 and not self.done:
            self.done = True
            return True
        return False

    def returned(self, error: Optional[BaseException]) -> None:
        """One of its handler calls returned, or raised ``error`` (recorded on the span)."""
        now = time.monotonic_ns()
        if error is not None:
            try:
                record_error(self.recorder.span, error)
            except Exception as exc:
                warn_once("recording a Socket.IO handler's error", exc)
        with _LOCK:
            self.active -= 1
            if now > self.returned_ns:
                self.returned_ns = now
            done = self.settled()
        if done:
            self.finish()

    def finish(self) -> None:
        """End the span at the latest handler return: a stream's with its figures and histograms, a run of one's as
        the span of a single event."""
        try:
            recorder = self.recorder
            if recorder.stats.count > 1:
                recorder.end(end_ns=self.returned_ns)
            else:
                recorder.ended = True
                recorder.span.end(end_time=wall_ns(self.returned_ns) if self.returned_ns else None)
        except Exception as exc:
            warn_once("ending a Socket.IO receive stream", exc)


class Receiver:
    """One connection's receiving end: the run under way (at most one), the timer that ends it at the idle gap (at
    most one), and, on a client, its latest emit."""

    __slots__ = ("asked", "closed", "current", "idle_ns", "limit_ns", "timer")

    def __init__(self, idle: float, limit: float) -> None:
        self.idle_ns = int(idle * 1e9)
        self.limit_ns = int(limit * 1e9)
        self.current: Optional[Received] = None
        self.timer: Optional[_Cancellable] = None
        self.closed = False
        self.asked: Optional[tuple[int, int]] = None
        """The trace id of the client's latest emit, and when it was made (``time.monotonic_ns()``)."""

    def check(self) -> None:
        """The timer: end the run if the idle gap has passed since its last event, else look again then."""
        stale = None
        try:
            with _LOCK:
                self.timer = None
                run = self.current
                if run is None or self.closed:
                    return
                left = self.idle_ns - (time.monotonic_ns() - run.recorder.stats.last_ns)
                if left > 0:
                    self.timer = _later(left * 1e-9, self.check)
                    return
                run.over = True
                self.current = None
                if run.settled():
                    stale = run
        except Exception as exc:
            warn_once("ending an idle Socket.IO receive stream", exc)
        if stale is not None:
            stale.finish()

    def close(self) -> None:
        """The connection closed: the run under way is over (it ends when its handler calls have returned), and the
        timer is cancelled."""
        stale = None
        with _LOCK:
            self.closed = True
            run, self.current = self.current, None
            timer, self.timer = self.timer, None
            if run is not None:
                run.over = True
                if run.settled():
                    stale = run
        if timer is not None:
            try:
                timer.cancel()
            except Exception as exc:  # a loop already closed
                warn_once("cancelling a Socket.IO receive stream's timer", exc)
        if stale is not None:
            stale.finish()


def _later(delay: float, then: Callable[[], None]) -> _Cancellable:
    """Call ``then`` after ``delay`` seconds: on the running event loop, else in a daemon timer thread."""
    try:
        return asyncio.get_running_loop().call_later(delay, then)
    except RuntimeError:  # a thread: the threaded server's and client's handlers
        timer = threading.Timer(delay, then)
        timer.daemon = True
        timer.start()
        return timer


class InStream(Call):
    """Around one handler call of a run: the run's span current while it runs (no span of its own); then the
    call's error recorded on it, and the run ended if it is over and this was its last call running."""

    __slots__ = ("_run", "_token")

    def __init__(self, run: Received, args: tuple[Any, ...]) -> None:
        super().__init__(args)
        self._run = run
        self._token: Optional[object] = None

    def __enter__(self) -> InStream:
        self._token = otel_context.attach(self._run.ctx)
        return self

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]  # logs, never raises, from another context
        self._run.returned(exc)


def _receives(settings: Settings) -> bool:
    """Whether received events may fold into receive streams under these options."""
    config = settings.config
    return config.streams and config.message_spans and not config.chunk_spans and config.stream_idle > 0


def receiver_of(settings: Settings, owner: Any, name: str) -> Receiver:
    """The :class:`Receiver` a client keeps under ``name`` (made the first time)."""
    config = settings.config
    return held(owner, name, lambda: Receiver(config.stream_idle, config.run_limit))


def asked(settings: Settings, client: Any, span: Span) -> None:
    """A client emitted in ``span``: a stream received in that span's trace answers it."""
    if not _receives(settings):
        return
    try:
        span_context = span.get_span_context()
        if span_context.is_valid:
            receiver_of(settings, client, ATTR_RECEIVER).asked = (span_context.trace_id, time.monotonic_ns())
    except Exception as exc:
        warn_once("recording a Socket.IO client's emit", exc)


def close(receiver: Optional[Receiver]) -> None:
    """A connection's close, for its :class:`Receiver` if it has one; never raises."""
    if receiver is not None:
        try:
            receiver.close()
        except Exception as exc:
            warn_once("ending a Socket.IO receive stream at close", exc)


def folding(
    settings: Settings,
    receiver: Callable[[], Optional[Receiver]],
    ct: Optional[ConnectionTracer],
    namespace: str,
    acked: bool,
) -> Optional[Fold]:
    """How an inbound event (in ``namespace``, with an ack id or not) joins its connection's receive stream
    (``receiver()`` gives the connection's :class:`Receiver`, made on first use, ``None`` if it has none); ``None``
    when it cannot: a request (``acked``), streams or event spans off, ``chunk_spans`` (every event keeps its span),
    no idle gap."""
    if acked or ct is None or not _receives(settings):
        return None

    def fold(carrier: dict[str, str], delivered: Any, args: tuple[Any, ...]) -> Optional[Call]:
        found = receiver()
        if found is None or not isinstance(delivered, list) or not delivered:
            return None
        return _chunk(settings, found, carrier, delivered, args, ct, namespace)

    return fold


def _chunk(
    settings: Settings,
    receiver: Receiver,
    carrier: dict[str, str],
    delivered: list[Any],
    args: tuple[Any, ...],
    ct: ConnectionTracer,
    namespace: str,
) -> Optional[Call]:
    """The event as a chunk of the run under way, or as the first of a new run; ``None``: the carrier holds no
    sender span (a span of its own, as without streams)."""
    config = settings.config
    event, arguments = delivered[0], delivered[1:]
    name = str(event)
    sender: Optional[Sender] = None
    hint = receiver.current  # read without the lock: a hint that spares reading the same carrier once per chunk
    if hint is not None and hint.carrier == carrier and hint.key[0] == name and hint.key[1] == namespace:
        key = hint.key
    else:
        sender = hs.remote(config, carrier)
        if sender[1] is None:
            return None
        key = (name, namespace, sender[1].span_id)
    data = None if not arguments else arguments[0] if len(arguments) == 1 else tuple(arguments)
    ends = config.stream_end is not None and safe_predicate(config.stream_end, data)
    size = data_size(data)
    now = time.monotonic_ns()
    stale: Optional[Received] = None
    previous = None
    joined: Optional[Received] = None
    gap = 0
    with _LOCK:
        if receiver.closed:
            return None
        run = receiver.current
        if run is not None:
            stats = run.recorder.stats
            idle = now - stats.last_ns > receiver.idle_ns
            if run.key != key or idle or (receiver.limit_ns and now - stats.first_ns > receiver.limit_ns):
                if run.key == key and not idle:  # the run limit: the next run is linked to this one
                    previous = run.recorder.span.get_span_context()
                run.over = True
                receiver.current = None
                if run.settled():
                    stale = run
            else:
                joined = run
                run.active += 1
                gap = stats.add(size, now)
                if ends:
                    run.over = True
                    receiver.current = None
    if stale is not None:
        stale.finish()
    if joined is not None:
        if gap:
            try:
                joined.recorder.stalled(gap)
            except Exception as exc:  # the call must still be made: the run counts it as running
                warn_once("recording a Socket.IO receive stream's stall", exc)
        return InStream(joined, args)
    # The first event of a run: its span as without streams, kept open for the events that may follow.
    if sender is None:
        sender = hs.remote(config, carrier)
    remote_span = sender[1]
    if remote_span is None:
        return None
    parent, links = remote_parent(config, carrier, ct, sender)
    if previous is not None:
        links = (*links, link(previous, "previous"))
    span, ctx = process_span(settings, "process", event, namespace, parent, links, ct.session_id)
    if config.message_hook is not None:
        message_hook(config, span, list(delivered), IN)  # a copy: the hook cannot change them
    start, answers = now, False
    request = receiver.asked
    if request is not None and request[0] == remote_span.trace_id:  # the sender answers the client's emit
        start, answers = request[1], True
    recorder = StreamRecorder(
        span,
        StreamStats(start, config.stall_threshold),
        instruments=settings.instruments,
        metric_attributes=_METRIC_ATTRIBUTES,
        brief_single=True,
        answers=answers,
    )
    recorder.stats.add(size, now)
    fresh = Received(key, carrier, recorder, ctx)
    displaced: Optional[Received] = None
    with _LOCK:
        if ends or receiver.closed:
            fresh.over = True
        else:
            displaced, receiver.current = receiver.current, fresh  # another thread's run may have started meanwhile
            if displaced is not None:
                displaced.over = True
                if not displaced.settled():
                    displaced = None
            if receiver.timer is None:
                receiver.timer = _later(receiver.idle_ns * 1e-9, receiver.check)
    if displaced is not None:
        displaced.finish()
    return InStream(fresh, args)
