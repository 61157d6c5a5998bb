"""The library this adapter instruments, aiohttp: its import name, and the versions it supports (read by
``opentelemetry-instrument``)."""

from __future__ import annotations


_library = "aiohttp"
_instruments = ("aiohttp >= 3.9, < 4",)
_supports_metrics = True
