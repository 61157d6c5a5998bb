"""pytest plugin of the upstream-test harness (``scripts/upstream-tests``, ``docs/reliability.md``).

Loaded with ``-p wstrace_upstream_plugin`` into a WebSocket library's *own* test suite, in a separate venv;
never by the project's test run (its name does not match ``test_*.py``).

- ``WSTRACE_UPSTREAM_MODEL`` = ``message`` or ``connection``: at session start, set up an SDK
  ``TracerProvider`` (in-memory exporter) and ``MeterProvider`` (in-memory reader) and instrument every wstrace
  adapter whose library is installed, with that model and ``WSTRACE_UPSTREAM_ENVELOPE`` (default
  ``negotiate``). Unset, empty or ``bare``: nothing is instrumented (the bare pass).
- ``WSTRACE_UPSTREAM_ASGI`` (default ``1``): also wrap every ASGI application that Starlette's ``TestClient``
  opens a WebSocket session on in ``WstraceASGIMiddleware``, unless it is a Starlette or FastAPI application
  (those get it from ``StarletteInstrumentor``). Starlette's own tests mostly use bare ASGI callables.
- ``WSTRACE_UPSTREAM_REPORT`` = a path: one JSON line per test (node id, outcome, failure text, number of
  wstrace spans it produced), appended as each test ends, so that a run killed by its time limit still reports.

The providers are passed to ``instrument()`` and never made global, so the library's own OpenTelemetry
support (FastAPI's native telemetry, for one) behaves exactly as in the bare pass.
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Any, Optional

import pytest


MODEL_VARIABLE = "WSTRACE_UPSTREAM_MODEL"
ENVELOPE_VARIABLE = "WSTRACE_UPSTREAM_ENVELOPE"
ASGI_VARIABLE = "WSTRACE_UPSTREAM_ASGI"
REPORT_VARIABLE = "WSTRACE_UPSTREAM_REPORT"

ADAPTERS = (
    ("websockets", "wstrace.instrumentation.websockets", "WebsocketsInstrumentor"),
    ("aiohttp", "wstrace.instrumentation.aiohttp", "AiohttpInstrumentor"),
    ("starlette", "wstrace.instrumentation.starlette", "StarletteInstrumentor"),
    ("websocket", "wstrace.instrumentation.websocket_client", "WebsocketClientInstrumentor"),
    ("tornado", "wstrace.instrumentation.tornado", "TornadoInstrumentor"),
    ("socketio", "wstrace.instrumentation.socketio", "SocketioInstrumentor"),
)
"""(import name of the library, adapter module, instrumentor class)."""

_LONGREPR_CHARS = 4000


class _Harness:
    def __init__(self, model: str, envelope: str, report: Optional[str]) -> None:
        self.model = model
        self.envelope = envelope
        self.report = report
        self.exporter: Any = None
        self.tracer_provider: Any = None
        self.meter_provider: Any = None
        self.instrumented: list[str] = []
        self.outcomes: dict[str, dict[str, Any]] = {}

    @property
    def active(self) -> bool:
        return self.model in ("message", "connection")

    def start(self) -> None:
        from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: PLC0415
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: PLC0415

        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        options = {
            "tracer_provider": self.tracer_provider,
            "meter_provider": self.meter_provider,
            "model": self.model,
            "envelope": self.envelope,
        }
        for library, module, name in ADAPTERS:
            try:
                importlib.import_module(library)
            except ImportError:
                continue
            instrumentor = getattr(importlib.import_module(module), name)()
            instrumentor.instrument(**options)
            if instrumentor.is_instrumented_by_opentelemetry:
                self.instrumented.append(name)
        if os.environ.get(ASGI_VARIABLE, "1") != "0":
            self._wrap_bare_asgi_apps(options)

    @staticmethod
    def _wrap_bare_asgi_apps(options: dict[str, Any]) -> None:
        try:
            import starlette.testclient as testclient  # noqa: PLC0415
            from starlette.applications import Starlette  # noqa: PLC0415
        except ImportError:
            return
        import wrapt  # noqa: PLC0415

        from wstrace.instrumentation.asgi import WstraceASGIMiddleware  # noqa: PLC0415

        def session_init(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            # WebSocketTestSession(app, scope, portal_factory): only WebSocket sessions, never plain HTTP.
            if args and not isinstance(_innermost(args[0]), Starlette):
                args = (WstraceASGIMiddleware(args[0], **options), *args[1:])
            return wrapped(*args, **kwargs)

        wrapt.wrap_function_wrapper(testclient, "WebSocketTestSession.__init__", session_init)

    def spans_since_last(self) -> list[str]:
        if self.exporter is None:
            return []
        names = [span.name for span in self.exporter.get_finished_spans()]
        self.exporter.clear()
        return names

    def record(self, report: pytest.TestReport) -> None:
        entry = self.outcomes.setdefault(report.nodeid, {"nodeid": report.nodeid, "outcome": "passed", "text": ""})
        if report.failed:
            if hasattr(report, "wasxfail"):  # strict xfail that passed
                outcome = "failed"
            else:
                outcome = "failed" if report.when == "call" else "error"
            if entry["outcome"] not in ("failed", "error"):
                entry["outcome"] = outcome
            text = f"[{report.when}] {report.longreprtext}"
            joined = f"{entry['text']}\n{text}" if entry["text"] else text
            entry["text"] = joined[-_LONGREPR_CHARS:]
        elif report.skipped and entry["outcome"] == "passed":
            entry["outcome"] = "xfailed" if hasattr(report, "wasxfail") else "skipped"
        if report.when == "teardown":
            spans = self.spans_since_last()
            entry["spans"] = len(spans)
            entry["span_names"] = sorted(set(spans))[:20]
            self._write(self.outcomes.pop(report.nodeid))

    def _write(self, entry: dict[str, Any]) -> None:
        if self.report:
            with open(self.report, "a", encoding="utf-8") as out:
                out.write(json.dumps(entry) + "\n")

    def header(self) -> dict[str, Any]:
        model = self.model if self.active else "bare"
        return {"model": model, "envelope": self.envelope, "adapters": self.instrumented}


def _innermost(app: Any) -> Any:
    """The application inside ASGI wrappers that follow the ``app`` convention (TestClient's ASGI2 shim)."""
    for _ in range(10):
        inner = getattr(app, "app", None)
        if inner is None or inner is app:
            break
        app = inner
    return app


_harness: Optional[_Harness] = None


@pytest.hookimpl(tryfirst=True)  # before a conftest starts a server
def pytest_configure(config: pytest.Config) -> None:
    global _harness  # one harness per pytest session
    model = os.environ.get(MODEL_VARIABLE, "").strip().lower()
    envelope = os.environ.get(ENVELOPE_VARIABLE, "").strip().lower() or "negotiate"
    _harness = _Harness(model, envelope, os.environ.get(REPORT_VARIABLE) or None)
    if _harness.active:
        _harness.start()
    if _harness.report:
        with open(_harness.report, "a", encoding="utf-8") as out:
            out.write(json.dumps({"header": _harness.header()}) + "\n")


def pytest_report_header(config: pytest.Config) -> str:
    if _harness is None or not _harness.active:
        return "wstrace upstream harness: bare (nothing instrumented)"
    return (
        f"wstrace upstream harness: model={_harness.model} envelope={_harness.envelope} "
        f"adapters={','.join(_harness.instrumented)}"
    )


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if _harness is not None:
        _harness.record(report)
