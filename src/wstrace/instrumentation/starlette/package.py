"""The library this adapter instruments, Starlette: its import name, and the versions it supports (read by
``opentelemetry-instrument``)."""

from __future__ import annotations


_library = "starlette"
_instruments = ("starlette >= 0.37, < 2",)
_supports_metrics = True
