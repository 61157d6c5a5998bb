"""wstrace: end-to-end OpenTelemetry tracing of WebSocket traffic.

The library depends on ``opentelemetry-api`` only; importing it loads no
WebSocket library and no OpenTelemetry SDK. Adapters live in
``wstrace.instrumentation.<library>``.
"""

from __future__ import annotations

from wstrace.config import Config
from wstrace.exceptions import (
    ConfigError,
    EnvelopeDecodeError,
    EnvelopeEncodeError,
    EnvelopeError,
    WstraceError,
)
from wstrace.session import ConnectionTracer
from wstrace.streams import stream
from wstrace.version import __version__


__all__ = [
    "Config",
    "ConfigError",
    "ConnectionTracer",
    "EnvelopeDecodeError",
    "EnvelopeEncodeError",
    "EnvelopeError",
    "WstraceError",
    "__version__",
    "stream",
]
