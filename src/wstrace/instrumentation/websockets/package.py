"""Versions of websockets this adapter supports (read by ``opentelemetry-instrument``)."""

from __future__ import annotations


_instruments = ("websockets >= 15.0, < 18",)
_supports_metrics = True
