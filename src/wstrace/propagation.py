"""Handshake and message propagation through the global propagator.

Nothing here creates spans. Using ``opentelemetry.propagate`` means W3C trace
context and baggage work by default, and B3 or any other propagator works
once configured with ``OTEL_PROPAGATORS``.
"""

from __future__ import annotations

from typing import Optional

from opentelemetry import propagate, trace
from opentelemetry.context import Context


__all__ = ["extract", "fields", "inject", "remote_span_context"]


def fields() -> set[str]:
    """The carrier keys the global propagator reads and writes."""
    return propagate.get_global_textmap().fields


def inject(context: Optional[Context] = None) -> dict[str, str]:
    """Return a fresh carrier holding ``context`` (the current one by default)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return carrier


def extract(carrier: dict[str, str]) -> Context:
    """Return the context a carrier describes; an empty context when it holds none."""
    if not carrier:
        return Context()
    return propagate.extract(carrier, context=Context())


def remote_span_context(context: Context) -> Optional[trace.SpanContext]:
    """The valid span context held by ``context``, if any."""
    span_context = trace.get_current_span(context).get_span_context()
    return span_context if span_context.is_valid else None
