"""wstrace's handshake span under another instrumentation's SERVER span.

OpenTelemetry's ASGI middleware and FastAPI's native telemetry make a SERVER
span for the upgrade request that lasts as long as the connection. wstrace
never writes on a span it did not start; it makes its own handshake span as a
child of that one. Two rules differ from a bare connection:

* The handshake span is ``INTERNAL``: the outer span is the request's SERVER
  span, and a second one for the same request would be counted twice by
  span-derived request metrics (Tempo and Jaeger span metrics and service
  graphs count SERVER spans) and breaks the one-SERVER-span-per-request shape
  the HTTP conventions assume.
* Context in the upgrade headers is the outer span's parent already (those
  instrumentations continue the headers), so wstrace reads context only from
  the query and subprotocol sources. A browser's context found there is handled
  by the trust policy: ``parent`` makes it the handshake's parent and links the
  outer span (``wstrace.link.kind=server``); ``link`` keeps the outer span as
  parent and links the browser's context.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from typing import Iterator, Optional, Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind
from opentelemetry.util.types import Attributes

from wstrace import semconv as sc
from wstrace.instrumentation._instrumentor import Settings


__all__ = ["OUTER_LINK", "NestedTracer", "nested_settings"]

OUTER_LINK = "server"
"""``wstrace.link.kind`` of the link from wstrace's handshake span to the outer SERVER span, if not its parent."""

_OUTER_LINK_ATTRIBUTES = {sc.LINK_KIND: OUTER_LINK}


class NestedTracer(trace.Tracer):
    """Starts a connection's spans with wstrace's tracer; the server handshake span becomes INTERNAL.

    The outer SERVER span is read from the context current when the handshake
    span starts: the middleware starts it in the context it was called in.
    Other spans (messages, close, connection) pass through unchanged.
    """

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    def start_span(
        self,
        name: str,
        context: Optional[Context] = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Optional[Sequence[Link]] = None,
        start_time: Optional[int] = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> Span:
        if kind is SpanKind.SERVER:
            kind = SpanKind.INTERNAL
            outer = trace.get_current_span().get_span_context()
            parent = trace.get_current_span(context).get_span_context() if context is not None else outer
            if outer.is_valid and parent != outer:
                links = (*(links or ()), Link(outer, _OUTER_LINK_ATTRIBUTES))
        return self._tracer.start_span(
            name,
            context,
            kind=kind,
            attributes=attributes,
            links=links,
            start_time=start_time,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        )

    @contextmanager
    def start_as_current_span(  # type: ignore[override]  # the API declares it a plain generator method
        self,
        name: str,
        context: Optional[Context] = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Optional[Sequence[Link]] = None,
        start_time: Optional[int] = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[Span]:
        span = self.start_span(
            name, context, kind, attributes, links, start_time, record_exception, set_status_on_exception
        )
        with trace.use_span(span, end_on_exit, record_exception, set_status_on_exception) as current:
            yield current


def nested_settings(settings: Settings) -> Settings:
    """``settings`` for connections under an outer SERVER span: the nested tracer, no ``headers`` source."""
    config = settings.config
    sources = tuple(s for s in config.handshake_sources if s != "headers")
    return Settings(NestedTracer(settings.tracer), replace(config, handshake_sources=sources), settings.instruments)
