"""Stream metrics: a request answered by many chunks, measured without a span per chunk.

A stream starts at its *request* (the inbound message a server answers, the
message a client sent, or the call of an explicit :func:`stream`) and is fed
each chunk. It records time to first chunk, time to last chunk, chunk count,
bytes, the interval between chunks (mean, max, p50, p95) and stalls (gaps over
a threshold, as span events), onto its span and into histograms.

:func:`stream` is the explicit API; the adapters make streams automatically
(see ``docs/streams.md``).
"""

from __future__ import annotations

import time
import weakref
from types import TracebackType
from typing import Any, Callable, Optional

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import Span, SpanKind

from wstrace._spans import record_error
from wstrace.exceptions import WstraceError
from wstrace.metrics import Instruments
from wstrace.version import __version__


__all__ = ["Stream", "StreamRecorder", "StreamStats", "stream"]

MAX_STALL_EVENTS = 32
"""Stall events recorded on one span; further stalls are only counted."""

_NS = 1e-9
_NO_GAPS: dict[int, int] = {}  # shared and never written to: see StreamStats.add


def gap_bucket(gap_ns: int) -> int:
    """The key of a gap in a stream's histogram of gaps (log-linear, as HDR Histogram's): gaps under 128 ns are
    their own key; above, 64 buckets of equal width per power of two. Keys sort as the gaps do.

    ``StreamStats.add_gap``, on every chunk's path, writes it out.
    """
    shift = gap_ns.bit_length() - 7
    return gap_ns if shift <= 0 else (shift << 6) + (gap_ns >> shift)


def bucket_gap(key: int) -> int:
    """The middle of the gaps of a :func:`gap_bucket` key, in ns: within half a bucket, 0.8 %, of each of them."""
    if key < 128:
        return key
    shift = (key >> 6) - 1
    return ((key - (shift << 6)) << shift) + (1 << (shift - 1))


class StreamStats:
    """Timing and size of one stream's chunks. Pure bookkeeping, no telemetry."""

    __slots__ = (
        "count",
        "first_ns",
        "gaps",
        "last_ns",
        "max_gap_ns",
        "size",
        "stall_limit",
        "stall_ns",
        "stalls",
        "start_ns",
    )

    def __init__(self, start_ns: int, stall_threshold: float) -> None:
        self.start_ns = start_ns
        self.first_ns = 0
        self.last_ns = 0
        self.count = 0
        self.size = 0
        self.max_gap_ns = 0
        self.stall_ns = int(stall_threshold * 1e9) if stall_threshold > 0 else 0
        self.stall_limit = self.stall_ns or 1 << 62
        """The longest gap that is not a stall, in ns (one comparison on a chunk's path)."""
        self.stalls = 0
        self.gaps = _NO_GAPS
        """Gaps between chunks: how many in each :func:`gap_bucket`. Allocated with the second chunk (most
        replies have one); a fixed resolution rather than a sample, so a stream of any length costs a few hundred
        keys at most, and no sort at its end."""

    def add(self, size: int, now_ns: int) -> int:
        """Count a chunk; returns the gap before it in ns if that gap was a stall, else 0.

        Called for every chunk of every stream: kept to a few attribute reads and writes.
        """
        count = self.count = self.count + 1
        self.size += size
        if count == 1:
            self.first_ns = self.last_ns = now_ns
            return 0
        gap = now_ns - self.last_ns
        self.last_ns = now_ns
        if count == 2:
            self.gaps = {}
        self.add_gap(gap)
        stall_ns = self.stall_ns
        if stall_ns and gap > stall_ns:
            self.stalls += 1
            return gap
        return 0

    def add_gap(self, gap: int) -> None:
        """Count a gap between two chunks, in ns, from the second chunk on (the stream then has its own ``gaps``).

        ``Replies.again`` counts a chunk itself and calls this; the lane in ``ConnectionTracer.send_start``, which
        every chunk of a long stream takes, writes it out (in pure Python the call would add about 470 instructions
        a chunk, 6 % of wstrace's own).
        """
        if gap > self.max_gap_ns:
            self.max_gap_ns = gap
        shift = gap.bit_length() - 7  # gap_bucket(gap), written out
        key = gap if shift <= 0 else (shift << 6) + (gap >> shift)
        gaps = self.gaps
        gaps[key] = gaps.get(key, 0) + 1

    @property
    def time_to_first_chunk(self) -> Optional[float]:
        return (self.first_ns - self.start_ns) * _NS if self.count else None

    @property
    def time_to_last_chunk(self) -> Optional[float]:
        return (self.last_ns - self.start_ns) * _NS if self.count else None

    @property
    def max_interval_ns(self) -> int:
        """The largest gap between two chunks, in ns (0 before the second chunk)."""
        return self.max_gap_ns

    @property
    def mean_interval(self) -> Optional[float]:
        return (self.last_ns - self.first_ns) * _NS / (self.count - 1) if self.count > 1 else None

    def _percentiles(self, *qs: float) -> list[Optional[float]]:
        """Nearest-rank percentiles of the gaps, each the middle of its bucket (never above the largest gap); one
        whose rank is the last is the largest gap, exactly."""
        gaps = self.gaps
        if not gaps:
            return [None for _ in qs]
        n = sum(gaps.values())
        ranks = [max(1, min(n, int(q * n + 0.999999))) for q in qs]
        found: dict[int, float] = {}
        seen = 0
        for key in sorted(gaps):
            seen += gaps[key]
            for rank in ranks:
                if rank <= seen and rank not in found:
                    found[rank] = (self.max_gap_ns if rank == n else min(bucket_gap(key), self.max_gap_ns)) * _NS
            if len(found) == len(set(ranks)):
                break
        return [found[rank] for rank in ranks]

    def attributes(self) -> dict[str, Any]:
        """Span attributes summarising the stream (``wstrace.stream.*``)."""
        result: dict[str, Any] = {"wstrace.stream.chunk_count": self.count, "wstrace.stream.size": self.size}
        if self.count:
            result["wstrace.stream.time_to_first_chunk"] = self.time_to_first_chunk
            result["wstrace.stream.time_to_last_chunk"] = self.time_to_last_chunk
        if self.count > 1:
            result["wstrace.stream.chunk_interval.mean"] = self.mean_interval
            result["wstrace.stream.chunk_interval.max"] = self.max_interval_ns * _NS
            p50, p95 = self._percentiles(0.50, 0.95)
            result["wstrace.stream.chunk_interval.p50"] = p50
            result["wstrace.stream.chunk_interval.p95"] = p95
        result["wstrace.stream.stalls"] = self.stalls
        return result


class StreamRecorder:
    """A stream bound to a span: feed it chunks, then end it once.

    Ending records the summary on the span, ends the span at the last chunk
    (or now, if it had none), and records the histograms: only time to first
    chunk for a one-chunk stream made with ``brief_single`` (automatic replies).
    """

    __slots__ = (
        "_answers",
        "_body_size",
        "_brief_single",
        "_genai",
        "_instruments",
        "_metric_attributes",
        "_on_end",
        "ended",
        "span",
        "stats",
    )

    def __init__(
        self,
        span: Span,
        stats: StreamStats,
        *,
        instruments: Optional[Instruments] = None,
        metric_attributes: Optional[dict[str, Any]] = None,
        gen_ai_operation: Optional[str] = None,
        body_size: bool = False,
        on_end: Optional[Callable[[StreamStats], None]] = None,
        brief_single: bool = False,
        answers: bool = True,
    ) -> None:
        self.span = span
        self.stats = stats
        self.ended = False
        self._instruments = instruments
        self._metric_attributes = metric_attributes or {}
        self._genai = gen_ai_operation
        self._body_size = body_size
        self._on_end = on_end
        self._brief_single = brief_single
        self._answers = answers
        """The stream answers a request, so its time to first and last chunk mean something. A run of
        sends under one context answers nothing: only its chunks, bytes and intervals are recorded."""

    def chunk(self, size: int = 0, now_ns: Optional[int] = None) -> None:
        """Count one chunk of ``size`` bytes, arriving or sent now."""
        if self.ended:
            return
        now = time.monotonic_ns() if now_ns is None else now_ns
        gap = self.stats.add(size, now)
        if gap:
            self.stalled(gap)

    def stalled(self, gap: int) -> None:
        """The chunk just counted came after a stall of ``gap`` ns: an event on the span, up to a limit.

        For callers that feed ``stats.add`` themselves (the reply and run chunks, which know the stream is open).
        """
        stats = self.stats
        if stats.stalls <= MAX_STALL_EVENTS and self.span.is_recording():
            self.span.add_event(
                "wstrace.stream.stall",
                {"wstrace.stream.stall.duration": gap * _NS, "wstrace.stream.chunk.index": stats.count},
            )

    def end(self, error: Optional[BaseException | str] = None, *, at_last_chunk: bool = False, end_ns: int = 0) -> None:
        """End the stream; idempotent. ``error`` marks it failed (partial metrics are kept). The span ends at
        ``end_ns`` (a ``time.monotonic_ns()`` reading) when given, else at its last chunk (``at_last_chunk``) or
        now."""
        if self.ended:
            return
        self.ended = True
        stats = self.stats
        span = self.span
        if span.is_recording():
            span.set_attributes(self._span_attributes())
            if error is not None:
                record_error(span, error)
        if end_ns:
            span.end(end_time=wall_ns(end_ns))
        elif at_last_chunk and stats.count:
            span.end(end_time=wall_ns(stats.last_ns))
        else:
            span.end()
        self._record(error)
        if self._on_end is not None:
            self._on_end(stats)

    def _span_attributes(self) -> dict[str, Any]:
        attributes = self.stats.attributes()
        if not self._answers:
            attributes.pop("wstrace.stream.time_to_first_chunk", None)
            attributes.pop("wstrace.stream.time_to_last_chunk", None)
        if self._body_size:
            # A stream of WebSocket messages: its body is all of their payloads.
            attributes["messaging.message.body.size"] = self.stats.size
        if self._genai is not None:
            attributes["gen_ai.request.stream"] = True
            if self.stats.count:
                attributes["gen_ai.response.time_to_first_chunk"] = self.stats.time_to_first_chunk
        return attributes

    def _record(self, error: Optional[BaseException | str]) -> None:
        instruments = self._instruments
        stats = self.stats
        if instruments is None or not stats.count:
            return
        attributes = self._metric_attributes
        if error is not None:
            attributes = {
                **attributes,
                "error.type": type(error).__qualname__ if isinstance(error, BaseException) else error,
            }
        # Recorded in the stream span's context, whatever is current where the stream ends (often
        # nothing: a reply ends when its handler asks for the next message), so that exemplars
        # point at the stream's own trace.
        ctx = trace.set_span_in_context(self.span)
        if not self._answers:
            if stats.count > 1:  # a run of one message is a message, already counted
                instruments.stream_chunks.record(stats.count, attributes, ctx)
                instruments.stream_size.record(stats.size, attributes, ctx)
                instruments.stream_interval.record(stats.mean_interval or 0.0, attributes, ctx)
                if stats.stalls:
                    instruments.stream_stalls.add(stats.stalls, attributes, ctx)
            return
        instruments.stream_ttfc.record(stats.time_to_first_chunk or 0.0, attributes, ctx)
        if self._brief_single and stats.count == 1:
            # A one-message reply is a response, not a stream: its TTFC is its response time, and the
            # other histograms would only repeat it (TTLC = TTFC, one chunk, bytes already counted by
            # wstrace.message.size) at 4-7 µs a record, as much as the send itself.
            return
        instruments.stream_ttlc.record(stats.time_to_last_chunk or 0.0, attributes, ctx)
        instruments.stream_chunks.record(stats.count, attributes, ctx)
        instruments.stream_size.record(stats.size, attributes, ctx)
        if stats.count > 1:
            instruments.stream_interval.record(stats.mean_interval or 0.0, attributes, ctx)
        if stats.stalls:
            instruments.stream_stalls.add(stats.stalls, attributes, ctx)
        if self._genai is not None:
            genai = {"gen_ai.operation.name": self._genai}
            if error is not None:
                genai["error.type"] = str(attributes["error.type"])
            instruments.genai_ttfc.record(stats.time_to_first_chunk or 0.0, genai, ctx)
            instruments.genai_duration.record(stats.time_to_last_chunk or 0.0, genai, ctx)
            for key, times in stats.gaps.items():
                seconds = min(bucket_gap(key), stats.max_gap_ns) * _NS
                for _ in range(times):
                    instruments.genai_tpoc.record(seconds, genai, ctx)


# The wall clock and the monotonic clock differ by a constant for a process's
# lifetime (barring clock steps); spans need wall-clock ends.
_OFFSET_NS = time.time_ns() - time.monotonic_ns()


def wall_ns(monotonic_ns: int) -> int:
    """The wall-clock time (as spans use) of a ``time.monotonic_ns()`` reading."""
    return monotonic_ns + _OFFSET_NS


class Stream:
    """What :func:`stream` returns: an explicit stream, to feed chunks and end (or use as a context manager)."""

    __slots__ = ("_stream",)

    def __init__(self, stream: StreamRecorder) -> None:
        self._stream = stream

    @property
    def span(self) -> Span:
        """The stream's span, to add attributes or parent work on."""
        return self._stream.span

    @property
    def stats(self) -> StreamStats:
        return self._stream.stats

    def chunk(self, size: int = 0) -> None:
        """Count one chunk of ``size`` bytes; cheap enough to call for every token or audio frame."""
        self._stream.chunk(size)

    def end(self, error: Optional[BaseException | str] = None) -> None:
        """End the stream now (also done on leaving the ``with`` block)."""
        self._stream.end(error)

    def __enter__(self) -> Stream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stream.end(exc)


def stream(
    name: str,
    *,
    tracer_provider: Optional[trace.TracerProvider] = None,
    meter_provider: Optional[MeterProvider] = None,
    context: Optional[Context] = None,
    gen_ai_operation: Optional[str] = None,
    stall_threshold: float = 1.0,
    attributes: Optional[dict[str, Any]] = None,
    metric_attributes: Optional[dict[str, Any]] = None,
) -> Stream:
    """Start an explicit stream now: its span starts, and the clock for time to first chunk.

    Use it as a context manager, or call ``end()``::

        with wstrace.stream("chat gpt-4o", gen_ai_operation="chat") as s:
            async for token in llm.stream(prompt):
                s.chunk(len(token))

    ``gen_ai_operation`` (``chat``, ``speech_to_text``, ``text_to_speech``…)
    also records the GenAI client metrics and ``gen_ai.response.time_to_first_chunk``.
    The span is a child of ``context`` (default: the current context).
    """
    if not isinstance(name, str) or not name:
        raise WstraceError("a stream needs a non-empty name")
    if stall_threshold < 0:
        raise WstraceError("stall_threshold must be >= 0 seconds")
    tracer = trace.get_tracer("wstrace", __version__, tracer_provider)
    span_attributes = dict(attributes or {})
    if gen_ai_operation is not None:
        span_attributes.setdefault("gen_ai.operation.name", gen_ai_operation)
    span = tracer.start_span(
        name,
        context=context,
        kind=SpanKind.CLIENT if gen_ai_operation else SpanKind.INTERNAL,
        attributes=span_attributes,
    )
    instruments = _instruments_for(meter_provider)
    meter_attributes = dict(metric_attributes or {})
    if gen_ai_operation is not None:
        meter_attributes.setdefault("gen_ai.operation.name", gen_ai_operation)
    return Stream(
        StreamRecorder(
            span,
            StreamStats(time.monotonic_ns(), stall_threshold),
            instruments=instruments,
            metric_attributes=meter_attributes,
            gen_ai_operation=gen_ai_operation,
        )
    )


_INSTRUMENTS: weakref.WeakKeyDictionary[MeterProvider, Instruments] = weakref.WeakKeyDictionary()
_GLOBAL_INSTRUMENTS: list[Instruments] = []


def _instruments_for(meter_provider: Optional[MeterProvider]) -> Instruments:
    """One set of instruments per meter provider (creating them costs more than a stream)."""
    if meter_provider is None:
        # A meter from the global provider follows it even when it is set later.
        if not _GLOBAL_INSTRUMENTS:
            _GLOBAL_INSTRUMENTS.append(Instruments(None))
        return _GLOBAL_INSTRUMENTS[0]
    found = _INSTRUMENTS.get(meter_provider)
    if found is None:
        found = _INSTRUMENTS[meter_provider] = Instruments(meter_provider)
    return found
