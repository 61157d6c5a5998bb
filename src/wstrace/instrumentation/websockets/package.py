"""The library this adapter instruments, websockets: its import name, and the versions it supports (read by
``opentelemetry-instrument``)."""

from __future__ import annotations


_library = "websockets"
_instruments = ("websockets >= 15.0, < 18",)
_supports_metrics = True
