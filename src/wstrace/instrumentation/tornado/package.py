"""The library this adapter instruments, tornado: its import name, and the versions it supports (read by
``opentelemetry-instrument``)."""

from __future__ import annotations


_library = "tornado"
_instruments = ("tornado >= 6.3, < 7",)
_supports_metrics = True
