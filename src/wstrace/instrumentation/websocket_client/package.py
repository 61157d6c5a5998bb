"""The library this adapter instruments, websocket-client: its import name, and the versions it supports (read by
``opentelemetry-instrument``)."""

from __future__ import annotations


_library = "websocket"
_instruments = ("websocket-client >= 1.6, < 2",)
_supports_metrics = True
