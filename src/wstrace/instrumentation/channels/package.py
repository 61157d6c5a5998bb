"""The library this adapter instruments, Django Channels: its import name, and the versions it supports (read by
``opentelemetry-instrument``)."""

from __future__ import annotations


_library = "channels"
_instruments = ("channels >= 4.1, < 5",)
_supports_metrics = True
