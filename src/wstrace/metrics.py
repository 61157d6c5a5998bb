"""OpenTelemetry instruments: names, units and bucket boundaries in one place.

Every name is listed in ``docs/semantic-conventions.md``. Durations are in
seconds and sizes in bytes, with explicit bucket boundaries because the SDK's
defaults are millisecond-scale. Metric attributes stay low-cardinality: route,
side, message type, close code, stream direction, GenAI operation; never a
session id.
"""

from __future__ import annotations

import weakref
from typing import Any, Optional

from opentelemetry import metrics
from opentelemetry.metrics import Counter, Histogram, Meter, MeterProvider, UpDownCounter

from wstrace._counting import MessageTotals
from wstrace.version import __version__


__all__ = ["Instruments"]

# GenAI client buckets (semantic conventions v1.41), used for request-scale durations.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
# Finer buckets for gaps between chunks, which are often a few milliseconds.
INTERVAL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
# Connection lifetimes run from milliseconds to hours.
CONNECTION_BUCKETS = (0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0)
HANDSHAKE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CHUNK_BUCKETS = tuple(float(2**n) for n in range(17))  # 1 … 65536 chunks
SIZE_BUCKETS = tuple(float(4**n) for n in range(13))  # 1 B … 16 MiB


class Instruments:
    """The instruments one meter provider gets; shared by every connection it traces."""

    def __init__(self, meter_provider: Optional[MeterProvider] = None) -> None:
        meter: Meter = metrics.get_meter(
            "wstrace", __version__, meter_provider, schema_url="https://opentelemetry.io/schemas/1.26.0"
        )
        self.active_connections: UpDownCounter = meter.create_up_down_counter(
            "wstrace.connection.active", unit="{connection}", description="WebSocket connections currently open."
        )
        self.connection_duration: Histogram = meter.create_histogram(
            "wstrace.connection.duration",
            unit="s",
            description="Time from open to close of a WebSocket connection.",
            explicit_bucket_boundaries_advisory=CONNECTION_BUCKETS,
        )
        self.handshake_duration: Histogram = meter.create_histogram(
            "wstrace.handshake.duration",
            unit="s",
            description="Time from the upgrade request to the 101 response.",
            explicit_bucket_boundaries_advisory=HANDSHAKE_BUCKETS,
        )
        self.totals = _totals(meter, meter_provider)
        self.closes: Counter = meter.create_counter(
            "wstrace.connection.close.count", unit="{connection}", description="Closed connections by close code."
        )
        self.stream_ttfc: Histogram = meter.create_histogram(
            "wstrace.stream.time_to_first_chunk",
            unit="s",
            description="Time from the request to the first chunk of its reply stream.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.stream_ttlc: Histogram = meter.create_histogram(
            "wstrace.stream.time_to_last_chunk",
            unit="s",
            description="Time from the request to the last chunk of its reply stream.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.stream_interval: Histogram = meter.create_histogram(
            "wstrace.stream.chunk_interval",
            unit="s",
            description="Mean time between consecutive chunks of a stream, one value per stream.",
            explicit_bucket_boundaries_advisory=INTERVAL_BUCKETS,
        )
        self.stream_chunks: Histogram = meter.create_histogram(
            "wstrace.stream.chunks",
            unit="{chunk}",
            description="Chunks in a stream.",
            explicit_bucket_boundaries_advisory=CHUNK_BUCKETS,
        )
        self.stream_size: Histogram = meter.create_histogram(
            "wstrace.stream.size",
            unit="By",
            description="Bytes in a stream.",
            explicit_bucket_boundaries_advisory=SIZE_BUCKETS,
        )
        self.stream_stalls: Counter = meter.create_counter(
            "wstrace.stream.stalls", unit="{stall}", description="Gaps between chunks longer than the stall threshold."
        )
        # The released GenAI names (semantic conventions v1.41), for streams that are AI stages.
        self.genai_ttfc: Histogram = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk",
            unit="s",
            description="Time to receive the first chunk of a streaming GenAI operation.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.genai_tpoc: Histogram = meter.create_histogram(
            "gen_ai.client.operation.time_per_output_chunk",
            unit="s",
            description="Time between consecutive chunks of a streaming GenAI operation, one value per chunk.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.genai_duration: Histogram = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="Duration of a GenAI operation.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )

    def connection_opened(self, attributes: dict[str, Any], handshake_seconds: float) -> None:
        self.handshake_duration.record(handshake_seconds, attributes)
        self.active_connections.add(1, attributes)

    def connection_closed(self, attributes: dict[str, Any], code: Optional[int], seconds: float) -> None:
        """``code`` is the close span's: ``None`` (no ``websocket.close.code``) when the end dropped it on purpose."""
        self.active_connections.add(-1, attributes)
        closing = {**attributes, "websocket.close.code": code} if code is not None else attributes
        self.connection_duration.record(seconds, closing)
        self.closes.add(1, closing)


_TOTALS: weakref.WeakKeyDictionary[MeterProvider, MessageTotals] = weakref.WeakKeyDictionary()
_GLOBAL_TOTALS: list[MessageTotals] = []


def _totals(meter: Meter, meter_provider: Optional[MeterProvider]) -> MessageTotals:
    """The message totals of a meter provider, observed by its two message counters.

    One per provider: a second registration of an observable counter under the same name is
    refused by the SDK (with a warning), so every ``Instruments`` of a provider shares these.
    """
    found = _GLOBAL_TOTALS[0] if meter_provider is None and _GLOBAL_TOTALS else None
    if meter_provider is not None:
        found = _TOTALS.get(meter_provider)
    if found is not None:
        return found
    totals = MessageTotals()
    # Observed, not added: the counts are plain integers that every collection reads (see _counting).
    meter.create_observable_counter(
        "wstrace.message.count",
        callbacks=[totals.observe_messages],
        unit="{message}",
        description="WebSocket data messages sent or received.",
    )
    meter.create_observable_counter(
        "wstrace.message.size",
        callbacks=[totals.observe_bytes],
        unit="By",
        description="Payload bytes of WebSocket data messages, without the envelope.",
    )
    if meter_provider is None:
        _GLOBAL_TOTALS.append(totals)
    else:
        _TOTALS[meter_provider] = totals
    return totals
