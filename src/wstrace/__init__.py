"""wstrace: end-to-end OpenTelemetry tracing of WebSocket traffic.

The library depends on ``opentelemetry-api`` only; importing it loads no
WebSocket library and no OpenTelemetry SDK. Adapters live in
``wstrace.instrumentation.<library>``; the Redis hop in ``wstrace.redis``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wstrace.config import Config
from wstrace.connection import ConnectionTracer
from wstrace.exceptions import (
    ConfigError,
    EnvelopeDecodeError,
    EnvelopeEncodeError,
    EnvelopeError,
    WstraceError,
)
from wstrace.streams import Stream, stream
from wstrace.version import __version__


if TYPE_CHECKING:
    from wstrace.queues import (
        Carried,
        TracedAsyncQueue,
        TracedQueue,
        TracedThreadPoolExecutor,
        carry,
        restore,
        submit,
    )

# The queue helpers import asyncio and threading machinery; load them on first use.
_LAZY = {
    "Carried",
    "TracedAsyncQueue",
    "TracedQueue",
    "TracedThreadPoolExecutor",
    "carry",
    "restore",
    "submit",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from wstrace import queues  # noqa: PLC0415 - deliberately lazy

        return getattr(queues, name)
    raise AttributeError(f"module 'wstrace' has no attribute {name!r}")


__all__ = [
    "Carried",
    "Config",
    "ConfigError",
    "ConnectionTracer",
    "EnvelopeDecodeError",
    "EnvelopeEncodeError",
    "EnvelopeError",
    "Stream",
    "TracedAsyncQueue",
    "TracedQueue",
    "TracedThreadPoolExecutor",
    "WstraceError",
    "__version__",
    "carry",
    "restore",
    "stream",
    "submit",
]
