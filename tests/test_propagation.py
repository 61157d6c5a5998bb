from __future__ import annotations

from opentelemetry import baggage, propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.b3 import B3MultiFormat
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanContext, TraceFlags

from wstrace import propagation


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def make_tracer() -> trace.Tracer:
    """A tracer from a local SDK provider, so the global provider is never touched."""
    return TracerProvider().get_tracer("test-propagation")


def test_w3c_round_trip() -> None:
    """inject writes a traceparent for a span and extract reads back the same span context."""
    span = make_tracer().start_span("sender")
    sent = span.get_span_context()
    carrier = propagation.inject(trace.set_span_in_context(span))
    span.end()

    assert carrier["traceparent"] == f"00-{sent.trace_id:032x}-{sent.span_id:016x}-{sent.trace_flags:02x}"
    received = propagation.remote_span_context(propagation.extract(carrier))
    assert received is not None
    assert received.trace_id == sent.trace_id
    assert received.span_id == sent.span_id
    assert received.is_remote
    assert received.trace_flags.sampled


def test_inject_defaults_to_current_context() -> None:
    """inject() with no argument uses the current span."""
    tracer = make_tracer()
    with tracer.start_as_current_span("current") as span:
        carrier = propagation.inject()
    received = propagation.remote_span_context(propagation.extract(carrier))
    assert received is not None
    assert received.span_id == span.get_span_context().span_id


def test_inject_returns_a_fresh_carrier() -> None:
    """Each call returns a new dict the caller may change freely."""
    ctx = trace.set_span_in_context(make_tracer().start_span("s"))
    first = propagation.inject(ctx)
    first["traceparent"] = "changed"
    assert propagation.inject(ctx)["traceparent"] != "changed"


def test_inject_without_span_writes_no_traceparent() -> None:
    """An empty context yields no traceparent."""
    assert "traceparent" not in propagation.inject(Context())


def test_baggage_round_trip() -> None:
    """Baggage set on the context is injected and extracted alongside the span."""
    span = make_tracer().start_span("sender")
    ctx = baggage.set_baggage("user", "alice", trace.set_span_in_context(span))
    ctx = baggage.set_baggage("tenant", "acme corp", ctx)
    carrier = propagation.inject(ctx)
    span.end()

    assert "baggage" in carrier
    extracted = propagation.extract(carrier)
    assert baggage.get_all(extracted) == {"user": "alice", "tenant": "acme corp"}
    assert propagation.remote_span_context(extracted) is not None


def test_baggage_only_carrier() -> None:
    """A carrier with baggage but no traceparent gives baggage and no span context."""
    extracted = propagation.extract({"baggage": "user=bob"})
    assert baggage.get_baggage("user", extracted) == "bob"
    assert propagation.remote_span_context(extracted) is None


def test_extract_ignores_current_context() -> None:
    """extract starts from an empty context, not from whatever is current."""
    with make_tracer().start_as_current_span("local"):
        extracted = propagation.extract({"baggage": "user=bob"})
    assert propagation.remote_span_context(extracted) is None


def test_extract_empty_carrier_gives_empty_context() -> None:
    """extract({}) returns an empty Context."""
    extracted = propagation.extract({})
    assert isinstance(extracted, Context)
    assert extracted == Context()
    assert len(extracted) == 0


def test_extract_invalid_traceparent() -> None:
    """A malformed traceparent gives no span context."""
    extracted = propagation.extract({"traceparent": "00-zz-not-a-traceparent"})
    assert propagation.remote_span_context(extracted) is None


def test_remote_span_context_empty_context() -> None:
    """remote_span_context is None for an empty context."""
    assert propagation.remote_span_context(Context()) is None


def test_remote_span_context_invalid_span() -> None:
    """remote_span_context is None when the context holds an invalid span."""
    ctx = trace.set_span_in_context(trace.INVALID_SPAN)
    assert propagation.remote_span_context(ctx) is None


def test_remote_span_context_valid() -> None:
    """remote_span_context returns the span context a valid carrier describes."""
    received = propagation.remote_span_context(propagation.extract({"traceparent": TRACEPARENT}))
    assert received == SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )


def test_fields_default_propagator() -> None:
    """By default fields() are those of W3C trace context and baggage."""
    assert {"traceparent", "tracestate", "baggage"} <= propagation.fields()


def test_fields_follow_global_propagator() -> None:
    """fields() reflects the configured global propagator."""
    propagate.set_global_textmap(B3MultiFormat())
    fields = propagation.fields()
    assert "x-b3-traceid" in fields
    assert "x-b3-spanid" in fields
    assert "traceparent" not in fields


def test_b3_round_trip() -> None:
    """With B3 as the global propagator inject writes x-b3-traceid and extract reads it back."""
    propagate.set_global_textmap(B3MultiFormat())
    span = make_tracer().start_span("sender")
    sent = span.get_span_context()
    carrier = propagation.inject(trace.set_span_in_context(span))
    span.end()

    assert carrier["x-b3-traceid"] == f"{sent.trace_id:032x}"
    assert carrier["x-b3-spanid"] == f"{sent.span_id:016x}"
    assert "traceparent" not in carrier
    received = propagation.remote_span_context(propagation.extract(carrier))
    assert received is not None
    assert (received.trace_id, received.span_id) == (sent.trace_id, sent.span_id)
    assert received.is_remote


def test_b3_ignores_w3c_carrier() -> None:
    """With B3 configured a W3C-only carrier yields no span context."""
    propagate.set_global_textmap(B3MultiFormat())
    assert propagation.remote_span_context(propagation.extract({"traceparent": TRACEPARENT})) is None
