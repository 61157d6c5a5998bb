"""Shared fixtures: a real SDK tracer provider with in-memory export, and span helpers."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import context as otel_context, propagate
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests import compiled, redis_server
from tests.routes import ROUTES_ENV


def pytest_report_header() -> str:
    return "wstrace core: compiled (mypyc)" if compiled.expected() else "wstrace core: as imported"


def pytest_sessionstart(session: pytest.Session) -> None:
    """With ``WSTRACE_COMPILED=1`` (``scripts/compile-core``), stop unless the core modules are the compiled ones.

    Ctrl-C is made to reach the processes the tests start: a suite started in the background by a
    non-interactive shell (``cmd &``, some CI runners) inherits SIGINT ignored, children inherit that through
    exec, and Python then never raises KeyboardInterrupt, so the tests that stop a server or the demo with
    SIGINT, as a terminal does, would see it run on. A handler of our own resets to the default in children.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if compiled.expected() and (missing := compiled.not_compiled()):
        pytest.exit(f"WSTRACE_COMPILED=1, but not compiled: {', '.join(missing)}", returncode=4)
    if not compiled.expected() and (found := compiled.stray()):
        remove = "find src -name '*.so' -delete"
        pytest.exit(f"compiled modules in src/ shadow the sources: {', '.join(found)} ({remove})", returncode=4)


class OpenSpans(SpanProcessor):
    """Tracks spans that were started and not yet ended, to prove none is left open."""

    def __init__(self) -> None:
        self.open: dict[int, Span] = {}

    def on_start(self, span: Span, parent_context: Any = None) -> None:
        self.open[span.get_span_context().span_id] = span

    def on_end(self, span: ReadableSpan) -> None:
        self.open.pop(span.get_span_context().span_id, None)

    def names(self) -> list[str]:
        return sorted(s.name for s in self.open.values())


class Telemetry:
    """A tracer provider plus what it recorded."""

    def __init__(self, sampler: Any = None) -> None:
        self.exporter = InMemorySpanExporter()
        self.open_spans = OpenSpans()
        self.provider = TracerProvider(sampler=sampler) if sampler is not None else TracerProvider()
        self.provider.add_span_processor(self.open_spans)
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    @property
    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans if s.name == name]

    def one(self, name: str, **attributes: Any) -> ReadableSpan:
        found = [s for s in self.named(name) if all((s.attributes or {}).get(k) == v for k, v in attributes.items())]
        assert len(found) == 1, f"expected one {name!r} span with {attributes}, got {[s.name for s in self.spans]}"
        return found[0]


@pytest.fixture
def telemetry() -> Telemetry:
    return Telemetry()


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No WSTRACE_* or OTEL_* setting leaks into a test, and the propagator is the default."""
    for name in list(os.environ):
        if name.startswith(("WSTRACE_", "OTEL_")):
            monkeypatch.delenv(name)
    # Spans named by the test apps' paths (see tests/routes.py); a test of the routerless default deletes it.
    monkeypatch.setenv("WSTRACE_ROUTES", ROUTES_ENV)
    saved = propagate.get_global_textmap()
    # Each test starts from an empty context, and whatever it left attached is dropped.
    token = otel_context.attach(Context())
    yield
    otel_context.detach(token)
    propagate.set_global_textmap(saved)


@pytest.fixture(scope="module")
def redis_port() -> Iterator[int]:
    """A private redis-server on a free loopback port, no persistence, killed at the end of the module."""
    with redis_server.running() as port:
        yield port
