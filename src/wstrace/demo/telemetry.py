"""OpenTelemetry SDK set-up for the demo's processes (``voice-device`` and ``voice-server``; with ``--stack
socketio``, ``voice-device``, ``voice-gateway`` and ``voice-assistant``).

Each process has its own ``TracerProvider`` with its own ``service.name`` and exports to the same
OTLP/JSON lines file: both open it in append mode and the exporter writes each batch as one whole line with
one ``write``, so lines from the two processes never interleave. When ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set, spans also go there over OTLP/HTTP, configured by the
standard ``OTEL_EXPORTER_OTLP_*`` variables.
"""

from __future__ import annotations

import importlib
import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from wstrace.cli.export import OtlpJsonFileExporter
from wstrace.demo import protocol
from wstrace.instrumentation.socketio import SocketioInstrumentor
from wstrace.instrumentation.websockets import WebsocketsInstrumentor
from wstrace.version import __version__


__all__ = ["OTLP_ENDPOINT_VARIABLES", "Tally", "Telemetry", "otlp_requested", "start"]

_log = logging.getLogger(__name__)

OTLP_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
OTLP_MISSING = (
    "{variable} is set, but opentelemetry-exporter-otlp-proto-http is not installed "
    "(pip install opentelemetry-exporter-otlp-proto-http); writing the trace file only"
)


class Tally(SpanExporter):
    """Passes batches to ``exporter`` and counts how many got through: the demo says whether OTLP worked."""

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter
        self.sent = self.failed = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.exporter.export(spans)
        except Exception:
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self.sent += 1
        else:
            self.failed += 1
        return result

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.exporter.shutdown()


@dataclass
class Telemetry:
    """A process's tracer provider and the instrumentors it turned on."""

    provider: TracerProvider
    otlp: Optional[Tally] = None
    """What went over OTLP, when asked for."""
    instrumentors: list[Any] = field(default_factory=list)
    llm_client_spans: bool = False
    """The OpenAI SDK makes its own GenAI ``chat`` spans (opentelemetry-instrumentation-openai-v2 is on)."""

    def shutdown(self) -> None:
        """Turn the instrumentation off and flush every span; idempotent."""
        for instrumentor in self.instrumentors:
            instrumentor.uninstrument()
        self.instrumentors.clear()
        self.provider.shutdown()


def _optional_instrumentor(module: str, name: str, leaves_out: str) -> Any:
    """An instance of ``module.name``, or None when that instrumentation is not installed (a broken one is logged)."""
    try:
        loaded: Any = importlib.import_module(module)
    except ImportError as exc:
        if exc.name not in (module, "opentelemetry.instrumentation"):  # installed, but broken
            _log.warning("cannot load %s (%s); %s are left out", module, exc, leaves_out)
        return None
    return getattr(loaded, name)()


def otlp_requested() -> Optional[str]:
    """The OTLP endpoint variable that is set, if any."""
    return next((name for name in OTLP_ENDPOINT_VARIABLES if os.environ.get(name, "").strip()), None)


def start(
    service: str,
    out: Path,
    *,
    model: str,
    envelope: str,
    stack: str = "websockets",
    instrument_openai: bool = False,
    say: Optional[Callable[[str], None]] = None,
) -> Telemetry:
    """A tracer provider for ``service`` exporting to ``out`` (and OTLP if asked), with the ``stack``'s library
    instrumented: websockets, or python-socketio (``socketio``; it has no envelope, so ``envelope`` is unused).

    ``say`` reports what the user should know (a missing OTLP exporter); the server passes none, since the
    device already said it.
    """
    resource = Resource.create(
        {
            "service.name": service,
            "service.namespace": "wstrace-demo",
            "service.version": __version__,
            "service.instance.id": uuid.uuid4().hex,
        }
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OtlpJsonFileExporter(out)))
    telemetry = Telemetry(provider)
    variable = otlp_requested()
    if variable is not None:
        try:
            http: Any = importlib.import_module("opentelemetry.exporter.otlp.proto.http.trace_exporter")
        except ImportError:
            if say is not None:
                say(OTLP_MISSING.format(variable=variable))
        else:
            telemetry.otlp = Tally(http.OTLPSpanExporter())
            provider.add_span_processor(BatchSpanProcessor(telemetry.otlp))

    if stack == "socketio":
        socketio = SocketioInstrumentor()
        socketio.instrument(tracer_provider=provider, model=model)
        telemetry.instrumentors.append(socketio)
    else:
        websockets = WebsocketsInstrumentor()
        websockets.instrument(
            tracer_provider=provider,
            model=model,
            envelope=envelope,
            stream_end=protocol.is_reply_end,
            routes=[protocol.ROUTE],  # websockets has no router: name the demo's one route
        )
        telemetry.instrumentors.append(websockets)
    if instrument_openai:
        # Optional: the OpenAI SDK's own chat spans, and its HTTP requests (httpx) as client spans that carry
        # traceparent to the LLM server, join the trace when the instrumentations are installed.
        for module, name, leaves_out in (
            ("opentelemetry.instrumentation.openai_v2", "OpenAIInstrumentor", "the OpenAI SDK's own spans"),
            (
                "opentelemetry.instrumentation.httpx",
                "HTTPXClientInstrumentor",
                "the LLM request's HTTP span and its traceparent",
            ),
        ):
            instrumentor = _optional_instrumentor(module, name, leaves_out)
            if instrumentor is None:
                continue
            instrumentor.instrument(tracer_provider=provider)  # logs, and does nothing, on a version conflict
            if instrumentor.is_instrumented_by_opentelemetry:
                telemetry.instrumentors.append(instrumentor)
                telemetry.llm_client_spans |= name == "OpenAIInstrumentor"
    return telemetry
